"""The run API: owned and locked run directories, checked resume, portable runs, `load_run(...).predict(frame)`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

import longrec
from longrec.config import Config, load_config
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.files import DirectoryLockedError, OutputError, lock_directory
from longrec.run import load_run, train
from longrec.run.directory import read_run_config, resume_changes
from longrec.search.config import SearchConfig
from longrec.settings import ConfigError
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
from longrec.train.loop import TrainingDiverged
from tests.conftest import make_log


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return out


def _config(store: Path, **train: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"name": "din", "dim": 4, "attention_hidden": [8], "head_hidden": [8]},
            "data": {"path": str(store), "max_history": 10},
            "train": {"batch_size": 16, "epochs": 2, "lr": 0.01, "progress": False, **train},
        }
    )


@pytest.fixture(scope="module")
def trained(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "din"
    train(_config(store_path), out)
    return out


def test_a_fresh_train_into_a_previous_run_is_refused_without_force_or_resume(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(store_path, max_steps=3), out)
    before = (out / "config.json").read_text()
    with pytest.raises(OutputError, match=r"already holds a run directory .* --force .* pass --resume"):
        train(_config(store_path, max_steps=5, lr=0.02), out)
    assert (out / "config.json").read_text() == before, "a refused train must not touch the run"
    result = train(_config(store_path, max_steps=5, lr=0.02), out, force=True)
    assert result["steps"] == 5 and json.loads((out / "config.json").read_text())["train"]["lr"] == 0.02
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 5, "--force starts the run from scratch"


def test_a_folder_with_someone_elses_files_is_never_a_run_directory(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(OutputError, match=r"is not a run directory written by 'longrec train' \(it holds 'notes"):
            train(_config(store_path, max_steps=2), out, force=force)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_second_writer_of_a_run_directory_fails_clearly(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    started, release = threading.Event(), threading.Event()

    def hold(step: int) -> None:
        started.set()
        release.wait(timeout=30)

    first = threading.Thread(target=train, args=(_config(store_path, max_steps=2), out), kwargs={"on_step": hold})
    first.start()
    try:
        assert started.wait(timeout=30)
        with pytest.raises(DirectoryLockedError, match=r"in use by pid \d+"):
            train(_config(store_path, max_steps=2), out, resume=True)
    finally:
        release.set()
        first.join(timeout=60)
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 2, "the first run finished untouched"


def test_resume_refuses_changes_that_make_the_checkpoint_meaningless_and_writes_nothing(
    store_path: Path, trained: Path
) -> None:
    files = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != "log.txt"}
    changed = Config.from_dict(
        {
            **_config(store_path).to_dict(),
            "model": {"name": "din", "dim": 8, "attention_hidden": [8], "head_hidden": [8]},
            "train": {**_config(store_path).to_dict()["train"], "batch_size": 32, "seed": 3},
        }
    )
    with pytest.raises(ConfigError) as err:
        train(changed, trained, resume=True)
    text = str(err.value)
    assert "model.dim was 4, now 8" in text and "train.batch_size was 16, now 32" in text and "train.seed" in text
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != "log.txt"}
    assert after == files, "a refused resume must not write anything"
    assert load_run(trained).evaluate("test")["count"] > 0, "the run still evaluates"


def test_resume_applies_a_changed_learning_rate_and_keeps_the_time_of_every_segment(
    store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def crash(step: int) -> None:
        if step == 9:
            raise Killed

    with pytest.raises(Killed):
        train(_config(store_path, eval_every=4), out, on_step=crash)
    result = train(_config(store_path, eval_every=4, lr=0.05, epochs=3), out, resume=True)
    assert result["resume_changes"] == ["train.lr: 0.01 -> 0.05 (applies from the resumed step)"]
    assert [g["lr"] for g in load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]] == [0.05]
    segments = result["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 8), (8, result["steps"])]
    assert result["train_seconds"] == pytest.approx(sum(s["seconds"] for s in segments), abs=0.02)
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.05


def test_the_last_steps_are_always_validated(store_path: Path, tmp_path: Path) -> None:
    result = train(_config(store_path, eval_every=7, epochs=1), tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == result["steps"] and result["steps"] % 7 != 0


def test_a_diverging_loss_stops_the_run_with_the_step(store_path: Path, tmp_path: Path) -> None:
    pattern = r"training diverged at step 20 \(epoch 1\): the mean loss .* Lower train\.lr \(now 10\) .* no checkpoint"
    with pytest.raises(TrainingDiverged, match=pattern):
        train(_config(store_path, lr=10.0, epochs=20), tmp_path / "run")


def test_a_single_label_validation_split_is_refused_before_training(tmp_path: Path) -> None:
    log = make_log(num_users=20, events=20, seed=4, impressions=6)
    log = log.with_columns(label=pl.when(pl.col("label").is_not_null()).then(1).otherwise(None))
    prepare(log, tmp_path / "s", ProtocolConfig.for_protocol("T", min_history=0))
    with pytest.raises(ValueError, match=r"validation split .* holds only label 1 .* train.metric = 'logloss'"):
        train(_config(tmp_path / "s"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_pickled_payload_in_a_checkpoint_is_refused_not_run(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (Path.touch, (str(marker),))  # type: ignore[return-value]

    bad = tmp_path / "checkpoint.pt"
    torch.save({"model": Payload()}, bad)
    with pytest.raises(ValueError, match="could run code when loaded; longrec refuses to load it"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_reported_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged"):
        load_checkpoint(path)


def test_load_run_works_from_any_directory_and_when_run_and_store_moved_together(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    home = tmp_path / "project"
    shutil.copytree(store_path, home / "data" / "s")
    monkeypatch.chdir(home)
    train(_config(Path("data/s"), max_steps=4), "runs/din")  # a relative data.path, as on the command line
    expected = load_run("runs/din").evaluate("test")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved_away = load_run(str(home / "runs" / "din"))
    assert moved_away.evaluate("test") == expected
    items = moved_away.store.vocab("item_id").head(2).to_list()
    scores = moved_away.predict(pl.DataFrame({"target_item": items, "hist_items": [items, []]}))
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()
    shutil.move(home, tmp_path / "moved")  # the store's recorded absolute path is gone
    assert load_run(tmp_path / "moved" / "runs" / "din").evaluate("test") == expected
    shutil.rmtree(tmp_path / "moved" / "data")
    with pytest.raises(FileNotFoundError, match=r"is not at .* it was moved or deleted\. Pass --data PATH"):
        load_run(tmp_path / "moved" / "runs" / "din")


def test_predict_scores_a_frame_of_raw_ids_like_the_evaluation(store_path: Path, trained: Path) -> None:
    run = longrec.load_run(str(trained))
    store = TrajectoryStore.open(store_path)
    test = store.samples("test")
    rows = np.arange(min(40, len(test)))
    users, items = store.vocab("user_id"), store.vocab("item_id")
    frame = pl.DataFrame(
        {
            "user": [users[int(u) - 1] for u in test.user[rows]],
            "target_item": [items[int(i) - 1] for i in test.target_item[rows]],
            "target_ts": test.target_time[rows].tolist(),
        }
    )
    from longrec.data.dataset import collate

    batch = collate(store, test, rows, run.config.data.max_history)
    expected = run.predict(batch)
    np.testing.assert_allclose(run.predict(frame), expected, rtol=1e-5, atol=1e-6)
    # The same rows with their histories spelled out as lists of raw ids.
    lists = frame.with_columns(
        hist_items=pl.Series(
            [[items[int(i) - 1] for i in h[m].tolist()] for h, m in zip(batch.history, batch.history_mask, strict=True)]
        ),
        hist_ts=pl.Series(
            [
                (t - d[m]).long().tolist()
                for t, d, m in zip(batch.target_time, batch.history_time_delta, batch.history_mask, strict=True)
            ]
        ),
    ).drop("user")
    np.testing.assert_allclose(run.predict(lists), expected, rtol=1e-5, atol=1e-6)


def test_predict_counts_unknown_ids_or_refuses_them(trained: Path) -> None:
    run = load_run(trained)
    known = run.store.vocab("item_id")[0]
    frame = pl.DataFrame({"target_item": [known, -5], "hist_items": [[known, -7, known], []]})
    scores = run.predict(frame)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert run.unknown == {"target_item": 1, "hist_items": 1}
    with pytest.raises(ValueError, match=r"hist_items holds 1 value\(s\) the store's item_id vocabulary"):
        run.predict(frame, unknown="error")
    empty = run.predict(pl.DataFrame({"target_item": [known, -5], "hist_items": [[], [-7]]}))  # no row has a history
    assert empty.shape == (2,) and np.isfinite(empty).all()
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['histories'\]"):
        run.predict(frame.rename({"hist_items": "histories"}))


def test_the_readme_notebook_example_runs(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("<!-- notebook example -->")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"RUN": str(trained)}
    exec(compile(code.replace('"runs/din"', "RUN"), "README.md", "exec"), namespace)
    assert len(namespace["scores"]) == 3


def test_config_files_round_trip_through_load_config(trained: Path) -> None:
    saved = json.loads((trained / "config.json").read_text())
    assert saved["run"]["store"]["vocab_sha"] == load_run(trained).store.manifest["vocab_sha"]
    assert Path(saved["data"]["path"]).is_absolute() and saved["run"]["store"]["path_from_run"].startswith("..")
    assert load_config(None, ["model.name=din"]).model.name == "din"


# The search section of a config.json written before each searcher had its own settings: every searcher's, flat.
OLD_SEARCH = {
    "method": "none",
    "k": 20,
    "seed": 0,
    "hash_bits": 64,
    "hash_rounds": 48,
    "round_bits": 3,
    "level": -1,
    "min_depth": 1,
    "hard_method": "hierarchical",
    "hard_k": 10,
    "chunk": 0,
}


def test_a_run_whose_config_json_holds_every_searchers_settings_still_loads(trained: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    saved = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**saved, "search": OLD_SEARCH}))
    config, _ = read_run_config(old)
    assert config.search == SearchConfig("none", 20) == load_run(trained).config.search
    assert load_run(old).evaluate("test") == load_run(trained).evaluate("test")
    with pytest.raises(ConfigError, match=r"search.hash_bits is a setting of simhash; search.method is 'none'"):
        Config.from_dict({**saved, "search": OLD_SEARCH})  # a config someone writes is checked strictly
    (old / "config.json").write_text(json.dumps({**saved, "search": {**OLD_SEARCH, "method": "category", "levle": 0}}))
    with pytest.raises(ConfigError) as err:  # lenient drops other searchers' settings only
        read_run_config(old)
    assert err.value.problems == ["search.levle: unknown key (did you mean 'level'?)"]


def test_resume_refuses_another_search_method_whatever_settings_each_has(store_path: Path) -> None:
    old = Config.from_dict({**_config(store_path).to_dict(), "search": {"method": "simhash", "k": 5, "hash_bits": 8}})
    new = Config.from_dict({**_config(store_path).to_dict(), "search": {"method": "category", "k": 5, "level": 0}})
    with pytest.raises(ConfigError) as err:
        resume_changes(old, new, same_store=True)
    assert err.value.problems[0] == "search.method was 'simhash', now 'category': the saved state depends on it"
    chunked = Config.from_dict({**old.to_dict(), "search": {**old.to_dict()["search"], "chunk": 2048}})
    assert resume_changes(old, chunked, same_store=True) == [], "search.chunk is free on resume"
    with pytest.raises(ConfigError, match=r"search.options.hash_bits was 8, now 16"):
        resume_changes(
            old, Config.from_dict({**old.to_dict(), "search": {**old.to_dict()["search"], "hash_bits": 16}}), True
        )


def test_the_lock_is_released_when_the_block_ends(tmp_path: Path) -> None:
    with lock_directory(tmp_path), pytest.raises(DirectoryLockedError), lock_directory(tmp_path):
        pass
    with lock_directory(tmp_path):
        pass


def test_train_shuffle_false_keeps_the_stores_order(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import longrec.train.loop as loop

    seen: list[torch.Tensor] = []
    step = loop.train_step

    def recorded(model: torch.nn.Module, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(batch.target.clone())
        return step(model, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", recorded)
    file_order = torch.from_numpy(TrajectoryStore.open(store_path).samples("train").target_item[:32].astype("int64"))
    for shuffle in (False, True):
        seen.clear()
        train(_config(store_path, shuffle=shuffle, max_steps=2), tmp_path / str(shuffle))
        assert torch.equal(torch.cat(seen), file_order) == (not shuffle)
