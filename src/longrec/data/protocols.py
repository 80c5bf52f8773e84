"""Sample protocols (docs/data.md): which (user, cutoff, target, label) rows a prepared store trains and evaluates on.

- **A** (DARE, Taobao/Tmall): users with >= `min_behaviours`; per user 19 train targets at positions T-2, T-7, ...,
  T-92 (T = last), validation target T-1, test target T; `negatives` per positive drawn proportionally to item
  frequency from items the user never touched.
- **B** (TIN/DIN, Amazon): leave-last-out; every position 1..n-3 is a train target, n-2 validation, n-1 test; one
  random negative per positive.
- **T** (temporal split, ours): samples split by target time quantiles. Labelled impressions in the log are the
  samples when present; otherwise every behaviour (most recent `max_targets_per_user`) is a positive with
  sampled negatives.

The cutoff rule is shared by all three: a sample's history is the user's behaviours with timestamp **strictly less
than** the target's timestamp (`end = searchsorted(ts_user, t_target, 'left')`). Behaviours that share the
target's second are excluded, so no behaviour at or after the cutoff can leak into a history, whatever the order of
ties in the file. Every protocol is a pure function of the arrays and `seed`: the same seed gives byte-identical
samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longrec.data.store import SampleSet
from longrec.settings import ConfigError

__all__ = ["PROTOCOLS", "ProtocolConfig", "Trajectories", "build_samples", "history_end", "sample_negatives"]

PROTOCOLS = ("A", "B", "T")


@dataclass(frozen=True)
class ProtocolConfig:
    """How samples are cut from trajectories. Defaults follow each protocol's source (DARE for A,
    DIN/TIN for B) where they differ."""

    name: str = "T"  # A | B | T
    seed: int = 0
    negatives: int = 1  # sampled negatives per positive (Protocol A uses 2)
    negative_sampling: str = "frequency"  # frequency | uniform
    min_behaviours: int = 1  # users with fewer behaviours give no samples (Protocol A: 210)
    num_train_targets: int = 19  # A: train targets per user
    train_offset: int = 2  # A: first train target at T - train_offset
    train_step: int = 5  # A: then every train_step positions back
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # T: train/valid/test by time quantile
    max_targets_per_user: int = 0  # T without labels: most recent N behaviours per user become targets; 0 = all
    min_history: int = 1  # B/T: a target needs at least this many earlier behaviours
    # T: (train_from, valid_from, test_from) epoch seconds instead of split_fractions: a target at time t is train for
    # train_from <= t < valid_from, valid for valid_from <= t < test_from, test from test_from on; earlier targets give
    # no samples (their behaviours still form histories). One day's store: (day d, day d + 1, day d + 2).
    split_times: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.name not in PROTOCOLS:
            problems.append(f"protocol.name must be one of {', '.join(PROTOCOLS)}. Got {self.name!r} instead.")
        if self.negative_sampling not in ("frequency", "uniform"):
            problems.append(
                f"protocol.negative_sampling must be 'frequency' or 'uniform'. Got {self.negative_sampling!r}."
            )
        for name in ("negatives", "min_behaviours", "num_train_targets", "train_step", "min_history"):
            value = getattr(self, name)
            if value < (0 if name in ("negatives", "min_history") else 1):
                problems.append(f"protocol.{name} must be a positive int. Got {value} instead.")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or sum(self.split_fractions) <= 0:
            problems.append(f"protocol.split_fractions must be 3 non-negative numbers. Got {self.split_fractions}.")
        times = self.split_times
        if times and (len(times) != 3 or any(not isinstance(t, int) for t in times) or list(times) != sorted(times)):
            problems.append(
                "protocol.split_times must be empty or 3 non-decreasing epoch seconds (train_from, valid_from, "
                f"test_from). Got {times} instead."
            )
        if times and self.name != "T":
            problems.append(f"protocol.split_times applies to protocol T only. Got protocol {self.name!r}.")
        if problems:
            raise ConfigError(problems, "ProtocolConfig")

    @classmethod
    def for_protocol(cls, name: str, **overrides: Any) -> ProtocolConfig:
        """The defaults of protocol `name` (as its source paper sets them), with overrides."""
        defaults: dict[str, dict[str, Any]] = {
            "A": {"negatives": 2, "negative_sampling": "frequency", "min_behaviours": 210},
            "B": {"negatives": 1, "negative_sampling": "uniform", "min_behaviours": 4},
            "T": {"negatives": 1, "negative_sampling": "frequency"},
        }
        return cls(name=name, **{**defaults.get(name, {}), **overrides})


@dataclass
class Trajectories:
    """The arrays a protocol reads: behaviours sorted by (user, timestamp), plus labelled impressions if any."""

    offsets: np.ndarray  # [U + 1] int64
    user: np.ndarray  # [N] int64 owner of each behaviour row
    item: np.ndarray  # [N] int64
    timestamp: np.ndarray  # [N] int64
    extra: np.ndarray  # [N, E] int32 or wider: behaviour extra fields (copied into positives' target_extra)
    scene: np.ndarray  # [N] int64 (0 when absent)
    event_id: np.ndarray  # [N] int64 (-1 when absent)
    item_category: np.ndarray  # [V_item, M] int32 or wider
    item_extra: np.ndarray  # [V_item, E] int32 or wider (the dtype of `extra`)
    item_count: np.ndarray  # [V_item] int64
    impressions: dict[str, np.ndarray] | None = None  # user, item, timestamp, label, goal, scene, extra, event_id
    report: dict[str, int] = field(default_factory=dict)  # what the protocol skipped, by reason

    @property
    def num_items(self) -> int:
        return int(self.item_count.shape[0])


def history_end(traj: Trajectories, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Number of each user's behaviours with timestamp strictly before `times` ([N] int64, vectorised)."""
    t0 = min(int(traj.timestamp.min(initial=0)), int(times.min(initial=0)))
    span = max(int(traj.timestamp.max(initial=0)), int(times.max(initial=0))) - t0 + 1
    if span >= 2**32 or traj.offsets.shape[0] >= 2**31:
        raise ValueError(f"timestamps span {span} s; history_end supports spans < 2**32 s (136 years).")
    keys = (traj.user << 32) | (traj.timestamp - t0)  # [N] sorted, since rows are sorted by (user, timestamp)
    queries = (users.astype(np.int64) << 32) | (times.astype(np.int64) - t0)  # [Q]
    return np.searchsorted(keys, queries, side="left") - traj.offsets[users]  # [Q]


def sample_negatives(
    traj: Trajectories, users: np.ndarray, count: int, rng: np.random.Generator, how: str, max_rounds: int = 100
) -> np.ndarray:
    """Draw `count` negative items per row, never an item the user has in their trajectory.

    Args:
        traj: the trajectories (for item frequencies and each user's item set).
        users: [Q] int64 the user of each row.
        count: negatives per row.
        rng: the seeded generator; draws are a pure function of its state.
        how: 'frequency' (proportional to behaviour count) or 'uniform' (over items seen in behaviours).

    Returns:
        [Q, count] int64 item ids.
    """
    weights = traj.item_count.astype(np.float64) if how == "frequency" else (traj.item_count > 0).astype(np.float64)
    weights[0] = 0.0
    if weights.sum() == 0:
        raise ValueError("cannot sample negatives: no item has a behaviour.")
    cdf = np.cumsum(weights / weights.sum())  # [V]
    V = traj.num_items
    seen = np.unique(traj.user * V + traj.item)  # [P] sorted (user, item) keys
    out = np.empty((users.shape[0], count), dtype=np.int64)  # [Q, count]
    todo = np.arange(out.size)
    rows = np.repeat(users.astype(np.int64), count)  # [Q * count]
    flat = out.reshape(-1)
    for _ in range(max_rounds):
        draw = np.minimum(np.searchsorted(cdf, rng.random(todo.size), side="right"), V - 1)  # [todo]
        keys = rows[todo] * V + draw
        pos = np.minimum(np.searchsorted(seen, keys), max(seen.size - 1, 0))
        clash = seen[pos] == keys if seen.size else np.zeros(todo.size, dtype=bool)
        flat[todo[~clash]] = draw[~clash]
        todo = todo[clash]
        if todo.size == 0:
            return out
    # Users who touched most of the catalogue: draw the last few rows from their exact complement.
    for i in todo:
        user = int(rows[i])
        lo, hi = np.searchsorted(seen, [user * V, (user + 1) * V])
        allowed = np.setdiff1d(np.flatnonzero(weights), seen[lo:hi] - user * V)
        if allowed.size == 0:
            raise ValueError(f"cannot draw a negative for user {user}: they have interacted with every item.")
        p = weights[allowed] / weights[allowed].sum()
        pick = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
        flat[i] = allowed[min(pick, allowed.size - 1)]
    return out


def _with_negatives(
    traj: Trajectories, rows: np.ndarray, cfg: ProtocolConfig, rng: np.random.Generator, end: np.ndarray
) -> SampleSet:
    """Positives at behaviour rows `rows` (global indices) plus `cfg.negatives` sampled negatives each."""
    users = traj.user[rows]
    times = traj.timestamp[rows]
    k = cfg.negatives
    negatives = sample_negatives(traj, users, k, rng, cfg.negative_sampling) if k else np.zeros((rows.size, 0), int)
    # Interleave: positive, its negatives, next positive, ... so a sample's group stays together.
    items = np.concatenate([traj.item[rows][:, None], negatives], axis=1).reshape(-1)  # [Q * (1 + k)]
    rep = 1 + k
    label = np.tile(np.r_[1.0, np.zeros(k)], rows.size).astype(np.float32)
    extra = traj.item_extra[items]
    is_pos = label == 1
    extra[is_pos] = traj.extra[rows]
    return SampleSet(
        user=np.repeat(users, rep).astype(np.int64),
        end=np.repeat(end, rep).astype(np.int64),
        target_item=items.astype(np.int64),
        target_category=traj.item_category[items],
        target_extra=extra,
        target_time=np.repeat(times, rep).astype(np.int64),
        label=label,
        goal=np.zeros(items.size, dtype=np.int64),
        scene=np.repeat(traj.scene[rows], rep).astype(np.int64),
        event_id=np.where(is_pos, np.repeat(traj.event_id[rows], rep), -1).astype(np.int64),
    )


def _positions_a(traj: Trajectories, cfg: ProtocolConfig) -> dict[str, np.ndarray]:
    counts = np.diff(traj.offsets)  # [U + 1]
    eligible = np.flatnonzero(counts >= cfg.min_behaviours)
    traj.report["users below min_behaviours"] = int(np.count_nonzero(counts[1:] < cfg.min_behaviours))
    last = traj.offsets[eligible + 1] - 1  # [U'] global row of each user's last behaviour
    back = cfg.train_offset + cfg.train_step * np.arange(cfg.num_train_targets)  # [19]
    train = last[:, None] - back[None, :]  # [U', 19]
    ok = train >= traj.offsets[eligible][:, None] + 1  # at least one behaviour before the target position
    traj.report["A train targets before a user's second behaviour"] = int(np.count_nonzero(~ok))
    return {"train": train[ok], "valid": last - 1, "test": last}


def _positions_b(traj: Trajectories, cfg: ProtocolConfig) -> dict[str, np.ndarray]:
    counts = np.diff(traj.offsets)
    eligible = np.flatnonzero(counts >= max(cfg.min_behaviours, 3))
    traj.report["users below min_behaviours"] = int(np.count_nonzero(counts[1:] < max(cfg.min_behaviours, 3)))
    lo, hi = traj.offsets[eligible], traj.offsets[eligible + 1]
    n_train = np.maximum(hi - lo - 3, 0)  # positions 1..n-3 of each user
    train = np.repeat(lo + 1, n_train) + (np.arange(n_train.sum()) - np.repeat(np.cumsum(n_train) - n_train, n_train))
    return {"train": train, "valid": hi - 2, "test": hi - 1}


def _split_by_time(times: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """0/1/2 = train/valid/test by quantiles of `times` (ties go to the later split boundary consistently)."""
    f = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    if times.size == 0:
        return np.zeros(0, dtype=np.int8)
    q1, q2 = np.quantile(times, [f[0], f[0] + f[1]], method="lower")
    return np.where(times <= q1, 0, np.where(times <= q2, 1, 2)).astype(np.int8) if f[0] < 1 else np.zeros_like(times)


def _split(times: np.ndarray, cfg: ProtocolConfig) -> np.ndarray:
    """0/1/2 = train/valid/test, -1 = no sample: by `cfg.split_times` when given, else by time quantiles."""
    if not cfg.split_times:
        return _split_by_time(times, cfg.split_fractions)
    train_from, valid_from, test_from = cfg.split_times
    which = np.where(times < valid_from, 0, np.where(times < test_from, 1, 2)).astype(np.int8)
    return np.where(times < train_from, -1, which).astype(np.int8)


def build_samples(traj: Trajectories, cfg: ProtocolConfig) -> dict[str, SampleSet]:
    """Cut train/valid/test samples from `traj` under protocol `cfg.name` (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.name == "T" and traj.impressions is not None:
        return _impression_samples(traj, cfg)
    if cfg.name in ("A", "B"):
        positions = _positions_a(traj, cfg) if cfg.name == "A" else _positions_b(traj, cfg)
        out = {}
        for split in ("train", "valid", "test"):
            rows = np.sort(positions[split])
            end = history_end(traj, traj.user[rows], traj.timestamp[rows])
            short = end < cfg.min_history
            traj.report[f"{split} targets with fewer than min_history earlier behaviours"] = int(short.sum())
            rows, end = rows[~short], end[~short]
            out[split] = _with_negatives(traj, rows, cfg, rng, end)
        return out
    # Protocol T on behaviours: every (recent) behaviour is a positive; split by time.
    rows = np.arange(traj.user.size)
    if cfg.max_targets_per_user:
        rank_from_end = traj.offsets[traj.user + 1] - 1 - rows  # 0 = user's most recent
        rows = rows[rank_from_end < cfg.max_targets_per_user]
    end = history_end(traj, traj.user[rows], traj.timestamp[rows])
    short = end < cfg.min_history
    traj.report["targets with fewer than min_history earlier behaviours"] = int(short.sum())
    rows, end = rows[~short], end[~short]
    which = _split(traj.timestamp[rows], cfg)
    return {
        name: _with_negatives(traj, rows[which == s], cfg, rng, end[which == s])
        for s, name in enumerate(("train", "valid", "test"))
    }


def _impression_samples(traj: Trajectories, cfg: ProtocolConfig) -> dict[str, SampleSet]:
    imp = traj.impressions
    assert imp is not None
    order = np.lexsort((imp["timestamp"], imp["user"]))  # deterministic: by user, then time
    imp = {k: v[order] for k, v in imp.items()}
    end = history_end(traj, imp["user"], imp["timestamp"])
    short = end < cfg.min_history
    traj.report["impressions with fewer than min_history earlier behaviours"] = int(short.sum())
    keep = ~short
    items = imp["item"][keep]
    samples = SampleSet(
        user=imp["user"][keep].astype(np.int64),
        end=end[keep].astype(np.int64),
        target_item=items.astype(np.int64),
        target_category=imp["category"][keep] if "category" in imp else traj.item_category[items],
        target_extra=imp["extra"][keep],
        target_time=imp["timestamp"][keep].astype(np.int64),
        label=imp["label"][keep].astype(np.float32),
        goal=imp["goal"][keep].astype(np.int64),
        scene=imp["scene"][keep].astype(np.int64),
        event_id=imp["event_id"][keep].astype(np.int64),
    )
    split = _split(samples.target_time, cfg)
    return {name: samples.take(np.flatnonzero(split == s)) for s, name in enumerate(("train", "valid", "test"))}
