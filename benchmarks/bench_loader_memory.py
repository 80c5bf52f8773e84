"""Peak memory of loading a Taobao-format log: MB of RSS per million rows.

Generates Taobao UserBehavior-format CSVs (no header: user_id,item_id,category_id,behavior_type,timestamp) with numpy,
then, in a fresh subprocess per measurement, runs `load_log(path, "taobao")` (the streaming check-and-count pass) and,
for the "collect" stage, `LoadedLog.collect()` (the whole canonical frame in memory). A subprocess that loads a 10-row
file gives the baseline (interpreter, polars, thread pools), and "MB / M rows" = (peak - baseline) / millions of rows.
Peak RSS is the child's VmHWM (/proc/self/status), not `ru_maxrss`: Linux carries the parent's peak RSS across
fork+exec, so `ru_maxrss` would report the generator's memory.

Run:
    .venv/bin/python benchmarks/bench_loader_memory.py --rows 1000000 3000000 --json /tmp/loader_memory.json
    .venv/bin/python benchmarks/bench_loader_memory.py --rows 3000000 --gzip   # the .csv.gz -> temp-file route
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

CHILD = """
import json, resource, sys, time
from longrec.ingest import load_log

def peak_mb():
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's RSS at fork (kept across exec).
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

path, stage = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
log = load_log(path, "taobao")
t1 = time.perf_counter()
rows, frame_mb = log.report.rows_kept, 0.0
if stage == "collect":
    frame = log.collect()
    rows, frame_mb = frame.height, frame.estimated_size() / 2**20
t2 = time.perf_counter()
print(json.dumps({"rows": rows, "peak_mb": peak_mb(),
                  "check_s": t1 - t0, "collect_s": t2 - t1, "frame_mb": frame_mb}))
"""


def write_taobao_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A Taobao-format CSV with `rows` rows: users in blocks, ~100 events each, timestamps in the official window."""
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(1, max(rows // 100, 2), rows))
    frame = pl.DataFrame(
        {
            "user_id": users,
            "item_id": rng.integers(1, 5_163_070, rows),
            "category_id": rng.integers(1, 5_162_429, rows),
            "behavior_type": rng.choice(np.array(["pv", "cart", "fav", "buy"]), rows, p=[0.9, 0.05, 0.03, 0.02]),
            "timestamp": rng.integers(1511539200, 1512316800, rows),
        }
    )
    frame.write_csv(path, include_header=False)


def measure(path: Path, stage: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), stage], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000], help="rows per generated file")
    parser.add_argument("--gzip", action="store_true", help="gzip the files (exercises the temp-file route)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the generated files (default: /tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="longrec-bench-", dir=args.tmp))
    try:
        tiny = workdir / "tiny.csv"
        write_taobao_csv(tiny, 10)
        baseline = measure(tiny, "collect")["peak_mb"]
        results = []
        for rows in args.rows:
            path = workdir / f"taobao_{rows}.csv"
            write_taobao_csv(path, rows)
            if args.gzip:
                with open(path, "rb") as src, gzip.open(path.with_suffix(".csv.gz"), "wb", compresslevel=1) as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
                path = path.with_suffix(".csv.gz")
            file_mb = path.stat().st_size / 2**20
            for stage in ("check", "collect"):
                m = measure(path, stage)
                above = m["peak_mb"] - baseline
                results.append(
                    {"rows": rows, "stage": stage, "file_mb": file_mb, **m, "baseline_mb": baseline,
                     "mb_per_m_rows": above / (rows / 1e6), "frame_mb_per_m_rows": m["frame_mb"] / (rows / 1e6)}
                )  # fmt: skip
            path.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"baseline RSS (10-row load): {baseline:.0f} MB; {platform.platform()}, polars {pl.__version__}")
    print(f"{'rows':>10} {'stage':>8} {'file MB':>8} {'check s':>8} {'collect s':>9} {'peak MB':>8} "
          f"{'MB/M rows':>9} {'frame MB/M':>10}")  # fmt: skip
    for r in results:
        print(
            f"{r['rows']:>10,} {r['stage']:>8} {r['file_mb']:>8.0f} {r['check_s']:>8.2f} {r['collect_s']:>9.2f} "
            f"{r['peak_mb']:>8.0f} {r['mb_per_m_rows']:>9.1f} {r['frame_mb_per_m_rows']:>10.1f}"
        )
    collect = [r for r in results if r["stage"] == "collect"]
    if len(collect) >= 2:
        a, b = collect[0], collect[-1]
        slope = (b["peak_mb"] - a["peak_mb"]) / ((b["rows"] - a["rows"]) / 1e6)
        print(f"marginal peak RSS (collect, {a['rows']:,} -> {b['rows']:,} rows): {slope:.1f} MB per million rows")
    if args.json:
        meta = {"platform": platform.platform(), "polars": pl.__version__, "cpus": os.cpu_count(), "date": time.ctime()}
        args.json.write_text(json.dumps({"meta": meta, "baseline_mb": baseline, "results": results}, indent=2))


if __name__ == "__main__":
    main()
