"""Where a training step runs: the device, how batches get there, and in which precision the forward runs.

- `resolve_device("auto" | "cpu" | "cuda" | "cuda:N")` (`train.device`): "auto" picks CUDA when torch sees it.
- `DevicePrefetcher`: batches arrive on the device. On CUDA each batch is page-locked (pinned: the loader's workers do
  it with `pin_memory=True`, else the prefetcher), copied with `non_blocking=True` on a side CUDA stream, and the
  copy of batch i+1 is queued before batch i is handed out, so it overlaps batch i's compute (the Tencent
  paper's data prefetching and multi-stream overlap). On the CPU it passes batches through unchanged.
- `autocast(precision, device)` (`train.precision`): "bf16" runs the forward under `torch.autocast` with bfloat16;
  the loss is computed on fp32 logits outside it, and `longrec.models.layers` keeps the attention softmax and pooling
  in fp32. Weights, gradients and Adam stay fp32 (no loss scaling needed: bf16 has fp32's exponent range).

The CUDA paths are tested on a CUDA machine (`pytest -m gpu`); the CPU paths everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from longrec.data.batch import Batch

__all__ = ["DevicePrefetcher", "autocast", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The torch device for `train.device`: "cpu", "cuda", "cuda:N", or "auto" (CUDA when available, else the CPU).

    Raises:
        ValueError: CUDA asked for but not available (a CPU-only torch build or no visible GPU).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"train.device = {name!r}, but torch sees no CUDA device (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda is not None}). Use train.device='cpu' or 'auto'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"train.device = {name!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})."
            )
    return device


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The context the forward pass runs in: bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16'. Got {precision!r} instead.")


class DevicePrefetcher:
    """Iterate `batches` on `device`; on CUDA the non-blocking copy of the next batch overlaps this one's compute.

    Args:
        batches: collated CPU batches (pinned already when the loader ran with `pin_memory=True`).
        device: where the batches go; on the CPU they pass through untouched.
    """

    def __init__(self, batches: Iterable[Batch], device: torch.device) -> None:
        self.batches = batches
        self.device = device

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type == "cpu":
            yield from self.batches
            return
        if self.device.type != "cuda":
            for batch in self.batches:
                yield batch.to(self.device)
            return
        stream = torch.cuda.Stream(self.device)
        source = iter(self.batches)

        def start_copy() -> Batch | None:
            batch = next(source, None)
            if batch is None:
                return None
            if not batch.history.is_pinned():
                batch = batch.pin_memory()  # a pageable source would make the copy synchronous
            with torch.cuda.stream(stream):
                return batch.to(self.device, non_blocking=True)

        upcoming = start_copy()
        while upcoming is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(stream)  # the batch's copy is done before its compute starts
            for value in upcoming.fields().values():
                value.record_stream(compute)  # made on the copy stream, used on the compute stream: keep it alive
            current, upcoming = upcoming, start_copy()  # queue batch i+1's copy, then hand out batch i
            yield current
