"""`prepare --shards N`: a log split into user-hash shards, each prepared independently into its own store.

Layout of OUT (docs/data.md, "Preparation at scale"):

    OUT/shard-00000-of-00004/   a prepared store (manifest.json, trajectories/, samples/, vocab/, items/)
    OUT/shard-00001-of-00004/
    ...
    OUT/shards.json             the top-level manifest: the shards, their counts, the shared settings; written
                                (atomically) last, by whichever call finds every shard present

A user belongs to shard `int.from_bytes(sha1(str(user_id).encode()).digest()[:8], "big") % N` (`shard_of`): the
same on every machine and Python version (never Python's salted `hash()`), so a job array of N calls
(`--shard I`) partitions the users without talking to each other.

What makes the shards one data set: every call first reads the log's id columns once (`plan_shards`) and derives
what must be shared from the whole log, then prepares its shard against it:

- the **vocabularies** of the whole log (sorted unique raw values per id column, or a `--vocab-from` store's
  followed by the values it lacks), so an id means the same item, category, user, ... in every shard: every
  shard's `vocab/` is the same (same `vocab_sha`), and equals the unsharded store's;
- under **Protocol T with split_fractions**, the split times of the whole log: the time quantiles are computed over
  every user's targets (with the same min_history / max_targets_per_user filters as `build_samples`), turned into
  `split_times` and given to every shard, so a target lands in the same split as in the unsharded store;
- the protocol **seed** of shard I is derived from (seed, I), so shards do not draw the same random stream.

Trajectories, impressions and positives are per user and equal the unsharded store's. Sampled negatives (Protocols
A, B and T without labels) are drawn within each shard, from the shard's item frequencies and its seed: they differ
from the unsharded store's draws (same distribution in expectation, since users are hashed at random). The item
tables (`items/`: counts and the most frequent taxonomy path per item) count the shard's behaviours only; their
counts sum to the unsharded ones.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.prepare import PrepareResult, log_schema, prepare, vocabulary_columns
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SPLITS, TrajectoryStore, read_vocab
from longrec.files import STORE, OutputError, OutputKind, check_output, read_json_object, write_json
from longrec.ingest.schema import DataError, FilterReport, LogSchema

__all__ = [
    "MAX_SHARDS",
    "SHARDS",
    "SHARD_HASH",
    "ShardPlan",
    "check_out",
    "check_shard_args",
    "plan_shards",
    "prepare_shards",
    "shard_name",
    "shard_of",
    "write_shards_manifest",
]

MAX_SHARDS = 99_999  # shard folder names have 5 digits
SHARD_HASH = 'int.from_bytes(sha1(str(user_id).encode("utf-8")).digest()[:8], "big") % N'
SHARDS_FORMAT = 1
SHARDS = OutputKind(
    "sharded store",
    "longrec prepare --shards",
    "shards.json",
    # the shards, and what a running call writes (its temporary folders and files, renamed into place when done)
    (
        "shards.json",
        "shard-?????-of-?????",
        ".shard-?????-of-?????.tmp-*",
        ".shard-?????-of-?????.old-*",
        ".shards.json.tmp-*",
    ),
)
_SHARD_DIR = re.compile(r"shard-(\d{5})-of-(\d{5})$")
_TEMPORARY = re.compile(r"\.(shards\.json|shard-\d{5}-of-\d{5})\.(tmp|old)-\d+-")  # another call's writes


def shard_name(index: int, count: int) -> str:
    """The folder of shard `index` of `count`: shard-00003-of-00008."""
    return f"shard-{index:05d}-of-{count:05d}"


def shard_of(users: pl.Series | list[Any], count: int) -> np.ndarray:
    """The shard [n] int64 of each raw user id: `SHARD_HASH`, the same on every machine."""
    values = users.to_list() if isinstance(users, pl.Series) else list(users)
    digests = [hashlib.sha1(str(v).encode("utf-8")).digest()[:8] for v in values]
    return np.array([int.from_bytes(d, "big") % count for d in digests], dtype=np.int64)


def check_shard_args(shards: int, shard: int | None) -> None:
    """Refuse a shard count outside 1..MAX_SHARDS, or a shard index outside 0..shards-1."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be a whole number from 1 to {MAX_SHARDS:,}. Got {shards!r} instead.")
    if shard is not None and (isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards):
        raise ValueError(
            f"--shard must be a shard index from 0 to {shards - 1} (shards are numbered from 0 for --shards "
            f"{shards}). Got {shard!r} instead."
        )


def check_out(out: str | Path, shards: int, shard: int | None = None, force: bool = False) -> None:
    """Refuse an OUT that holds anything but shards of this count (and their shards.json), or a shard to write
    (`shard`, or all) that exists without `force`: `OutputError`, before any work."""
    out = Path(out)
    _check_folder(out, shards)
    for index in range(shards) if shard is None else [shard]:
        check_output(out / shard_name(index, shards), STORE, force)


def _check_folder(out: Path, shards: int) -> None:
    """OUT may be new, empty, or hold only shards of this split (and their manifest): never anything else."""
    if (out / SHARDS.marker).is_file():
        check_output(out, SHARDS, force=True)  # the common checks; shards.json is rewritten, never a shard
    elif out.resolve() == Path.cwd().resolve() or out.resolve() in Path.cwd().resolve().parents:
        raise OutputError(f"--out {out}: is the current directory or one of its parents; name a new folder instead.")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder. Choose a new folder for the {SHARDS.what}.")
    names = [p.name for p in out.iterdir() if not _TEMPORARY.match(p.name) and p.name != "run.lock"]
    foreign = [n for n in names if n != "shards.json" and not _SHARD_DIR.match(n)]
    other = sorted({int(m[2]) for n in names if (m := _SHARD_DIR.match(n)) and int(m[2]) != shards})
    if foreign or other:
        raise OutputError(
            f"--out {out}: holds {'shards of a split into ' + str(other[0]) if other else repr(foreign[0])}, "
            f"expected nothing or the shards of --shards {shards}. longrec never deletes what it did not write: "
            "choose a new folder."
        )


@dataclass
class ShardPlan:
    """What every shard shares, derived from the whole log: vocabularies, the protocol's split times, the users."""

    schema: LogSchema
    vocabularies: dict[str, pl.Series]
    protocol: ProtocolConfig  # the base protocol, with Protocol T's split times fixed when they were fractions
    user_shard: np.ndarray  # [U] the shard of each user, in user vocabulary order
    rows: int
    last_timestamp: int
    derived_split_times: bool = False

    def users_of(self, index: int) -> pl.Series:
        return self.vocabularies["user_id"].filter(pl.Series(self.user_shard == index))

    def shard_protocol(self, index: int) -> ProtocolConfig:
        seed = int(np.random.SeedSequence([self.protocol.seed, index]).generate_state(1)[0])
        return replace(self.protocol, seed=seed)


def _split_times(lazy: pl.LazyFrame, schema: LogSchema, protocol: ProtocolConfig) -> tuple[int, int, int] | None:
    """Protocol T's split_fractions as split_times over the whole log's targets (None: nothing to fix).

    The targets are those `build_samples` cuts: labelled impressions when the log has any, else behaviours (the most
    recent max_targets_per_user of each user), with at least min_history behaviours strictly before them. The
    quantiles are taken as `_split_by_time` takes them (method "lower"): train t <= q1, valid q1 < t <= q2, test
    t > q2, i.e. split_times (first target, q1 + 1, q2 + 1).
    """
    if protocol.name != "T" or protocol.split_times:
        return None
    cols = ["user_id", "timestamp", *(["label"] if schema.has_label else [])]
    frame = lazy.select(cols).with_columns(pl.col("timestamp").cast(pl.Int64))
    impressions = schema.has_label and frame.select(pl.col("label").is_not_null().any()).collect().item()
    if impressions:
        beh = (
            frame.filter(pl.col("label").is_null())
            .group_by("user_id", "timestamp")
            .len()
            .sort("user_id", "timestamp")
            .with_columns(pl.col("len").cum_sum().over("user_id").alias("before"))
            .drop("len")
            .sort("timestamp")
        )
        imp = frame.filter(pl.col("label").is_not_null()).select("user_id", "timestamp").sort("timestamp")
        joined = imp.join_asof(
            beh, on="timestamp", by="user_id", strategy="backward", allow_exact_matches=False, check_sortedness=False
        )  # sorted by time overall, hence within each user
        times = joined.filter(pl.col("before").fill_null(0) >= protocol.min_history).select("timestamp")
    else:
        ranked = frame.with_row_index("row").sort("user_id", "timestamp", "row")
        ranked = ranked.with_columns(
            (pl.col("timestamp").rank("min").over("user_id") - 1).alias("before"),
            (pl.len().over("user_id") - 1 - pl.int_range(pl.len()).over("user_id")).alias("from_end"),
        )
        keep = pl.col("before") >= protocol.min_history
        if protocol.max_targets_per_user:
            keep = keep & (pl.col("from_end") < protocol.max_targets_per_user)
        times = ranked.filter(keep).select("timestamp")
    t = times.collect(engine="streaming")["timestamp"].to_numpy()
    if t.size == 0:
        return None  # no targets at all: every shard's empty-split check says so
    f = np.asarray(protocol.split_fractions, dtype=np.float64) / sum(protocol.split_fractions)
    if f[0] >= 1:
        return int(t.min()), int(t.max()) + 1, int(t.max()) + 1
    q1, q2 = np.quantile(t, [f[0], f[0] + f[1]], method="lower")
    return int(t.min()), int(q1) + 1, int(q2) + 1


def plan_shards(
    frame: pl.LazyFrame | pl.DataFrame,
    shards: int,
    protocol: ProtocolConfig,
    source: str = "log",
    extra_fields: tuple[str, ...] | None = None,
    vocab_from: str | Path | None = None,
) -> ShardPlan:
    """Read the log's id columns once: the vocabularies, split times and user -> shard map every shard shares."""
    lazy = frame.lazy()
    schema = log_schema(lazy, source, extra_fields)
    flat, taxonomy = vocabulary_columns(schema)
    names = [*flat, *taxonomy]
    found = pl.collect_all([lazy.select(pl.col(n).drop_nulls().unique().sort()) for n in names])
    vocabularies = {n: f[n].rename("raw") for n, f in zip(names, found, strict=True)}
    if vocab_from is not None:  # the parent's values first, in its order; the new ones after it, sorted
        parent = TrajectoryStore.open(vocab_from).root
        for n in names:
            known = read_vocab(parent, n) if (parent / "vocab" / f"{n}.parquet").is_file() else None
            if known is not None:
                new = vocabularies[n].cast(known.dtype, strict=False)
                vocabularies[n] = pl.concat([known, new.filter(~new.is_in(known.implode()) & new.is_not_null())])
    rows, last = lazy.select(pl.len(), pl.col("timestamp").cast(pl.Int64).max()).collect().row(0)
    times = _split_times(lazy, schema, protocol)
    plan_protocol = replace(protocol, split_times=times) if times is not None else protocol
    user_shard = shard_of(vocabularies["user_id"], shards)
    return ShardPlan(schema, vocabularies, plan_protocol, user_shard, int(rows), int(last or 0), times is not None)


@dataclass
class ShardsResult:
    """What `prepare_shards` wrote: each shard's result, and the top-level manifest once every shard exists."""

    out: Path
    shards: int
    results: dict[int, PrepareResult] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        out = []
        for index, result in sorted(self.results.items()):
            out += [f"shard {index} of {self.shards}: " + result.lines()[0], *result.lines()[1:2]]
        if self.manifest is None:
            have = len(_present(self.out, self.shards))
            out.append(f"{have} of {self.shards} shards present in {self.out}: shards.json is written by the last one")
        else:
            c = self.manifest["counts"]
            out.append(
                f"wrote {self.out / 'shards.json'}: {self.shards} shards, {c['users']:,} users, "
                f"{c['behaviours']:,} behaviours, samples " + ", ".join(f"{s} {c['samples'][s]:,}" for s in SPLITS)
            )
        return out


def prepare_shards(
    frame: pl.LazyFrame | pl.DataFrame,
    out: str | Path,
    protocol: ProtocolConfig,
    shards: int,
    shard: int | None = None,
    source: str = "log",
    load_report: FilterReport | None = None,
    extra_fields: tuple[str, ...] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    force: bool = False,
    vocab_from: str | Path | None = None,
) -> ShardsResult:
    """Prepare the log into `shards` user-hash shards under `out` (all of them, or only `shard`), then write
    `out/shards.json` when every shard is present.

    Args:
        frame, protocol, source, load_report, extra_fields, extra_manifest, vocab_from: as for `prepare`.
        out: the folder of the shards: new, empty, or holding shards of the same count (another call's).
        shards: the number of shards N (1 .. MAX_SHARDS).
        shard: prepare only this shard (0 .. N-1), how a job array calls it; None prepares all N in turn.
        force: replace a shard's previous store (never anything else).

    Raises:
        ValueError: a bad `shards` / `shard`. OutputError: `out` holds anything but shards of this count, or a
        shard's store exists without `force`. DataError: as `prepare`; or the shards together have an empty split.
    """
    check_shard_args(shards, shard)
    out = Path(out)
    check_out(out, shards, shard, force)
    todo = range(shards) if shard is None else [shard]
    lazy = frame.lazy()
    plan = plan_shards(lazy, shards, protocol, source, extra_fields, vocab_from)
    result = ShardsResult(out=out, shards=shards)
    out.mkdir(parents=True, exist_ok=True)
    for index in todo:
        users = plan.users_of(index)
        part = lazy.filter(pl.col("user_id").is_in(users.implode()))
        info = {
            "index": index,
            "count": shards,
            "hash": SHARD_HASH,
            "rows_of_log": plan.rows,
            "split_times_from_log": plan.derived_split_times,
        }
        result.results[index] = prepare(
            part,
            out / shard_name(index, shards),
            plan.shard_protocol(index),
            source=f"{source} (shard {index} of {shards})",
            extra_fields=plan.schema.extra,
            extra_manifest={**(extra_manifest or {}), "shard": info},
            force=force,
            allow_empty_splits=True,  # a small shard may miss a split; the union is checked in shards.json
            vocab_from=vocab_from,
            vocabularies=plan.vocabularies,
        )
    shared = {
        "source": source,
        "protocol": asdict(plan.protocol),
        "split_times_from_log": plan.derived_split_times,
        "last_timestamp": plan.last_timestamp,
        "load_report": (load_report or FilterReport(rows_read=plan.rows)).to_dict(),
    }
    result.manifest = write_shards_manifest(out, shards, shared)
    return result


def _present(out: Path, shards: int) -> list[Path]:
    return [
        out / shard_name(i, shards) for i in range(shards) if (out / shard_name(i, shards) / "manifest.json").is_file()
    ]


def write_shards_manifest(out: Path, shards: int, shared: dict[str, Any]) -> dict[str, Any] | None:
    """Write `out/shards.json` (atomically) when all `shards` stores are present and agree; None while some are missing.

    Raises:
        DataError: the shards disagree (vocabularies, shard count, schema: shards of different logs or settings), or
            together hold no sample for a split. shards.json is not written then.
    """
    present = _present(out, shards)
    if len(present) < shards:
        return None
    manifests = [read_json_object(p / "manifest.json", "prepared store") for p in present]
    first = manifests[0]
    for path, m in zip(present, manifests, strict=True):
        info = m.get("shard", {})
        for key in ("vocab_sha", "schema", "sizes", "format_version"):
            if m.get(key) != first.get(key):
                raise DataError(
                    f"{path}: its {key} differs from {present[0]}'s ({m.get(key)!r} vs {first.get(key)!r}): the shards "
                    "were prepared from different logs or settings. Prepare them again with the same command."
                )
        if info.get("count") != shards or info.get("index") != present.index(path):
            raise DataError(f"{path}: its manifest says shard {info.get('index')} of {info.get('count')}.")
        if info.get("hash") != SHARD_HASH:
            raise DataError(f"{path}: users were assigned by {info.get('hash')!r}, expected {SHARD_HASH!r}.")
    counts: dict[str, Any] = {"users": 0, "behaviours": 0, "impressions": 0}
    counts["samples"] = dict.fromkeys(SPLITS, 0)
    counts["positives"] = dict.fromkeys(SPLITS, 0)
    for m in manifests:
        for key in ("users", "behaviours", "impressions"):
            counts[key] += m["counts"][key]
        for s in SPLITS:
            counts["samples"][s] += m["counts"]["samples"][s]
            counts["positives"][s] += m["counts"]["positives"][s]
    protocol = shared["protocol"]
    on_purpose: set[str] = set()  # as `prepare`: a split given no share, or whose window starts after the log
    if protocol["name"] == "T" and shared.get("split_times_from_log"):
        on_purpose = {s for s, f in zip(SPLITS, protocol["split_fractions"], strict=True) if f == 0}
    elif protocol["name"] == "T" and protocol["split_times"]:
        last = int(shared.get("last_timestamp", 0))
        on_purpose = {s for s, t in zip(SPLITS, protocol["split_times"], strict=True) if t > last}
    empty = [s for s in SPLITS if counts["samples"][s] == 0 and s not in on_purpose]
    if empty:
        raise DataError(
            f"{out}: the {shards} shards together hold no sample for split(s) {', '.join(empty)}: the protocol's "
            "filters left none (see each shard's manifest.json, protocol_report). shards.json was not written; "
            "prepare again with other protocol settings (e.g. --set min_history=N, split_fractions) or a larger log."
        )
    manifest = {
        "format": "longrec shards",
        "format_version": SHARDS_FORMAT,
        "count": shards,
        "hash": SHARD_HASH,
        "shards": [
            {"path": p.name, "index": i, "counts": m["counts"], "protocol_seed": m["protocol"]["seed"]}
            for i, (p, m) in enumerate(zip(present, manifests, strict=True))
        ],
        "counts": counts,
        "vocab_sha": first["vocab_sha"],
        "sizes": first["sizes"],
        "schema": first["schema"],
        "extra_fields": first["extra_fields"],
        **shared,
    }
    write_json(out / "shards.json", manifest)
    return manifest
