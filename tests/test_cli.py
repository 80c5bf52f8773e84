"""The `longrec` command line: help texts with examples, one-line errors, config printing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longrec.cli import EXAMPLES, build_parser, main

COMMANDS = ("synth", "prepare", "import-samples", "train", "eval", "demo", "config")


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
