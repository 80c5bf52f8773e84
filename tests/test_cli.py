"""The `longrec` command line: help texts with examples, one-line errors, config printing."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from longrec.cli import EXAMPLES, build_parser, main

COMMANDS = (
    "synth",
    "prepare",
    "import-samples",
    "train",
    "eval",
    "export",
    "serve",
    "demo",
    "analyze",
    "compact",
    "config",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_ends_with_runnable_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith(EXAMPLES[command].splitlines()[-1].rstrip())
    assert "examples:" in text and f"longrec {command}" in text


def test_parser_knows_every_command() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)  # type: ignore[arg-type]


def test_config_prints_resolved_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "configs/din_synthetic.toml", "--set", "model.dim=32"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["dim"] == 32 and resolved["model"]["name"] == "din"


def test_errors_are_one_line_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set", "train.lr_rate=0.1", "--set", "serch.k=1", "--set", "search=1"]
    code = main(["config", "configs/din_synthetic.toml", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.lr_rate: unknown key" in err and "serch: unknown section (did you mean 'search'?)" in err
    assert "search: expected a table of settings, got int 1" in err
    assert "Traceback" not in err


def test_missing_input_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["prepare", str(tmp_path / "nope.csv"), "--format", "taobao", "--out", str(tmp_path / "o")])
    assert code == 2 and "nope.csv" in capsys.readouterr().err


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "longrec.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("longrec ")


# --- The error boundary and conventions (issue: safe with users' files and runs) ---------------------------------


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from longrec.data.prepare import prepare
    from longrec.data.protocols import ProtocolConfig
    from tests.conftest import make_log

    out = tmp_path_factory.mktemp("cli") / "store"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return out


def _train_args(store: Path, out: Path, *sets: str) -> list[str]:
    base = ["model.dim=4", "model.attention_hidden=[8]", "model.head_hidden=[8]", f"data.path={store}"]
    base += ["data.max_history=10", "train.batch_size=16", "train.epochs=1"]
    return ["train", "configs/din_synthetic.toml", "--out", str(out), *(f"--set={s}" for s in [*base, *sets])]


def test_prepare_never_writes_over_a_folder_of_the_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "log.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    for extra in ([], ["--force"]):
        code = main(["prepare", str(mine / "log.csv"), "--format", "csv", "--out", str(mine), *extra])
        assert code == 2
        assert "it holds 'log.csv'" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["log.csv"]


def test_global_flags_work_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "configs/din_synthetic.toml", "--quiet", "--set", "model.dim=8"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["dim"] == 8
    with pytest.raises(ValueError, match="unknown model"):
        main(["config", "--debug", "--set", "model.name=nope"])


@pytest.mark.parametrize(
    ("code", "text", "hint"),
    [
        (errno.ENOSPC, "No space left on device", "free some space"),
        (errno.EACCES, "Permission denied", "check the folder's permissions"),
        (errno.EROFS, "Read-only file system", "the file system is read-only"),
    ],
)
def test_a_full_disk_or_an_unwritable_folder_during_train_is_one_line_and_leaves_no_partial_file(
    tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    text: str,
    hint: str,
) -> None:
    import torch

    def failing(obj: object, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"half")  # a writer that got part of the way
        raise OSError(code, text, str(path))

    monkeypatch.setattr(torch, "save", failing)
    assert main(_train_args(tiny_store, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(f"error: {text}:") and hint in errors[0]
    assert str(tmp_path / "run" / "checkpoint.pt") in errors[0], "the message names the file, not a temp file"
    assert not [p.name for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name or p.suffix == ".pt"]


def test_ctrl_c_exits_130_and_says_how_to_resume(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("longrec.run.fit", interrupted)
    assert main(_train_args(tiny_store, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "Continue the run with: longrec train configs/din_synthetic.toml --out" in err and err.rstrip().endswith(
        "--resume"
    )
    assert "Traceback" not in err


def test_a_diverging_run_is_an_error_naming_the_step(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quiet", *_train_args(tiny_store, tmp_path / "run", "train.lr=10", "train.epochs=20")]) == 2
    assert "error: training diverged at step" in capsys.readouterr().err


def test_damaged_run_files_are_reported_by_name(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["--quiet", *_train_args(tiny_store, run)]) == 0
    capsys.readouterr()
    checkpoint = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(checkpoint[:200])
    assert main(["eval", str(run)]) == 2
    assert "checkpoint.pt is damaged" in capsys.readouterr().err
    (run / "config.json").write_text('{"model": ')
    assert main(["eval", str(run)]) == 2
    assert "config.json is damaged (not valid JSON" in capsys.readouterr().err


def test_without_a_terminal_training_prints_plain_progress_lines_and_aligned_results(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_train_args(tiny_store, tmp_path / "run", 'train.loggers=["csv"]', "train.log_every=2")]) == 0
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("step ") and "ETA" in line]
    assert progress and " samples/s · ETA " in progress[-1] and "epoch 1/1" in progress[-1]
    table = [line for line in err.splitlines() if line.lstrip().startswith(("valid", "test"))]
    assert len(table) == 2 and len({line.index("0.") for line in table}) == 1, "columns are aligned"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,kind,loss") and any(",train," in r for r in rows)
    assert any(",valid," in r for r in rows)


def test_the_tensorboard_logger_writes_the_scalars(tiny_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = _train_args(tiny_store, tmp_path / "run", 'train.loggers=["tensorboard"]', "train.log_every=2")
    assert main(["--quiet", *args]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "valid/auc", "valid/logloss"} <= set(events.Tags()["scalars"])


def test_analyze_without_matplotlib_says_how_to_install_it(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert main(["--quiet", *_train_args(tiny_store, run)]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["--quiet", "analyze", str(run)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib, which is not installed" in err and "longrec[plots]" in err and "Traceback" not in err


def test_summarise_then_train_on_the_summaries(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = ["model.dim=4", "model.num_summaries=2", "model.head_hidden=[8]", f"data.path={tiny_store}"]
    sets += ["data.max_history=10", "train.batch_size=64", "train.epochs=1", "train.max_steps=3"]
    args = [f"--set={s}" for s in sets]
    assert main(["--quiet", "train", "configs/vista_synthetic.toml", "--out", str(tmp_path / "one"), *args]) == 0
    assert main(["summarise", str(tmp_path / "one"), "--out", str(tmp_path / "z"), "--max-history", "20"]) == 0
    assert "states (float16)" in capsys.readouterr().out
    assert main(["summarise", str(tmp_path / "one"), "--out", str(tmp_path / "z")]) == 2  # no --force
    assert "already holds a summary store" in capsys.readouterr().err
    two = ["train", "configs/vista_synthetic.toml", "--out", str(tmp_path / "two"), *args]
    assert main(["--quiet", *two, f"--set=data.summaries={tmp_path / 'z'}"]) == 0
    assert main(["--quiet", *two[:3], str(tmp_path / "three"), *args, f"--set=data.summaries={tmp_path}"]) == 2
    assert "is not a summary store" in capsys.readouterr().err
