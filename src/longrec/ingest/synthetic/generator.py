"""`generate`: chunks of users -> events -> planted mechanisms -> labels -> the log, its ground truth and metadata.

Users are generated in chunks (at most ~1M behaviours each, which bounds the memory at 10^5 events per user), each
with its own random stream: `behaviour.generate_events`, then the function of every mechanism that is on
(`mechanisms.MECHANISMS`, registry order). Their terms are summed; the bias is calibrated so that the mean
probability equals `target_positive_rate`; labels are Bernoulli draws. `SyntheticLog` holds the frames and writes
them. Shapes: N behaviours and P impressions (of a chunk, or of the whole log after concatenation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from longrec.files import SYNTHETIC, dumps_json, output_directory
from longrec.ingest.synthetic.behaviour import ACTIONS, DOMAINS, SCENES, generate_events
from longrec.ingest.synthetic.config import SyntheticConfig
from longrec.ingest.synthetic.mechanisms import ALWAYS_IN_TRUTH, DAY, KEY_LIMIT, MECHANISMS
from longrec.ingest.synthetic.world import World, build_world, taxonomy_map

__all__ = ["SyntheticLog", "generate"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_CHUNK_EVENTS = 1_000_000  # behaviours generated at once; bounds memory for 10^5-event users


@dataclass
class _Chunk:
    """Rows of one chunk of users in log order, and its impressions (in log order) with their label terms."""

    columns: dict[str, npt.NDArray[Any]]  # each [rows]
    impression: dict[str, npt.NDArray[Any]]  # each [P]
    pairs: dict[str, tuple[IntArray, IntArray]]  # mechanism -> (impression index [n], behaviour event_id [n])
    letters: tuple[str, ...]  # the mechanisms with term_* and relevant_* truth columns, registry order
    mechanism_columns: tuple[str, ...]  # log columns the mechanisms planted (e.g. (c)'s noise_tag)
    truth_columns: tuple[str, ...]  # truth columns the mechanisms added (e.g. (g)'s memory_target)


def _generate_chunk(
    cfg: SyntheticConfig,
    world: World,
    counts: IntArray,
    user_offset: int,
    row_offset: int,
    rng: np.random.Generator,
) -> _Chunk:
    """Behaviours, impressions and label terms of users `user_offset + 1 ..` with `counts` behaviours each."""
    e = generate_events(cfg, world, counts, row_offset, rng)
    N, P = e.num_behaviours, e.num_impressions
    planted = {m: mechanism.plant(cfg, world, e, rng) for m, mechanism in MECHANISMS.items() if cfg.on(m)}
    letters = tuple(m for m in MECHANISMS if m in ALWAYS_IN_TRUTH or (m in planted and planted[m].term is not None))
    empty = np.zeros(0, np.int64)
    terms: dict[str, FloatArray] = {m: np.zeros(P) for m in letters}  # each [P], zero when off
    pairs: dict[str, tuple[IntArray, IntArray]] = dict.fromkeys(letters, (empty, empty))
    for m, planted_m in planted.items():
        if planted_m.term is not None:
            terms[m], pairs[m] = planted_m.term, planted_m.relevant or (empty, empty)
    mechanism_columns = {name: v for p in planted.values() for name, v in p.log_columns.items()}  # each [N + P]
    truth_columns = {name: v for p in planted.values() for name, v in p.truth_columns.items()}  # each [P]
    imp_brand = world.brand_of_spu[e.imp_cat3]  # [P]

    # Columns in log order: generated rows (behaviours, then impressions) permuted by log_order.
    def merged(behaviour: npt.NDArray[Any], impression: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.r_[behaviour, impression][e.log_order]  # [N + P]

    columns: dict[str, npt.NDArray[Any]] = {
        "user_id": user_offset + 1 + merged(e.beh_user, e.imp_user),
        "item_id": merged(e.beh_item, e.imp_item),
        "timestamp": merged(e.beh_time, e.imp_time),
        "domain": merged((~e.is_ad).astype(np.int64), np.zeros(P, np.int64)),
        "scene": merged(e.beh_scene, e.imp_scene),
        "action": merged(e.beh_action, np.full(P, ACTIONS.index("impression"), np.int64)),
        "cat_1": world.industry_of_category[merged(e.beh_cat2, e.imp_cat2)],
        "cat_2": merged(e.beh_cat2, e.imp_cat2),
        "cat_3": merged(e.beh_cat3, e.imp_cat3),
        "brand": merged(e.beh_brand, imp_brand),
        "source": merged(e.beh_source, e.imp_cat3),
        "goal": merged(np.full(N, -1, np.int64), e.imp_goal),
        **mechanism_columns,
        "event_id": row_offset + np.arange(N + P, dtype=np.int64),
    }
    impression = {
        "event_id": e.imp_event,
        "user_id": user_offset + 1 + e.imp_user,
        "timestamp": e.imp_time,
        "goal": e.imp_goal,
        "item_id": e.imp_item,
        "cat_2": e.imp_cat2,
        "cat_3": e.imp_cat3,
        "tau_days": e.tau_days,
        **{f"term_{m}": terms[m] for m in letters},
        **truth_columns,
    }
    return _Chunk(columns, impression, pairs, letters, tuple(mechanism_columns), tuple(truth_columns))


# --------------------------------------------------------------------------------------------------------------------
# Assembly: bias calibration, labels, frames.


def _calibrate_bias(score: FloatArray, rate: float) -> float:
    """The bias b with mean(sigmoid(b + score)) = rate (bisection; the mean is increasing in b)."""
    low, high = -50.0, 50.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + score)))) < rate:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _list_column(name: str, query: IntArray, values: IntArray, num_rows: int) -> pl.Series:
    """A list[int64] column from (row, value) pairs, values sorted within each row. -> Series [num_rows]."""
    order = np.lexsort((values, query))  # [n]
    offsets = np.r_[0, np.cumsum(np.bincount(query, minlength=num_rows))].astype(np.int64)  # [num_rows + 1]
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[order].astype(np.int64)))
    return pl.Series(name, array).cast(pl.List(pl.Int64))


def _chunks(counts: IntArray, radix_bound: int, max_category: int) -> list[tuple[int, int]]:
    """[start, stop) user ranges with at most _CHUNK_EVENTS behaviours (or one user) and no key overflow."""
    max_users = max(1, KEY_LIMIT // (radix_bound * (max_category + 1)) - 1)
    bounds: list[tuple[int, int]] = []
    start, events = 0, 0
    for user, count in enumerate(counts.tolist()):
        if user > start and (events + count > _CHUNK_EVENTS or user - start >= max_users):
            bounds.append((start, user))
            start, events = user, 0
        events += count
    bounds.append((start, counts.shape[0]))
    return bounds


def _code_to_string(column: str, names: Sequence[str]) -> pl.Expr:
    mapping = dict(enumerate(names))
    return pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.String)


@dataclass
class SyntheticLog:
    """A generated log, its ground truth, the taxonomy mapping table, the config and the planted parameters."""

    log: pl.DataFrame  # canonical behaviour log + labelled impression rows, sorted by (user_id, timestamp)
    truth: pl.DataFrame  # one row per labelled impression: logit, prob, terms, relevant event ids
    taxonomy_map: pl.DataFrame  # domain, source_category -> unified cat_1, cat_2, cat_3 (null where unreachable)
    config: SyntheticConfig
    planted: dict[str, Any] = field(default_factory=dict)  # bias, τ per category, goal factors, pairs, qualities
    stats: dict[str, Any] = field(default_factory=dict)  # sizes, positive rates, term spreads, generation time

    def metadata(self) -> dict[str, Any]:
        """What `synthetic.json` holds: config, mechanism docs, planted parameters and stats."""
        return {
            "config": asdict(self.config),
            "mechanisms": {m: {"on": self.config.on(m), "doc": mechanism.doc} for m, mechanism in MECHANISMS.items()},
            "item_ids": {
                "ad": [1, self.config.num_items],
                "content": [self.config.num_items + 1, self.config.num_items + self.config.num_content_items],
            },
            "planted": self.planted,
            "stats": self.stats,
        }

    def write(self, out_dir: Path | str, force: bool = False) -> None:
        """Write log.parquet, truth.parquet, taxonomy_map.csv and synthetic.json into `out_dir`, atomically.

        `out_dir` must be new, empty, or a previous synthetic log (replaced only with `force`); the files go to a
        temporary sibling folder renamed into place at the end (`longrec.files.output_directory`), so a failure leaves
        no partial folder and the old one intact.

        Raises:
            OutputError: `out_dir` is a file, holds anything else, or is a previous log and `force` is False.
        """
        with output_directory(out_dir, SYNTHETIC, force) as tmp:
            self.log.write_parquet(tmp / "log.parquet")
            self.truth.write_parquet(tmp / "truth.parquet")
            self.taxonomy_map.write_csv(tmp / "taxonomy_map.csv")
            (tmp / "synthetic.json").write_text(dumps_json(self.metadata()))


def _track(items: Sequence[tuple[int, int]], progress: bool) -> Iterable[tuple[int, int]]:
    if not progress:
        return items
    from rich.progress import track  # only when asked: keeps the import light

    return track(items, description="synthetic users", transient=True)


def generate(config: SyntheticConfig, progress: bool = False) -> SyntheticLog:
    """Generate a synthetic log with the planted mechanisms of `config` (see the module docstring).

    Args:
        config: every knob, the seed included; the same config gives identical frames.
        progress: show a progress bar over user chunks (stderr).

    Returns:
        The log (canonical columns, behaviours and labelled impressions), the ground truth per impression, the
        taxonomy mapping table, the config, the planted parameters and summary stats.

    Example:
        >>> data = generate(SyntheticConfig(num_users=10, events_per_user=50, impressions_per_user=4))
        >>> data.truth.height
        40
    """
    started = time.perf_counter()
    world_seed, users_seed, label_seed = np.random.SeedSequence(config.seed).spawn(3)
    world = build_world(config, np.random.default_rng(world_seed))
    user_rng = np.random.default_rng(users_seed)
    spread = user_rng.uniform(1 - config.events_spread, 1 + config.events_spread, config.num_users)  # [users]
    counts = np.maximum(1, np.rint(config.events_per_user * spread)).astype(np.int64)  # [users] behaviours per user
    radix_bound = int(config.span_days * DAY) + 10**9  # sessions may spill past the span; generous margin
    bounds = _chunks(counts, radix_bound, max(config.num_spus, config.num_categories))
    chunk_seeds = users_seed.spawn(len(bounds))
    parts: list[_Chunk] = []
    row_offset = 0
    for index, (start, stop) in enumerate(_track(bounds, progress)):
        rng = np.random.default_rng(chunk_seeds[index])
        parts.append(_generate_chunk(config, world, counts[start:stop], start, row_offset, rng))
        row_offset += int(parts[-1].columns["event_id"].shape[0])
        logger.debug("synthetic: users %d..%d done, %d rows so far", start, stop, row_offset)

    # Labels: bias calibrated on the summed terms, then Bernoulli draws.
    imp = {k: np.concatenate([p.impression[k] for p in parts]) for k in parts[0].impression}  # each [P]
    P = imp["event_id"].shape[0]
    letters = parts[0].letters  # "abdf", plus "g" when on
    score = sum((imp[f"term_{m}"] for m in letters), start=np.zeros(P))  # [P]
    bias = _calibrate_bias(score, config.target_positive_rate)
    logit = bias + score  # [P]
    prob = 1.0 / (1.0 + np.exp(-logit))  # [P]
    label = (np.random.default_rng(label_seed).random(P) < prob).astype(np.int8)  # [P]

    # The log frame: codes -> strings, 0 sentinels -> null.
    raw = {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns}  # each [rows]
    is_impression = raw["action"] == ACTIONS.index("impression")  # [rows]
    label_column = np.full(is_impression.shape[0], -1, np.int8)  # [rows]
    label_column[is_impression] = label  # impressions are in event_id order in both
    frame = pl.DataFrame({**raw, "label": label_column})
    nullable = (pl.col(c).replace(0, None) for c in ("cat_3", "brand"))
    log = frame.select(
        "user_id",
        "item_id",
        "timestamp",
        _code_to_string("domain", DOMAINS),
        _code_to_string("scene", SCENES),
        _code_to_string("action", ACTIONS),
        "cat_1",
        "cat_2",
        *nullable,
        *parts[0].mechanism_columns,
        pl.concat_str(_code_to_string("domain", DOMAINS), pl.lit(":"), pl.col("source").cast(pl.String)).alias(
            "source_category"
        ),
        "event_id",
        pl.col("label").replace(-1, None),
        _code_to_string("goal", config.goals),
    )

    # Ground truth: per-mechanism (impression, event_id) pairs, re-based to global impression indices.
    joined: dict[str, tuple[IntArray, IntArray]] = {}
    first_impression = np.cumsum([0] + [p.impression["event_id"].shape[0] for p in parts])  # [chunks + 1]
    for m in letters:
        joined[m] = (
            np.concatenate([p.pairs[m][0] + first_impression[i] for i, p in enumerate(parts)]).astype(np.int64),
            np.concatenate([p.pairs[m][1] for p in parts]).astype(np.int64),
        )
    union_key = np.sort(np.concatenate([q * row_offset + e for q, e in joined.values()]))  # [n] (impression, event)
    union_key = union_key[np.r_[True, union_key[1:] != union_key[:-1]]] if union_key.size else union_key  # deduped
    truth = pl.DataFrame(
        {
            "event_id": imp["event_id"],
            "user_id": imp["user_id"],
            "timestamp": imp["timestamp"],
            "goal": pl.Series([config.goals[g] for g in imp["goal"].tolist()], dtype=pl.String),
            "item_id": imp["item_id"],
            "cat_2": imp["cat_2"],
            "cat_3": imp["cat_3"],
            "tau_days": imp["tau_days"],
            "logit": logit,
            "prob": prob,
            "label": label,
            **{f"term_{m}": imp[f"term_{m}"] for m in letters},
            **{name: imp[name] for name in parts[0].truth_columns},
        }
    ).with_columns(
        *(_list_column(f"relevant_{m}", *joined[m], P) for m in letters),
        _list_column("relevant", union_key // max(row_offset, 1), union_key % max(row_offset, 1), P),
    )

    num_ad = int((log["domain"] == "ad").sum()) - P
    positives = float(label.mean()) if P else 0.0
    planted: dict[str, Any] = {
        "bias": bias,
        "tau_days_by_category": {int(c): float(world.tau_days[c]) for c in range(1, config.num_categories + 1)},
        "goal_decay_factors": {g: float(f) for g, f in zip(config.goals, world.goal_factor, strict=True)},
        "pairs_by_category": {
            int(c): [int(world.pair_first[c]), int(world.pair_second[c])] for c in range(1, config.num_categories + 1)
        },
        "item_quality": world.quality[1:].tolist(),  # index i = ad item i + 1
    }
    if config.on("g"):
        planted["memory_spus"] = world.memory_spus.tolist()
    if config.on("h"):  # π_z(c) per scene name; index c = category c, index 0 unused
        planted["scene_category_map"] = {scene: world.scene_category_map[z].tolist() for z, scene in enumerate(SCENES)}
    stats: dict[str, Any] = {
        "num_users": config.num_users,
        "num_rows": log.height,
        "num_behaviours": log.height - P,
        "num_ad_behaviours": num_ad,
        "num_content_behaviours": log.height - P - num_ad,
        "num_impressions": P,
        "events_per_user": {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())},
        "positive_rate": positives,
        "positive_rate_by_goal": {
            g: float(label[imp["goal"] == i].mean()) if (imp["goal"] == i).any() else None
            for i, g in enumerate(config.goals)
        },
        "term_std": {m: float(imp[f"term_{m}"].std()) for m in letters},
        "relevant_mean_size": {
            **{m: float(joined[m][0].shape[0] / max(P, 1)) for m in letters},
            "union": float(union_key.shape[0] / max(P, 1)),
        },
        "pair_prevalence": float((imp["term_d"] != 0).mean()) if config.on("d") and P else None,
        "chunks": len(bounds),
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("synthetic: %d rows, %d impressions, positive rate %.3f", log.height, P, positives)
    return SyntheticLog(
        log=log,
        truth=truth,
        taxonomy_map=taxonomy_map(config, world),
        config=config,
        planted=planted,
        stats=stats,
    )
