"""Sharded preparation: rows/s and peak RSS of `longrec prepare --shards N --shard I` against one unsharded prepare,
the disk each takes, and that the shards together equal the unsharded store.

A job array prepares one shard per task (`--shard I`): each task reads the log's id columns once (the whole log's
vocabularies and, under Protocol T, its split times), then prepares only its users. This script plays the array on one
machine: the unsharded `prepare` and then shard 0..N-1, each in a fresh subprocess through the CLI (its wall time and
its VmHWM, the peak RSS of that process image), on a generated Parquet log: users in blocks of ~100 behaviours
(`rows / 100` users), items Zipf(1.3) over 200,000 ids, one category level of 5,000 values (item id mod 5,000),
timestamps over 9 days, rows shuffled. Protocol T on the behaviours.

Equality (the sharded result equals the unsharded one): every shard has the unsharded store's vocabulary sha and
sizes; every user's trajectory is in exactly one shard and equals the unsharded one (items, categories, times); the
shards' positives per split are the unsharded ones (negatives are drawn per shard, from each shard's seed, so only
their counts must agree).

Run:       python benchmarks/bench_shards.py --update-readme                       (10^6 and 10^7 rows, N = 4)
Quick:     python benchmarks/bench_shards.py --rows 200000 --json /tmp/shards.json
Re-render: python benchmarks/bench_shards.py --from-json benchmarks/results/shards.json --update-readme
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import polars as pl

from longrec.data.shards import shard_name
from longrec.data.store import SPLITS, TrajectoryStore


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    """A generated behaviour log of `rows` rows as Parquet (see the module docstring)."""
    rng = np.random.default_rng(seed)
    item = (rng.zipf(1.3, rows) % 200_000) + 1
    frame = pl.DataFrame(
        {
            "user_id": np.sort(rng.integers(0, max(rows // 100, 2), rows)),
            "item_id": item,
            "timestamp": 1_700_000_000 + rng.integers(0, 9 * 86_400, rows),
            "cat_1": item % 5_000,
        }
    )
    frame.sample(fraction=1.0, shuffle=True, seed=seed).write_parquet(path)


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One `longrec prepare` through the CLI in this fresh process: its seconds and peak RSS."""
    from longrec.cli import main

    argv = ["prepare", job["log"], "--format", "parquet", "--out", job["out"], *job["extra"], "--quiet"]
    started = time.perf_counter()
    code = main(argv)
    return {"code": code, "seconds": time.perf_counter() - started, "peak_mb": harness.peak_rss_mb()}


def positives(store: TrajectoryStore) -> dict[str, list[tuple[Any, ...]]]:
    """Per split, the positives as (raw user, target item, target time), sorted."""
    users = store.vocab("user_id").to_list()
    out = {}
    for split in SPLITS:
        s = store.samples(split)
        keep = np.flatnonzero(s.label == 1)
        out[split] = sorted((users[int(s.user[i]) - 1], int(s.target_item[i]), int(s.target_time[i])) for i in keep)
    return out


def equal(whole: TrajectoryStore, parts: list[TrajectoryStore]) -> dict[str, Any]:
    """The checks of the module docstring; each a bool, plus the counts behind them."""
    same_vocab = all(p.manifest["vocab_sha"] == whole.manifest["vocab_sha"] for p in parts)
    same_sizes = all(p.manifest["sizes"] == whole.manifest["sizes"] for p in parts)
    counts = np.stack([np.diff(p.offsets) for p in parts])  # [N, U + 1]: behaviours per user per shard
    once = bool(((counts > 0).sum(axis=0) <= 1).all() and (counts.sum(axis=0) == np.diff(whole.offsets)).all())
    trajectories = once
    for u in np.flatnonzero(np.diff(whole.offsets)):
        part = parts[int(np.argmax(counts[:, u]))]
        mine, theirs = part.trajectory(int(u)), whole.trajectory(int(u))
        if any(not np.array_equal(mine[k], theirs[k]) for k in theirs):
            trajectories = False
            break
    union: dict[str, list[tuple[Any, ...]]] = {s: [] for s in SPLITS}
    for part in parts:
        for split, rows in positives(part).items():
            union[split].extend(rows)
    same_positives = {s: sorted(v) for s, v in union.items()} == positives(whole)
    sample_counts = {s: [len(whole.samples(s)), sum(len(p.samples(s)) for p in parts)] for s in SPLITS}
    return {
        "vocab_sha": same_vocab,
        "sizes": same_sizes,
        "trajectories": trajectories,
        "positives": same_positives,
        "sample_counts": sample_counts,
        "users": int((np.diff(whole.offsets) > 0).sum()),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=args.tmp))
    runs = []
    try:
        for rows in args.rows:
            log = work / f"log_{rows}.parquet"
            write_log(log, rows)
            whole, sharded = work / f"whole_{rows}", work / f"sharded_{rows}"
            job = {"log": str(log), "out": str(whole), "extra": []}
            calls = [{"call": "unsharded", **harness.in_subprocess(__file__, job)}]
            for i in range(args.shards):
                extra = ["--shards", str(args.shards), "--shard", str(i)]
                calls.append(
                    {
                        "call": f"shard {i}",
                        **harness.in_subprocess(__file__, job | {"out": str(sharded), "extra": extra}),
                    }
                )
            for call in calls:
                if call["code"] != 0:
                    raise RuntimeError(f"{call['call']} of {rows:,} rows exited with {call['code']}")
                print(f"{rows:>12,} rows, {call['call']:>9}: {call['seconds']:.2f} s, peak {call['peak_mb']:.0f} MB")
            parts = [TrajectoryStore.open(sharded / shard_name(i, args.shards)) for i in range(args.shards)]
            shard_rows = [int(p.offsets[-1]) for p in parts]
            runs.append(
                {
                    "rows": rows,
                    "log_mb": log.stat().st_size / 2**20,
                    "calls": calls,
                    "shard_rows": shard_rows,
                    "disk_mb": {
                        "unsharded": harness.folder_bytes(whole) / 2**20,
                        "sharded": harness.folder_bytes(sharded) / 2**20,
                    },
                    "manifest": (sharded / "shards.json").is_file(),
                    "equal": equal(TrajectoryStore.open(whole), parts),
                }
            )
            shutil.rmtree(whole)
            shutil.rmtree(sharded)
            log.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"polars": pl.__version__, "runs": runs}


def render(payload: dict[str, Any]) -> str:
    config = payload["config"]
    header = ["rows", "call", "rows prepared", "seconds", "rows/s", "peak RSS (MB)", "disk (MB)"]
    lines, checks = [], []
    for run in payload["runs"]:
        unsharded = run["calls"][0]
        shards = run["calls"][1:]
        lines.append([f"{run['rows']:,}", "unsharded", f"{run['rows']:,}", f"{unsharded['seconds']:.2f}",
                      f"{run['rows'] / unsharded['seconds']:,.0f}", f"{unsharded['peak_mb']:.0f}",
                      f"{run['disk_mb']['unsharded']:.0f}"])  # fmt: skip
        for call, n in zip(shards, run["shard_rows"], strict=True):
            lines.append([f"{run['rows']:,}", call["call"], f"{n:,}", f"{call['seconds']:.2f}",
                          f"{n / call['seconds']:,.0f}", f"{call['peak_mb']:.0f}", ""])  # fmt: skip
        total = sum(c["seconds"] for c in shards)
        lines.append([f"{run['rows']:,}", f"{len(shards)} shards, one after another", f"{sum(run['shard_rows']):,}",
                      f"{total:.2f}", f"{run['rows'] / total:,.0f}", f"{max(c['peak_mb'] for c in shards):.0f} (max)",
                      f"{run['disk_mb']['sharded']:.0f}"])  # fmt: skip
        eq = run["equal"]
        counts = ", ".join(f"{s} {a:,} / {b:,}" for s in SPLITS for a, b in [eq["sample_counts"][s]])
        checks.append([f"{run['rows']:,}", str(eq["users"]), *("yes" if eq[k] else "NO" for k in
                       ("vocab_sha", "sizes", "trajectories", "positives")), "yes" if run["manifest"] else "NO",
                       counts])  # fmt: skip
    check_header = ["rows", "users", "same vocab sha", "same sizes", "trajectories equal, each user in one shard",
                    "positives per split equal", "shards.json written",
                    "samples per split (unsharded / shards)"]  # fmt: skip
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Polars {payload['polars']}. N = {config['shards']} shards; every call a fresh subprocess through the CLI "
        "(`longrec prepare LOG --format parquet --out OUT [--shards N --shard I]`), its wall time and peak RSS "
        "(VmHWM); disk = the output folder. Generated Parquet logs: rows / 100 users, Zipf items over 200,000 ids, "
        "5,000 categories, 9 days, Protocol T.\n\n"
        + harness.markdown_table(header, lines)
        + "\n\nThe shards against the unsharded store (negatives are drawn per shard, so only their counts must "
        "agree):\n\n" + harness.markdown_table(check_header, checks)
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "shards", child=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="rows per generated log")
    parser.add_argument("--shards", type=int, default=4, help="N")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the logs and stores (default: /tmp)")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "shards", measure, render, child=child)
