"""VISTA's two-stage training: compute every sample's user state once into a summary store, then train on it.

    longrec train configs/vista_synthetic.toml --out runs/vista-1 --set data.max_history=1000  # stage 1: short window
    longrec summarise runs/vista-1 --out data/vista-summaries --max-history 100000             # once, frozen
    longrec train configs/vista_synthetic.toml --out runs/vista-2 --set data.summaries=data/vista-summaries  # stage 2

Stage 1 is any run of a `CachedUserState` model (VISTA, VQL). `compute_summaries` runs its frozen `user_state` over
each sample's history as collate builds it (the last `max_history` behaviours strictly before the sample's cutoff:
no future behaviour) and stores the states, one row per sample, with the weights that computed them
(`longrec.data.summaries`). Stage 2 (`data.summaries`) builds the same model, loads those weights, freezes every
parameter the user side reads (`user_side_parameters`: the summariser and, for VISTA, the embedding tables that the
candidate shares with it), and trains the rest (the candidate query and the head) on batches that carry the stored
states and no history. Freezing the shared tables keeps the invariant that makes the stored states valid features:
the stage-2 model's own `user_state` is still exactly the stored one, so it can be served with `UserStateCache`
without a drift between the states it was trained on and those it is served with.

Shapes: B batch, L history length, N samples of a split, S summary tokens, E summary width.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import nn

from longrec.config import Config
from longrec.data.dataset import collate
from longrec.data.store import SPLITS, TrajectoryStore
from longrec.data.summaries import SUMMARY_FORMAT, SummaryStore, file_sha256, open_split_for_writing
from longrec.files import SUMMARIES, dumps_json, output_directory, write_json
from longrec.models.contract import CachedUserState

__all__ = ["compute_summaries", "start_from_summaries", "user_side_parameters"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def compute_summaries(
    model: nn.Module,
    store: TrajectoryStore,
    out: str | Path,
    model_name: str,
    model_params: dict[str, Any],
    max_history: int,
    batch_size: int = 64,
    dtype: str = "float16",
    splits: tuple[str, ...] = SPLITS,
    force: bool = False,
    source: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Store `model.user_state` of every sample of `splits` into the summary store `out`; return its metadata.

    Args:
        model: a `CachedUserState` model (run in eval mode, no gradient).
        store: the trajectory store whose samples are summarised.
        out: a new folder (or a previous summary store, with `force`); written in a temporary sibling, then renamed.
        model_name, model_params: the model's registry name and config params (stage 2 builds the same model).
        max_history: the history window each summary reads: the sample's last `max_history` behaviours before its
            cutoff (as `data.max_history` in training).
        batch_size: samples per `user_state` call (a batch holds B x L behaviours: keep B small at L = 10^5-10^6).
        dtype: "float16" (half the disk and page cache) or "float32" (bit-exact states).
        splits: the splits to summarise.
        force: replace a previous summary store in `out`.
        source: JSON-ready facts about where the model came from (e.g. the run and its step), kept in the metadata.
        progress: show a progress bar per split (stderr).

    Raises:
        TypeError: the model has no user_state / score_with_state.
        OutputError: `out` holds something else (`longrec.files.check_output`).
    """
    if not isinstance(model, CachedUserState):
        raise TypeError(
            f"compute_summaries needs a model with user_state / score_with_state (CachedUserState: VISTA, VQL). "
            f"Got {type(model).__name__} ('{model_name}') instead."
        )
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError(f"compute_summaries: max_history must be a positive int. Got {max_history!r} instead.")
    model.eval()
    meta: dict[str, Any] = {
        "format_version": SUMMARY_FORMAT,
        "model": {"name": model_name, "params": model_params},
        "max_history": max_history,
        "dtype": dtype,
        "vocab_sha": store.manifest["vocab_sha"],
        "splits": {},
        "seconds": {},
        "source": source or {},
    }
    with output_directory(out, SUMMARIES, force) as tmp:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        meta["weights_sha256"] = file_sha256(tmp / "model.safetensors")
        for split in splits:
            samples = store.samples(split)
            n = len(samples)
            started = time.perf_counter()
            array: np.ndarray | None = None
            starts = range(0, n, batch_size)
            shown = track(starts, f"summarising {split}", console=Console(stderr=True), disable=not progress)
            for lo in shown:
                rows = np.arange(lo, min(n, lo + batch_size))
                z = model.user_state(collate(store, samples, rows, max_history)).float()  # [B, S, E]
                if array is None:
                    meta["shape"] = list(z.shape[1:])
                    array = open_split_for_writing(tmp, split, n, tuple(z.shape[1:]), dtype)
                array[lo : lo + len(rows)] = z.numpy()
            if array is None:  # an empty split: the state's shape from one empty history
                empty = model.user_state(collate(store, store.samples("train"), np.arange(1), 0)).float()  # [1, S, E]
                meta.setdefault("shape", list(empty.shape[1:]))
                array = open_split_for_writing(tmp, split, 0, tuple(meta["shape"]), dtype)
            array.flush()  # type: ignore[attr-defined]  # an np.memmap
            del array
            meta["splits"][split] = n
            meta["seconds"][split] = round(time.perf_counter() - started, 3)
            logger.info("summarised %s: %d samples in %.1f s", split, n, meta["seconds"][split])
        write_json(tmp / "summaries.json", meta)
    return meta


def user_side_parameters(model: nn.Module, batch: Any) -> list[str]:
    """Names of the parameters `model.user_state` reads on `batch` (those its output has a gradient for)."""
    assert isinstance(model, CachedUserState)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model.user_state(batch).float().sum().backward()
    names = [name for name, p in model.named_parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return names


def start_from_summaries(model: nn.Module, config: Config, store: TrajectoryStore) -> list[str]:
    """Stage 2's start: check that `config` builds the model that computed `config.data.summaries`, load its weights
    and freeze the user side; return the frozen parameter names.

    Raises:
        ValueError: the summaries were computed by another model, or on another store.
        TypeError: the model has no user_state / score_with_state.
    """
    summaries = SummaryStore.open(config.data.summaries, store)
    recorded = summaries.meta["model"]
    params = json.loads(dumps_json(config.model.params))  # as summaries.json holds them (tuples as lists)
    if recorded.get("name") != config.model.name or recorded.get("params") != params:
        raise ValueError(
            f"data.summaries = {config.data.summaries} was computed by model {recorded.get('name')!r} with params "
            f"{recorded.get('params')}, but the config builds {config.model.name!r} with {config.model.params}: "
            "stage 2 trains the model that computed the summaries. Use its [model] table."
        )
    if not isinstance(model, CachedUserState):
        raise TypeError(f"data.summaries needs a CachedUserState model (VISTA, VQL); '{config.model.name}' is not.")
    model.load_state_dict(summaries.weights())
    probe = collate(store, store.samples("train"), np.arange(min(2, len(store.samples("train")))), 8)
    frozen = user_side_parameters(model, probe)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen
