"""Checkpoints: written atomically (a temporary file and a rename: a crash never leaves a truncated one) and read
with `torch.load(weights_only=True)`, so a checkpoint can hold tensors and plain Python values but nothing that runs
code when loaded: a crafted pickle in a run folder is refused, not executed.

A run directory holds `checkpoint.pt` (the best model: `{model, step, metric, vocab_sha}`) and `last.pt`
(everything needed to resume: model, optimizer, RNG state, data position, best-so-far, history, time spent).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from longrec.files import atomic_path

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`torch.save` through a temporary file in the same directory and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (on the CPU).

    Raises:
        FileNotFoundError: with the path, when there is none.
        ValueError: the file is damaged (truncated, not a checkpoint) or holds objects that would run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. Train first with 'longrec train'.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} holds objects beyond tensors and plain values, which could run code when loaded; longrec "
            f"refuses to load it ({first}). Use checkpoints written by longrec."
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}). Re-train, or resume from last.pt.") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a longrec checkpoint: expected a dict, got {type(state).__name__}.")
    return state
