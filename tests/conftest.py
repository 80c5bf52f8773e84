"""Shared fixtures: small canonical behaviour logs built in code (seeded), and the real-data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

# Test tensors are tiny: one intra-op thread is faster than two contending ones (5x on a busy 2-core machine).
torch.set_num_threads(1)


def make_log(
    num_users: int = 12,
    events: int = 40,
    num_items: int = 60,
    seed: int = 0,
    impressions: int = 0,
    goals: tuple[str, ...] = ("click",),
    tie_prob: float = 0.2,
) -> pl.DataFrame:
    """A canonical log: users with a variable number of events, 2 taxonomy levels, actions, some same-second ties,
    rows in shuffled file order; optionally labelled impression rows."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 2 * events, size=num_users)
    user = np.repeat(np.arange(100, 100 + num_users), counts)
    n = user.size
    steps = rng.integers(1, 5000, size=n) * (rng.random(n) > tie_prob)  # 0-second steps make ties
    ts = 1_600_000_000 + np.cumsum(steps)
    item = rng.integers(1, num_items + 1, size=n)
    frame = pl.DataFrame(
        {
            "user_id": user,
            "item_id": item * 7,  # raw ids are not dense
            "timestamp": ts,
            "action": rng.choice(["view", "click", "buy"], size=n),
            "cat_1": item % 4,
            "cat_2": item % 13 + 1000,
        }
    )
    if impressions:
        m = impressions * num_users
        imp = pl.DataFrame(
            {
                "user_id": rng.integers(100, 100 + num_users, size=m),
                "item_id": rng.integers(1, num_items + 1, size=m) * 7,
                "timestamp": rng.integers(int(ts.min()), int(ts.max()) + 1, size=m),
                "action": ["impression"] * m,
                "cat_1": rng.integers(0, 4, size=m),
                "cat_2": rng.integers(1000, 1013, size=m),
                "label": rng.integers(0, 2, size=m),
                "goal": rng.choice(list(goals), size=m),
            }
        )
        frame = pl.concat([frame.with_columns(label=pl.lit(None, pl.Int64), goal=pl.lit(None, pl.String)), imp])
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)  # file order is not time order


@pytest.fixture
def tiny_log() -> pl.DataFrame:
    return make_log()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data slices not found at {SHARED_DATA} (they live in ../shared/data beside the repo)")
    return SHARED_DATA


def prepare_two_days(root: Path) -> tuple[pl.DataFrame, Any]:
    """Two day stores under `root` from one log cut in thirds at t1 < t2: day1 (train before t1, valid t1..t2) and
    day2, its ids grown from day1's (`vocab_from`: a new user 500 and new items 8001-8003, item 8003 only after t2),
    training on t1..t2 and validating after t2. Returns the whole log and day 2's protocol."""
    from longrec.data.prepare import prepare
    from longrec.data.protocols import ProtocolConfig

    log = make_log(num_users=30, events=20, seed=9)
    t1, t2 = (int(t) for t in np.quantile(log["timestamp"].to_numpy(), [1 / 3, 2 / 3]))
    end = int(log["timestamp"].max())
    new = pl.DataFrame(
        {"user_id": [500] * 4, "item_id": [8_001, 8_002, 8_001, 8_003], "timestamp": [t2 - 40, t2 - 30, end, end],
         "action": ["view"] * 4, "cat_1": [1] * 4, "cat_2": [1_003] * 4}
    ).cast(log.schema)  # type: ignore[arg-type]  # fmt: skip
    log = pl.concat([log, new])
    prepare(
        log.filter(pl.col("timestamp") < t2), root / "day1", ProtocolConfig.for_protocol("T", split_times=(0, t1, t2))
    )
    second = ProtocolConfig.for_protocol("T", split_times=(t1, t2, end + 1))
    prepare(log, root / "day2", second, vocab_from=root / "day1")
    return log, second
