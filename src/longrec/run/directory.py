"""A run directory on disk: its config.json, where its store is, and what may change when it is resumed.

`config.json` holds the resolved experiment (`Config.to_dict()`) plus a `run` section that makes the folder
self-contained, so a run can be evaluated, analysed or loaded from any working directory and on another machine:

    "run": {
      "format_version": 1,
      "longrec_version": "0.1.0",
      "store": {"path": "<absolute path>", "path_from_run": "../../data/synth",
                "vocab_sha": "3f2a...", "sizes": {"num_items": 5001, ...}}
    }

`data.path` is recorded absolute. `locate_store` finds the store at that path, else at `path_from_run` (a run and its
store moved together), else at a path the caller gives (`--data`), and always checks the vocabulary sha, so a model
never runs on remapped ids. Runs written before the `run` section existed (data.path relative to the working
directory of `train`) still load, from that directory or with `--data`.

**Resume rules** (`resume_changes`): every config field is fixed, free or applied on resume, as its dataclass field
says (`longrec.settings.RESUME_FREE`, `RESUME_APPLY`). Changing a fixed field (the model's shape, the data, the
search stage, the batch size, the seed, the selection metric) makes the checkpoint or the data position meaningless,
so `--resume` refuses it, listing every such change at once; applied fields (learning rate, L2, goal weights) take
effect from the resumed step and are reported; free fields (threads, device, epochs, patience, ...) just change.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from longrec.config import Config
from longrec.data.sharded import open_store
from longrec.data.store import TrajectoryStore
from longrec.settings import ConfigError, resume_rule
from longrec.version import __version__

__all__ = ["RUN_FORMAT", "locate_store", "model_changes", "read_run_config", "resume_changes", "run_config_dict"]

RUN_FORMAT = 1


def run_config_dict(
    config: Config, store: TrajectoryStore, run: Path, continued_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `config.json` holds for `config` trained on `store` into `run` (data.path made absolute), and, for a run
    continued from another (`longrec train --continue-from`), where it started and how its tables grew."""
    root = Path(store.root).resolve()
    saved = config.to_dict()
    saved["data"]["path"] = str(root)
    if saved["data"].get("summaries"):
        saved["data"]["summaries"] = str(Path(saved["data"]["summaries"]).resolve())
    saved["run"] = {
        "format_version": RUN_FORMAT,
        "longrec_version": __version__,
        "store": {
            "path": str(root),
            "path_from_run": os.path.relpath(root, Path(run).resolve()),
            "vocab_sha": store.manifest["vocab_sha"],
            "sizes": store.sizes,
        },
        **({"continued_from": continued_from} if continued_from else {}),
    }
    return saved


def read_run_config(run: str | Path) -> tuple[Config, dict[str, Any]]:
    """The experiment config of a run directory and its `run` section ({} for runs older than that section).

    Raises:
        FileNotFoundError: no config.json: not a run directory.
        ValueError: config.json is not valid JSON (a damaged file), or its run section is from a newer longrec.
        ConfigError: the config no longer passes this longrec's checks (each problem listed).
    """
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: '{run}' is not a run directory of 'longrec train'.")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged (not valid JSON: {err}). Re-train the run into a new folder.") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is damaged: expected a JSON object, got {type(saved).__name__}.")
    info = saved.pop("run", {})
    if not isinstance(info, dict) or info.get("format_version", RUN_FORMAT) > RUN_FORMAT:
        raise ValueError(
            f"{path} was written by a newer longrec (run format {info.get('format_version')!r}; this one reads "
            f"{RUN_FORMAT}). Upgrade longrec to read it."
        )
    # lenient: runs written before each searcher had its own settings saved every searcher's in the search section
    return Config.from_dict(saved, str(path), lenient=True), info


def locate_store(run: Path, config: Config, info: dict[str, Any], data: str | Path | None = None) -> TrajectoryStore:
    """The run's store: `data` if given, else the recorded path, else the path relative to the run; sha checked.

    Raises:
        FileNotFoundError: no store at any of those places; the message lists where it looked.
        ValueError: the store found has another vocabulary than the run was trained with.
    """
    stored = info.get("store", {})
    if data is not None:
        candidates = [Path(data)]
    else:
        candidates = [Path(config.data.path)]
        if stored.get("path_from_run"):
            candidates.append(Path(run) / stored["path_from_run"])
    found = next((c for c in candidates if (c / "manifest.json").is_file() or (c / "shards.json").is_file()), None)
    if found is None:
        where = " or ".join(str(c) for c in candidates)
        sha = f" (vocabulary sha {stored['vocab_sha']})" if "vocab_sha" in stored else ""
        raise FileNotFoundError(
            f"the store of run {run}{sha} is not at {where}: it was moved or deleted. Pass --data PATH (or "
            "data=PATH) to a store prepared with the same vocabulary."
        )
    store = open_store(found, config.data.shards if (found / "shards.json").is_file() else None)
    expected = stored.get("vocab_sha")
    if expected is not None and store.manifest["vocab_sha"] != expected:
        raise ValueError(
            f"{found} has vocabulary sha {store.manifest['vocab_sha']}, but run {run} was trained on a store with "
            f"{expected}: its ids would mean other items. Use the store it was trained on, or retrain."
        )
    return store


def _fields(value: Any, prefix: str) -> list[tuple[str, Any, str]]:
    """(dotted name, value, resume rule) of every field of a config dataclass, nested ones flattened."""
    out = []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            out += _fields(item, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", item, resume_rule(f)))
    return out


def model_changes(old: Config, new: Config) -> list[str]:
    """Every model setting that differs between two configs, one line each: a checkpoint holds the old model."""
    old_model = {"model.name": old.model.name, **{f"model.{k}": v for k, v in old.model.params.items()}}
    new_model = {"model.name": new.model.name, **{f"model.{k}": v for k, v in new.model.params.items()}}
    return [
        f"{key} was {old_model.get(key, '(default)')!r}, now {new_model.get(key, '(default)')!r}: the checkpoint "
        "holds the old model"
        for key in sorted(old_model.keys() | new_model.keys())
        if old_model.get(key) != new_model.get(key)
    ]


def resume_changes(old: Config, new: Config, same_store: bool) -> list[str]:
    """Check `new` against the config a run was trained with; return the applied changes, one line each.

    Args:
        old: the run's config.json.
        new: the config given with --resume.
        same_store: whether `new.data.path` holds the run's store (same vocabulary sha): a moved store may differ
            in path.

    Raises:
        ConfigError: every change of a fixed field (model, data, search, batch size, seed, metric), at once.
    """
    refused, applied = model_changes(old, new), []
    for section in ("data", "search", "train"):
        old_fields = _fields(getattr(old, section), f"{section}.")
        new_values = {name: value for name, value, _ in _fields(getattr(new, section), f"{section}.")}
        for name, before, rule in old_fields:
            if name not in new_values:  # a setting of the old search method only: the method change is refused
                continue
            after = new_values[name]
            if before == after or rule == "free":
                continue
            if name == "data.path":
                if not same_store:
                    refused.append(f"data.path was {before!r}, now {after!r}: another store (vocabulary)")
                continue
            if rule == "apply":
                applied.append(f"{name}: {before!r} -> {after!r} (applies from the resumed step)")
            else:
                refused.append(f"{name} was {before!r}, now {after!r}: the saved state depends on it")
    if refused:
        raise ConfigError(
            [*refused, "to train with these settings, train into a new --out (or --force to replace this run)"],
            "--resume",
        )
    return applied
