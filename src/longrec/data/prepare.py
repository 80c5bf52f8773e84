"""`prepare`: a canonical behaviour log -> a trajectory store with dense ids and protocol samples.

Steps: check the log (`check_log`) -> collect it once in streaming mode (narrow dtypes) -> dense ids per field
(vocabulary = sorted unique raw values, id = rank, 0 = padding/unknown; taxonomy levels share one category id
space, each level its own block) -> split labelled impressions from behaviours -> sort behaviours by (user,
timestamp), stably -> item attribute table (most frequent taxonomy path / extra ids per item) -> protocol samples
-> write everything into a temporary directory and rename it into place.

Peak memory is about 3x the collected log; see docs/data.md for the measured figure per million rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.protocols import ProtocolConfig, Trajectories, build_samples
from longrec.data.store import (
    FORMAT_VERSION,
    SAFE_NAME_RULE,
    SPLITS,
    SampleSet,
    TrajectoryStore,
    id_dtype,
    is_safe_name,
    read_vocab,
    split_counts,
    vocab_sha,
    write_manifest,
)
from longrec.files import STORE, check_output, output_directory
from longrec.ingest.schema import DataError, FilterReport, LogSchema, check_log
from longrec.version import __version__

__all__ = ["PrepareResult", "log_schema", "prepare", "vocabulary_columns"]

logger = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What `prepare` wrote: the manifest's counts and every filter, for the CLI to print."""

    out: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        m = self.manifest
        c = m["counts"]
        out = [
            f"prepared {self.out}: {c['users']:,} users, {c['behaviours']:,} behaviours, "
            f"{c['impressions']:,} labelled impressions, protocol {m['protocol']['name']}",
            "samples: " + ", ".join(f"{s} {c['samples'][s]:,} (pos {c['positives'][s]:,})" for s in SPLITS),
        ]
        out += [f"  load: {line}" for line in FilterReport(**_report_args(m["load_report"])).lines()]
        out += [f"  protocol skipped {n:,}: {reason}" for reason, n in m["protocol_report"].items() if n]
        return out


def _report_args(d: dict[str, Any]) -> dict[str, Any]:
    return {"rows_read": d["rows_read"], "dropped": d["dropped"], "unused_columns": d.get("unused_columns", [])}


def _check_vocab_names(extras: tuple[str, ...], source: str) -> None:
    """Refuse extra columns whose names are not safe file names: each is written to vocab/<name>.parquet."""
    unsafe = [name for name in extras if not is_safe_name(name)]
    if unsafe:
        raise DataError(
            f"{source}: column(s) {unsafe} cannot name vocabulary files in the store (vocab/<column>.parquet): "
            f"allowed are {SAFE_NAME_RULE}. Rename them, or keep only the extra columns you need with "
            "extra_fields (--extra-fields)."
        )


def _check_splits(samples: dict[str, SampleSet], protocol: ProtocolConfig, traj: Trajectories, source: str) -> None:
    """Refuse a store with an empty split, naming the split and the protocol filters that emptied it.

    A split that Protocol T gives no share (`split_fractions` 0) is empty on purpose and allowed.
    """
    on_purpose = {s for s, f in zip(SPLITS, protocol.split_fractions, strict=True) if protocol.name == "T" and f == 0}
    if protocol.split_times:  # by times: a split whose window starts after the log's last behaviour holds nothing
        last = int(traj.timestamp.max(initial=0))
        on_purpose = {s for s, start in zip(SPLITS, protocol.split_times, strict=True) if start > last}
    empty = [s for s in SPLITS if len(samples[s]) == 0 and s not in on_purpose]
    if not empty:
        return
    users = int(np.count_nonzero(np.diff(traj.offsets)))

    def relevant(reason: str) -> bool:  # a filter of one split matters only when that split is empty
        named = [s for s in SPLITS if s in reason.split()]
        return not named or any(s in empty for s in named)

    skipped = {reason: n for reason, n in traj.report.items() if n and relevant(reason)}
    filters = "; ".join(
        f"{reason}: {n:,}" + (f" of {users:,} users" if reason.startswith("users ") else "")
        for reason, n in skipped.items()
    )
    fixes = []
    if protocol.name == "T" and any(len(samples[s]) for s in SPLITS):  # samples exist, the time split left some out
        fixes.append(
            f"give {' and '.join(repr(s) for s in empty)} a larger share of split_fractions (now "
            f"{protocol.split_fractions}: samples are split at time quantiles, so with few samples or tied times a "
            "small share can hold none; a share of 0 leaves a split empty on purpose)"
        )
    else:
        for knob in ("min_behaviours", "min_history"):
            floor = 3 if knob == "min_behaviours" and protocol.name == "B" else 0  # B needs 3 behaviours per user
            value = getattr(protocol, knob)
            if value > floor and any(knob in reason for reason in skipped):
                at_least = f", at least {floor} for protocol B" if floor else ""
                fixes.append(f"lower {knob} (now {value}{at_least}; --set {knob}=N)")
    raise DataError(
        f"{source}: protocol {protocol.name} cut no samples for split(s) {', '.join(repr(s) for s in empty)} "
        f"({', '.join(f'{s} {len(samples[s]):,}' for s in SPLITS)}) from {users:,} users with {traj.user.size:,} "
        f"behaviours. Filters that skipped data: {filters or 'none'}. To fix it, "
        + ", or ".join([*fixes, "prepare a larger log"])
        + ". Nothing was written."
    )


def _dense(
    frame: pl.DataFrame, column: str, offset: int = 0, known: pl.Series | None = None
) -> tuple[pl.Series, pl.Series]:
    """Dense ids (offset + 1..n in sorted order of raw values, 0 for null), Int32 or Int64 if the ids need it, + the
    vocabulary (raw values in id order).

    With `known` (a previous store's vocabulary of this column, `prepare(vocab_from=...)`), the vocabulary starts with
    `known` in its order, so every known value keeps its id (present in this log or not), and the values `known`
    lacks follow it, sorted: a vocabulary grows by appending, never by re-numbering."""
    col = frame[column]
    if known is not None and known.dtype != col.dtype:
        col = col.cast(known.dtype, strict=False)  # Int32 vs Int64 ids; values that do not cast are checked below
        if col.null_count() > frame[column].null_count():
            raise DataError(
                f"column {column!r} holds {frame[column].dtype} values that the previous vocabulary ({known.dtype}) "
                f"cannot hold (e.g. {frame[column].filter(col.is_null() & frame[column].is_not_null())[0]!r}): the "
                "log does not continue that store's ids. Prepare without --vocab-from."
            )
    vocab = col.drop_nulls().unique().sort()
    if known is not None:
        vocab = pl.concat([known, vocab.filter(~vocab.is_in(known.implode()))])
    if vocab.len() == 0:
        return pl.Series(column, np.zeros(len(col), dtype=np.int32)), vocab.rename("raw")
    dtype = pl.Int32 if id_dtype(offset + vocab.len(), np.int32) == np.int32 else pl.Int64
    if known is None:
        ids = (col.rank("dense").cast(dtype) + offset).fill_null(0).cast(dtype)
    else:
        table = pl.DataFrame({"raw": vocab, "id": np.arange(offset + 1, offset + 1 + vocab.len())})
        joined = pl.DataFrame({"raw": col}).join(table, on="raw", how="left", maintain_order="left")
        ids = joined["id"].fill_null(0).cast(dtype)
    return ids.rename(column), vocab.rename("raw")


def _known_vocabularies(root: Path, names: list[str], source: str) -> dict[str, pl.Series]:
    """The vocabularies of the store at `root` for `names`, checked to be the same set of columns."""
    have = sorted(p.stem for p in (root / "vocab").glob("*.parquet"))
    if sorted(names) != have:
        raise DataError(
            f"{source}: --vocab-from {root} has vocabularies {have}, but this log gives {sorted(names)}: a store "
            "continues another's ids only for the same columns. Load the log with the same options (extra fields, "
            "taxonomy) or prepare without --vocab-from."
        )
    return {name: read_vocab(root, name) for name in names}


def _check_taxonomy_growth(
    vocabs: dict[str, pl.Series], known: dict[str, pl.Series], taxonomy: tuple[str, ...]
) -> None:
    """Taxonomy levels share one id space, level m's block after levels 1 .. m-1: only the last level may grow
    without moving the ids of the levels after it."""
    for name in taxonomy[:-1]:
        added = vocabs[name].len() - known[name].len()
        if added:
            shown = ", ".join(repr(v) for v in vocabs[name].tail(added).head(3).to_list())
            raise DataError(
                f"taxonomy level {name} gains {added:,} value(s) over the previous vocabulary (e.g. {shown}); its ids "
                f"are followed by the blocks of {', '.join(taxonomy[taxonomy.index(name) + 1 :])}, so growing it "
                "would re-number them. Only the last taxonomy level can grow; prepare without --vocab-from."
            )


def log_schema(lazy: pl.LazyFrame, source: str, extra_fields: tuple[str, ...] | None) -> LogSchema:
    """The checked schema of the log `prepare` reads, with the extra id columns it keeps (see `prepare`)."""
    # Default: every extra id column except `source_category`, a domain's raw category that taxonomy mapping
    # (longrec.ingest.unify) has already turned into cat_*; embedding it again would duplicate the taxonomy.
    inferred = LogSchema.infer(lazy.collect_schema().names())
    extras = tuple(e for e in inferred.extra if e != "source_category") if extra_fields is None else tuple(extra_fields)
    unknown = [e for e in extras if e not in inferred.extra]
    if unknown:
        raise ValueError(
            f"extra_fields {unknown} are not extra columns of {source}. Its extra columns: {inferred.extra}."
        )
    _check_vocab_names(extras, source)  # before the log is read: each becomes vocab/<name>.parquet
    schema = check_log(lazy, source)
    return LogSchema(
        taxonomy_levels=schema.taxonomy_levels,
        categorical=schema.categorical,
        extra=extras,
        has_label=schema.has_label,
        has_goal=schema.has_goal,
        has_event_id=schema.has_event_id,
    )


def vocabulary_columns(schema: LogSchema) -> tuple[list[str], list[str]]:
    """The id columns `prepare` gives a vocabulary: (flat ones, taxonomy levels in order)."""
    flat = ["user_id", "item_id", *schema.categorical, *schema.extra, *(["goal"] if schema.has_goal else [])]
    return flat, list(schema.taxonomy)


def _mode_table(keys: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """For each key in [0, size): the most frequent row of `values` [N, W] (ties: smallest row); zeros if none."""
    W = values.shape[1]
    out = np.zeros((size, W), dtype=values.dtype)  # [V, W]
    if W == 0 or keys.size == 0:
        return out
    frame = pl.DataFrame({"k": keys, **{f"v{j}": values[:, j] for j in range(W)}})
    cols = [f"v{j}" for j in range(W)]
    best = (
        frame.group_by(["k", *cols])
        .len()
        .sort(["k", "len", *cols], descending=[False, True] + [False] * W)
        .unique("k", keep="first", maintain_order=True)
    )
    out[best["k"].to_numpy()] = best.select(cols).to_numpy()
    return out


def prepare(
    frame: pl.LazyFrame | pl.DataFrame,
    out: str | Path,
    protocol: ProtocolConfig,
    source: str = "log",
    load_report: FilterReport | None = None,
    extra_fields: tuple[str, ...] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    force: bool = False,
    allow_empty_splits: bool = False,
    vocab_from: str | Path | None = None,
    vocabularies: dict[str, pl.Series] | None = None,
) -> PrepareResult:
    """Prepare a canonical behaviour log into a trajectory store with samples.

    Args:
        frame: the log with canonical columns (see `longrec.ingest.schema`).
        out: the store directory: new, empty, or a previous store (replaced atomically, only with `force`).
        protocol: which samples to cut (`ProtocolConfig.for_protocol('A')`, ...).
        source: the log's name, quoted in errors and the manifest.
        load_report: rows the loader filtered, recorded in the manifest.
        extra_fields: extra id columns to keep; None keeps every extra column of the schema but `source_category`.
        extra_manifest: more JSON-ready manifest sections, e.g. {"taxonomy_coverage": ...} from
            `longrec.ingest.unify`; a key that `prepare` writes itself is a ValueError.
        force: replace `out` when it holds a previous store (never a folder holding anything else).
        allow_empty_splits: write the store even when the protocol cut no samples for a split (property tests on
            tiny random logs); such a store cannot train or evaluate on that split. A Protocol T split whose
            `split_fractions` share is 0 is empty on purpose and always allowed.
        vocab_from: a previous store whose ids this one continues (day-by-day training, docs/incremental.md): every
            vocabulary starts with that store's, in its order, and the values it lacks are appended (sorted), so old
            ids keep their numbers and a model trained on it can grow its tables (`longrec train --continue-from`).
            The manifest records the growth (`vocab_growth`: the parent's sha, the values added per vocabulary, and
            every ancestor's sha and vocabulary lengths).
        vocabularies: fixed vocabularies (raw values in id order) for every id column, e.g. those of the whole log
            when this is one user-hash shard of it (`longrec.data.shards`): ids are taken from them, so every shard
            numbers ids alike. They must hold every value of this log (values they lack are appended, as with
            `vocab_from`); with `vocab_from` too, they must start with that store's vocabularies.

    Returns:
        The written manifest, with counts and every filter.

    Raises:
        DataError: the log fails `check_log`; an extra column's name is not a safe file name; (unless
            `allow_empty_splits`) the protocol cut no samples for a split: the message names the split, the filters
            that skipped data and what to change; or, with `vocab_from`, the log has other vocabularies than that
            store, ids of another type, or new values in a taxonomy level other than the last (which would re-number
            the levels after it). Nothing is written then.

    Example:
        >>> from longrec.ingest import load_log  # doctest: +SKIP
        >>> log = load_log("UserBehavior.csv", "taobao", actions=("pv",))  # doctest: +SKIP
        >>> protocol = ProtocolConfig.for_protocol("A")
        >>> prepare(log.frame, "data/taobao", protocol, load_report=log.report)  # doctest: +SKIP
    """
    started = time.perf_counter()
    out = Path(out)
    check_output(out, STORE, force)  # before any work: a refused --out costs nothing
    lazy = frame.lazy()
    schema = log_schema(lazy, source, extra_fields)
    extras = schema.extra
    log = lazy.select(schema.columns).collect(engine="streaming")
    report = load_report or FilterReport(rows_read=log.height)
    logger.info("collected %d rows from %s in %.1fs", log.height, source, time.perf_counter() - started)

    # Dense ids. Categories: one id space, level m occupying its own block, so a level-1 and a level-2 node with the
    # same raw id stay different categories.
    vocabs: dict[str, pl.Series] = {}
    encoded: dict[str, pl.Series] = {}
    max_id: dict[str, int] = {}  # largest dense id of each column: its stored dtype must hold it
    flat = tuple(vocabulary_columns(schema)[0])
    parent = TrajectoryStore.open(vocab_from) if vocab_from is not None else None
    inherited = _known_vocabularies(parent.root, [*flat, *schema.taxonomy], source) if parent is not None else {}
    known = dict(inherited) if vocabularies is None else {n: vocabularies[n] for n in [*flat, *schema.taxonomy]}
    for name in flat:
        encoded[name], vocabs[name] = _dense(log, name, known=known.get(name))
        max_id[name] = vocabs[name].len()
    cat_offset = 0
    for name in schema.taxonomy:
        encoded[name], vocabs[name] = _dense(log, name, offset=cat_offset, known=known.get(name))
        cat_offset += vocabs[name].len()
        max_id[name] = cat_offset
    growth: dict[str, Any] = {}
    if parent is not None:
        _check_taxonomy_growth(vocabs, inherited, schema.taxonomy)
        lengths = {name: inherited[name].len() for name in sorted(inherited)}
        growth = {
            "from": {"source": str(parent.manifest.get("source", "")), "vocab_sha": parent.manifest["vocab_sha"]},
            "added": {name: vocabs[name].len() - lengths[name] for name in sorted(inherited)},
            # parent first: a run trained on any of these stores can continue on this one
            "ancestors": [
                {"vocab_sha": parent.manifest["vocab_sha"], "lengths": lengths},
                *parent.manifest.get("vocab_growth", {}).get("ancestors", []),
            ],
        }
    M, E = schema.taxonomy_levels, len(extras)
    N_all = log.height

    def matrix(names: tuple[str, ...]) -> np.ndarray:
        if not names:
            return np.zeros((N_all, 0), dtype=np.int32)
        dtype = id_dtype(max(max_id[n] for n in names), np.int32)
        return np.stack([encoded[n].to_numpy() for n in names], axis=1).astype(dtype)  # [N, W]

    user = encoded["user_id"].to_numpy().astype(np.int64)
    item = encoded["item_id"].to_numpy().astype(np.int64)
    ts = log["timestamp"].cast(pl.Int64).to_numpy()
    category, extra = matrix(schema.taxonomy), matrix(extras)
    small = {c: encoded[c].to_numpy().astype(id_dtype(max_id[c], np.int16)) for c in schema.categorical}
    is_imp = log["label"].is_not_null().to_numpy() if schema.has_label else np.zeros(N_all, dtype=bool)
    event_id = log["event_id"].cast(pl.Int64).fill_null(-1).to_numpy() if schema.has_event_id else np.full(N_all, -1)
    label = log["label"].to_numpy() if schema.has_label else None
    del log

    # Behaviours sorted by (user, timestamp); stable, so ties keep their file order.
    beh = np.flatnonzero(~is_imp)
    order = beh[np.lexsort((ts[beh], user[beh]))]
    U, V = vocabs["user_id"].len() + 1, vocabs["item_id"].len() + 1
    offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(user[order], minlength=U), out=offsets[1:])
    item_count = np.bincount(item[order], minlength=V).astype(np.int64)
    # Item attributes for negatives (and impressions without a path): the most frequent (path, extras) per item.
    attrs = _mode_table(item, np.concatenate([category, extra], axis=1), V)
    item_category, item_extra = attrs[:, :M].astype(category.dtype), attrs[:, M:].astype(extra.dtype)
    traj = Trajectories(
        offsets=offsets,
        user=user[order],
        item=item[order],
        timestamp=ts[order],
        extra=extra[order],
        scene=small["scene"][order].astype(np.int64) if "scene" in small else np.zeros(order.size, np.int64),
        event_id=event_id[order],
        item_category=item_category,
        item_extra=item_extra,
        item_count=item_count,
    )
    imp = np.flatnonzero(is_imp)
    if imp.size:
        assert label is not None
        traj.impressions = {
            "user": user[imp],
            "item": item[imp],
            "timestamp": ts[imp],
            "label": label[imp].astype(np.float32),
            "goal": encoded["goal"].to_numpy()[imp].astype(np.int64) if schema.has_goal else np.zeros(imp.size, int),
            "scene": small["scene"][imp].astype(np.int64) if "scene" in small else np.zeros(imp.size, np.int64),
            "category": category[imp],
            "extra": extra[imp],
            "event_id": event_id[imp],
        }
    samples = build_samples(traj, protocol)
    if not allow_empty_splits:
        _check_splits(samples, protocol, traj, source)  # an empty split would fail training an epoch later

    with output_directory(out, STORE, force) as tmp:
        (tmp / "trajectories").mkdir()
        np.save(tmp / "trajectories" / "offsets.npy", offsets)
        arrays: dict[str, np.ndarray] = {"item": item[order].astype(id_dtype(V - 1, np.int32)), "timestamp": ts[order]}
        if M:
            arrays["category"] = category[order]
        if E:
            arrays["extra"] = extra[order]
        arrays.update({c: v[order] for c, v in small.items()})
        if schema.has_event_id:
            arrays["event_id"] = event_id[order]
        for name, value in arrays.items():
            np.save(tmp / "trajectories" / f"{name}.npy", np.ascontiguousarray(value))
        (tmp / "items").mkdir()
        np.save(tmp / "items" / "category.npy", item_category)
        np.save(tmp / "items" / "extra.npy", item_extra)
        np.save(tmp / "items" / "count.npy", item_count)
        (tmp / "vocab").mkdir()
        for name, vocab in vocabs.items():
            pl.DataFrame({"raw": vocab}).write_parquet(tmp / "vocab" / f"{name}.parquet")
        for split, sample_set in samples.items():
            sample_set.save(tmp / "samples" / split)
        sizes = {
            "num_users": U,
            "num_items": V,
            "num_categories": cat_offset + 1,
            "taxonomy_levels": M,
            "num_actions": vocabs["action"].len() + 1 if "action" in vocabs else 0,
            "num_domains": vocabs["domain"].len() + 1 if "domain" in vocabs else 0,
            "num_scenes": vocabs["scene"].len() + 1 if "scene" in vocabs else 0,
            "num_goals": vocabs["goal"].len() + 1 if "goal" in vocabs else 1,
            "num_extra": [vocabs[e].len() + 1 for e in extras],
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "longrec_version": __version__,
            "source": source,
            "schema": asdict(schema),
            "fields": sorted(arrays),
            "extra_fields": list(extras),
            "sizes": sizes,
            "vocab_sha": vocab_sha(tmp / "vocab"),
            "counts": {
                "users": int(np.count_nonzero(np.diff(offsets))),
                "behaviours": int(order.size),
                "impressions": int(imp.size),
                **split_counts(samples, dict.fromkeys(SPLITS, source)),
            },
            "protocol": asdict(protocol),
            "load_report": report.to_dict(),
            "protocol_report": dict(traj.report),
            "seconds": round(time.perf_counter() - started, 2),
            **({"vocab_growth": growth} if growth else {}),
        }
        clash = sorted(set(extra_manifest or {}) & set(manifest))
        if clash:
            raise ValueError(f"extra_manifest keys {clash} clash with the manifest's own keys; rename them.")
        manifest.update(extra_manifest or {})
        write_manifest(tmp, manifest)
    logger.info("wrote %s in %.1fs", out, time.perf_counter() - started)
    return PrepareResult(out=out, manifest=manifest)
