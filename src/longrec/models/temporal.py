"""TIN's temporal encoding, shared by every TIN-family model (TIN, DSI-TIN, Stacked TIN, TD-SASRec, VISTA):
log-bucketed time gaps, the position / time-gap tables, and adding p_{f(x_i)} to the behaviours and the target.

Shapes: B batch, L history length, E embedding width, T values of the TDPE key (goals, categories, ...).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.models.checks import check_int
from longrec.models.tdpe import TargetDecoupledEncoding, TDPEKey

__all__ = [
    "TEMPORAL",
    "YEAR",
    "TemporalOptions",
    "add_temporal_encoding",
    "check_temporal_options",
    "temporal_tables",
    "time_gap_bucket",
]

TEMPORAL = ("position", "time_gap", "both")
YEAR = 365.0 * 86_400.0  # seconds: the default ceiling of time_gap_bucket


def time_gap_bucket(seconds: Tensor, num_buckets: int, min_seconds: float = 60.0, max_seconds: float = YEAR) -> Tensor:
    """Log-spaced bucket of a time gap to the target: 0 for a gap <= 0 (the target itself), else 1..G-1.

    Bucket 1 holds gaps in (0, min_seconds]; buckets 2..G-2 split (min_seconds, max_seconds] into G - 3 equal steps
    of log(gap); bucket G-1 holds everything longer than max_seconds. Monotone in the gap.

    Args:
        seconds: [...] float time gaps (behaviour to target), >= 0.
        num_buckets: G >= 3, including bucket 0 for the target.
        min_seconds: upper edge of bucket 1, > 0.
        max_seconds: lower edge of the last bucket, > min_seconds.

    Returns:
        [...] int64 bucket ids in [0, G).
    """
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 3:
        raise ValueError(f"time_gap_bucket num_buckets must be an int >= 3. Got {num_buckets!r} instead.")
    if not 0 < min_seconds < max_seconds:
        raise ValueError(
            f"time_gap_bucket needs 0 < min_seconds < max_seconds. Got min_seconds={min_seconds}, "
            f"max_seconds={max_seconds} instead."
        )
    x = seconds.to(torch.float64)  # [...]; float64 so edges and gaps compare exactly
    edges = torch.logspace(
        math.log10(min_seconds), math.log10(max_seconds), num_buckets - 2, dtype=torch.float64, device=x.device
    )  # [G - 2]
    bucket = 1 + torch.bucketize(x, edges)  # [...], in [1, G - 1]: x <= edges[0] -> 1, x > edges[-1] -> G - 1
    return torch.where(x > 0, bucket, 0)  # [...]


class TemporalOptions(Protocol):
    """The temporal-encoding fields that TINConfig, StackedTINConfig and DSITINConfig share (read-only)."""

    @property
    def temporal(self) -> str: ...
    @property
    def num_positions(self) -> int: ...
    @property
    def time_buckets(self) -> int: ...
    @property
    def min_gap_seconds(self) -> float: ...
    @property
    def max_gap_seconds(self) -> float: ...
    @property
    def num_goals(self) -> int: ...
    @property
    def tdpe(self) -> str: ...
    @property
    def init_std(self) -> float: ...


def check_temporal_options(owner: str, options: TemporalOptions) -> None:
    """Check the temporal fields of a TIN-family config; messages name `owner` (the config class)."""
    if options.temporal not in TEMPORAL:
        raise ValueError(f"{owner}.temporal must be one of {', '.join(TEMPORAL)}. Got {options.temporal!r} instead.")
    check_int(owner, "num_positions", options.num_positions, minimum=2)  # the target's row plus one behaviour row
    check_int(owner, "time_buckets", options.time_buckets, minimum=3)
    lo, hi = options.min_gap_seconds, options.max_gap_seconds
    if isinstance(lo, bool) or not isinstance(lo, int | float) or not lo > 0:
        raise ValueError(f"{owner}.min_gap_seconds must be a positive float. Got {lo!r} instead.")
    if isinstance(hi, bool) or not isinstance(hi, int | float) or not hi > lo:
        raise ValueError(f"{owner}.max_gap_seconds must be > min_gap_seconds = {lo}. Got {hi!r} instead.")


def temporal_tables(
    options: TemporalOptions, width: int, key: TDPEKey | None = None, num_targets: int | None = None
) -> tuple[TargetDecoupledEncoding | None, TargetDecoupledEncoding | None]:
    """The position table [P, E] and the time-gap table [G, E] that `options.temporal` asks for, in that order; None
    for a kind it leaves out. Under TDPE one row set per value of `key`, or per target head (`num_targets` sets), or
    per goal (`options.num_goals`) when neither is given."""
    T = key.size if key is not None else num_targets or options.num_goals
    mode, std = options.tdpe, options.init_std
    position = options.temporal in ("position", "both")
    gap = options.temporal in ("time_gap", "both")
    return (
        TargetDecoupledEncoding(options.num_positions, width, T, mode, std) if position else None,
        TargetDecoupledEncoding(options.time_buckets, width, T, mode, std) if gap else None,
    )


def add_temporal_encoding(
    batch: Batch,
    e: Tensor,
    t: Tensor,
    position_table: TargetDecoupledEncoding | None,
    gap_table: TargetDecoupledEncoding | None,
    options: TemporalOptions,
    key: TDPEKey,
) -> tuple[Tensor, Tensor]:
    """ẽ_i = e_i + p^{(τ)}_{f(x_i)} and ṽ_t = v_t + p^{(τ)}_0 for each table given (position first, then time gap),
    τ = the target's value of `key`.

    Args:
        batch: supplies history_position (recomputed from the mask when None), history_time_delta (read only with
            a gap table) and the key's field (read only by TDPE tables; a missing goal = goal 0).
        e: [B, L, E] behaviour embeddings.
        t: [B, E] target embedding.
        position_table: relative-position table, or None.
        gap_table: time-gap bucket table, or None.
        options: num_positions (older behaviours share the last row) and the time_gap_bucket edges.
        key: the TDPE key the tables were built for (`tdpe.tdpe_key`).

    Returns:
        ẽ [B, L, E] and ṽ_t [B, E].
    """
    tables = [table for table in (position_table, gap_table) if table is not None]
    tau = key.ids(batch) if any(table.reads_key for table in tables) else None  # [B]
    B = len(batch)
    if position_table is not None:
        position = batch.history_position
        if position is None:  # left padding: position = real behaviours from this column to the end
            position = batch.history_mask.flip(1).cumsum(1).flip(1) * batch.history_mask  # [B, L]
        position = position.clamp(0, options.num_positions - 1)  # [B, L]
        e = e + position_table(position, tau)  # [B, L, E]
        t = t + position_table.target(tau, B)  # [B, E], the target is position 0
    if gap_table is not None:
        assert batch.history_time_delta is not None  # in the model's reads: check_batch's job
        o = options
        bucket = time_gap_bucket(batch.history_time_delta, o.time_buckets, o.min_gap_seconds, o.max_gap_seconds)
        e = e + gap_table(bucket, tau)  # [B, L, E]
        t = t + gap_table.target(tau, B)  # [B, E], the target's gap is 0
    return e, t
