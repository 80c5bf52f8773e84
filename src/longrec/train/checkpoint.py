"""Atomic checkpoints: written to a temporary file and renamed, so a crash never leaves a truncated one.

A run directory holds `checkpoint.pt` (the best model: `{model, step, metric, vocab_sha, model_name, model_config}`)
and `last.pt` (everything needed to resume: model, optimizer, RNG states, data position, best-so-far, history).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`torch.save` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (on the CPU).

    Raises:
        FileNotFoundError: with the path, when there is none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. Train first with 'longrec train'.")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state
