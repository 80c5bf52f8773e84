"""Continue a run on the next time window: `longrec train CONFIG --out RUN2 --continue-from RUN1 --set data.path=DAY2`
(docs/incremental.md).

The new store must hold the run's vocabulary or one grown from it (`longrec prepare --vocab-from`: old ids keep their
numbers, new ids are appended; the store's manifest lists every ancestor's vocabulary sha). The run's last weights
and Adam state (its `last.pt`: where training stopped, which is what a day's update continues) are grown onto the new
store's sizes (`longrec.train.grow`: new rows as the model initialises them, zero Adam moments), and the new run
records where it started and what grew in its config.json (`run.continued_from`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longrec.config import Config
from longrec.data.store import TrajectoryStore
from longrec.models import build_model_for_sizes
from longrec.run.directory import model_changes, read_run_config
from longrec.settings import ConfigError
from longrec.train.checkpoint import load_checkpoint
from longrec.train.grow import grow_optimizer_state, grow_weights

__all__ = ["Continuation", "continuation"]


@dataclass
class Continuation:
    """Where a continued run starts: the grown weights and Adam state (None when a resumed run has its own last.pt),
    and what its config.json records."""

    model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    record: dict[str, Any]


def _vocabulary_lengths(store: TrajectoryStore) -> dict[str, int]:
    return {p.stem: store.vocab(p.stem).len() for p in sorted((store.vocab_root / "vocab").glob("*.parquet"))}


def continuation(source: str | Path, config: Config, store: TrajectoryStore, out: str | Path) -> Continuation:
    """The start of a run of `config` on `store` (into `out`) from the last state of the run `source`.

    Raises:
        FileNotFoundError: `source` is not a run directory, or has no last.pt yet.
        ConfigError: the model config differs from the source run's (every difference listed).
        ValueError: `store`'s vocabulary is neither the run's nor grown from it; or a tensor cannot grow; or the run
            reads item content (data.content: not supported yet).
    """
    source = Path(source)
    if config.data.content:
        raise ValueError(
            f"--continue-from {source} with data.content = {config.data.content} is not supported yet: the content "
            "table would have to grow with the new items (docs/multimodal.md). Train a new model instead."
        )
    old, info = read_run_config(source)
    changes = model_changes(old, config)
    if changes:
        raise ConfigError(
            [*changes, f"continuing {source} needs its model config; train a new model without --continue-from"],
            "--continue-from",
        )
    sha, new_sha = info.get("store", {}).get("vocab_sha"), store.manifest["vocab_sha"]
    growth = store.manifest.get("vocab_growth", {})
    ancestors = {a["vocab_sha"]: a["lengths"] for a in growth.get("ancestors", [])}
    lengths = _vocabulary_lengths(store)
    if sha == new_sha:
        added = dict.fromkeys(lengths, 0)
    elif sha in ancestors:
        added = {name: n - ancestors[sha].get(name, 0) for name, n in lengths.items()}
    else:
        listed = ", ".join(ancestors) or "none: it was not prepared with --vocab-from"
        raise ValueError(
            f"--continue-from {source} was trained on vocabulary sha {sha}, but {store.root} has {new_sha} and did "
            f"not grow from it (its ancestors: {listed}); the ids would mean other items. Prepare the store with "
            f"'longrec prepare ... --vocab-from {source}' (or the run's store)."
        )
    saved = load_checkpoint(source / "last.pt")
    torch.manual_seed(config.train.seed)  # the new rows as `longrec.run.train` initialises its model
    fresh = build_model_for_sizes(config.model.name, config.model.params, store.sizes)
    model, rows = grow_weights(saved["model"], fresh.state_dict(), f"{source / 'last.pt'}")
    fresh.load_state_dict(model)
    optimizer = grow_optimizer_state(saved["optimizer"], fresh, rows)
    resolved = source.resolve()
    record = {
        "path": str(resolved),
        "path_from_run": os.path.relpath(resolved, Path(out).resolve()),
        "step": int(saved["state"]["step"]),
        "vocab_sha": sha,
        "vocabulary_added": added,
        "grown": rows,
    }
    return Continuation(model, optimizer, record)
