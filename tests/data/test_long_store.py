"""Long histories on the data side: memory-mapped store, memory per sample, the (g) long-range mechanism, and
(slow) collate at L = 10^5 and training at L = 10^4 with a bounded peak RSS."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.ingest.synthetic import SyntheticConfig, SyntheticLog, generate

# Long-range relevance at a small scale: 600 behaviours per user, only behaviours more than 50 back count.
LONG = SyntheticConfig(
    num_users=40,
    events_per_user=600,
    events_spread=0.0,
    impressions_per_user=10,
    num_items=400,
    num_content_items=600,
    num_categories=20,
    num_spus=60,
    num_content_tags=40,
    mechanisms=("g",),
    g_min_back=50,
    seed=3,
)


@pytest.fixture(scope="module")
def long_log() -> SyntheticLog:
    return generate(LONG)


@pytest.fixture(scope="module")
def long_store(long_log: SyntheticLog, tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    out = tmp_path_factory.mktemp("long") / "store"
    prepare(long_log.log, out, ProtocolConfig.for_protocol("T"))
    return TrajectoryStore.open(out)


def _behaviours(log: pl.DataFrame) -> pl.DataFrame:
    return log.filter(pl.col("label").is_null()).sort("user_id", "timestamp", "event_id")


def test_store_memory_maps_every_trajectory_and_sample_array(long_store: TrajectoryStore) -> None:
    assert long_store.arrays and all(isinstance(a, np.memmap) for a in long_store.arrays.values())
    samples = long_store.samples("train")
    assert all(isinstance(a, np.memmap) for a in samples.arrays().values())


def test_batch_bytes_per_behaviour_is_what_collate_allocates(long_store: TrajectoryStore) -> None:
    samples = long_store.samples("train")
    batch = collate(long_store, samples, np.arange(16), max_history=300)
    B, L = batch.history.shape
    history_bytes = sum(
        v.element_size() * v.numel() for name, v in batch.fields().items() if v.dim() >= 2 and v.shape[1] == L
    )
    assert history_bytes == B * L * long_store.batch_bytes_per_behaviour()
    # 3 taxonomy levels, action/domain/scene, 1 extra id (brand): 8 + 1 + 24 + 24 + 8 + 4 + 8
    assert long_store.batch_bytes_per_behaviour() == 77


def test_configs_without_g_generate_what_they_did_before_g_existed() -> None:
    # The TINY world of tests/ingest/test_synthetic.py; the digest was taken before (g) was added (and equals it after).
    tiny = SyntheticConfig(
        num_users=12,
        events_per_user=60,
        impressions_per_user=6,
        num_items=60,
        num_content_items=90,
        num_industries=3,
        num_categories=8,
        num_spus=16,
        num_content_tags=12,
        num_brands=5,
        ad_fraction=0.35,
        pair_pool=4,
        f_top_k=3,
        span_days=60.0,
        seed=7,
    )
    data = generate(tiny)
    digest = hashlib.sha256(data.log.write_csv().encode())
    digest.update(str(data.truth.select(pl.col("^relevant.*$")).rows()).encode())
    assert digest.hexdigest()[:16] == "43a0cb41fc7c6fca"
    assert "term_g" not in data.truth.columns and "memory_spus" not in data.planted


def test_memories_are_each_users_oldest_behaviours_and_occur_nowhere_else(long_log: SyntheticLog) -> None:
    memory = set(long_log.planted["memory_spus"])
    assert memory, "the memory categories have SPUs"
    behaviours = _behaviours(long_log.log).with_columns(
        rank=pl.int_range(pl.len()).over("user_id"), memory=pl.col("cat_3").is_in(list(memory))
    )
    per_user = behaviours.filter("memory").group_by("user_id").agg(pl.len(), pl.col("rank").max())
    assert per_user.height == LONG.num_users
    assert (per_user["len"] == LONG.g_memories).all() and (per_user["rank"] == LONG.g_memories - 1).all()


@pytest.mark.parametrize("min_back", [LONG.g_min_back, 150])
def test_long_range_term_and_relevant_set_match_a_per_impression_loop(long_log: SyntheticLog, min_back: int) -> None:
    # 150 > the 60 behaviours before the earliest impression: some memories are too recent to count.
    data = long_log if min_back == LONG.g_min_back else generate(dataclasses.replace(LONG, g_min_back=min_back))
    memory = set(data.planted["memory_spus"])
    history = {u: f for (u,), f in _behaviours(data.log).partition_by("user_id", as_dict=True).items()}
    too_recent = 0
    for row in data.truth.iter_rows(named=True):
        h = history[row["user_id"]].filter(pl.col("timestamp") < row["timestamp"])
        same = h.with_row_index().filter(pl.col("cat_3").is_in([row["cat_3"]] if row["cat_3"] in memory else []))
        relevant = same.filter(pl.col("index") < h.height - min_back)["event_id"].to_list()
        too_recent += same.height > len(relevant)
        assert row["relevant_g"] == sorted(relevant)
        assert row["term_g"] == (LONG.weight_g if relevant else 0.0)
        assert row["memory_target"] == (row["cat_3"] in memory)
    assert (too_recent > 0) == (min_back > 60), "the threshold binds exactly when memories can be that recent"
    assert set(data.truth["relevant"].explode().drop_nulls()) == set(data.truth["relevant_g"].explode().drop_nulls())


def test_the_planted_long_range_signal_moves_the_label(long_log: SyntheticLog) -> None:
    truth = long_log.truth.filter("memory_target")
    rate = truth.group_by(pl.col("term_g") > 0).agg(pl.col("label").mean(), pl.len()).sort("term_g")
    assert rate["len"].min() >= 50, rate
    low, high = rate["label"].to_list()
    assert high - low > 0.25, f"label rate without / with a far memory match: {low:.2f} / {high:.2f}"


def test_the_recent_window_holds_no_evidence_and_the_whole_history_does(
    long_log: SyntheticLog, long_store: TrajectoryStore
) -> None:
    truth = long_log.truth.select("event_id", "term_g", "memory_target")
    for split in ("train", "valid", "test"):
        samples = long_store.samples(split)
        rows = pl.DataFrame({"event_id": np.asarray(samples.event_id)}).join(truth, on="event_id", how="left")
        assert rows["term_g"].null_count() == 0, "every sample is a labelled impression"
        memory = rows["memory_target"].to_numpy()
        far = rows["term_g"].to_numpy() > 0
        index = np.arange(len(samples))
        recent = collate(long_store, samples, index, max_history=LONG.g_min_back)
        whole = collate(long_store, samples, index, max_history=10 * LONG.events_per_user)
        same = [
            ((b.history_category[..., -1] == b.target_category[:, None, -1]) & b.history_mask).numpy()  # [B, L]
            for b in (recent, whole)
        ]
        assert memory.any() and far.any()
        assert not same[0][memory].any(), f"{split}: a memory target matches within the last g_min_back behaviours"
        assert same[1][far].any(1).all(), f"{split}: the whole history holds every far memory"
        position = whole.history_position.numpy()[far][same[1][far]]  # relative positions of those matches
        assert (position > LONG.g_min_back).all()


def test_g_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"g_categories \(8\) must be < num_categories \(8\)"):
        dataclasses.replace(LONG, num_categories=8, num_spus=8, g_categories=8)
    with pytest.raises(ValueError, match="g_target_prob must be a probability"):
        dataclasses.replace(LONG, g_target_prob=1.5)
    with pytest.raises(ValueError, match="g_min_back must be a non-negative int"):
        dataclasses.replace(LONG, g_min_back=-1)


# --- slow: L = 10^5 collate, L = 10^4 training ------------------------------------------------------------------------

_TRAIN_CHILD = textwrap.dedent(
    """
    import json, sys
    from longrec.config import load_config
    from longrec.run import train

    store, out, model, aux = sys.argv[1:5]
    sets = [f"model.name={model}", "model.dim=16", "model.max_position=10000", f"model.aux_loss={aux.lower()}",
            "search.method=soft", "search.k=100", f"data.path={store}", "data.max_history=10000",
            "train.batch_size=32", "train.eval_batch_size=32", "train.max_steps=4", "train.epochs=1",
            "train.threads=2", "train.progress=false"]
    metrics = train(load_config(None, sets), out)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(json.dumps({"peak_mb": peak, "steps": metrics["steps"], "auc": metrics["valid"]["auc"]}))
    """
)
TRAIN_PEAK_MB = 2048  # measured 560-590 MB without the aux loss, 840-1030 MB with it (B = 32, L = 10^4, K = 100)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize(("model", "aux"), [("twin", False), ("dare", True)])
def test_training_at_ten_to_the_four_runs_in_bounded_memory(tmp_path: Path, model: str, aux: bool) -> None:
    config = SyntheticConfig(
        num_users=32, events_per_user=12_000, events_spread=0.0, impressions_per_user=8, mechanisms=("a", "g")
    )
    prepare(generate(config).log, tmp_path / "store", ProtocolConfig.for_protocol("T"))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN_CHILD, str(tmp_path / "store"), str(tmp_path / "run"), model, str(aux)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 4
    assert result["peak_mb"] < TRAIN_PEAK_MB, f"{model} (aux {aux}) at L = 10^4: {result}"


@pytest.mark.slow
def test_collate_at_ten_to_the_five_is_bounded_by_the_batch(tmp_path: Path) -> None:
    config = SyntheticConfig(num_users=4, events_per_user=110_000, events_spread=0.0, impressions_per_user=30)
    prepare(generate(config).log, tmp_path / "store", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "store")
    samples = store.samples("test")  # the latest impressions: the longest histories
    index = np.argsort(np.asarray(samples.end))[-8:]  # the 8 longest histories
    batch = collate(store, samples, index, max_history=100_000)
    B, L = batch.history.shape
    assert L == 100_000 and int(batch.history_mask.sum()) == B * L
    nbytes = sum(v.element_size() * v.numel() for v in batch.fields().values())
    per_sample = store.batch_bytes_per_behaviour() * L
    assert per_sample <= nbytes / B < per_sample + 1024, "the batch is L x bytes per behaviour per sample"
    # 8 samples of 10^5 behaviours, 3 levels, action/domain/scene, brand + noise tag: 85 bytes -> 8.5 MB per sample
    assert store.batch_bytes_per_behaviour() == 85
