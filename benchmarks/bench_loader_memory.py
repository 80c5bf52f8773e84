"""Peak memory of loading a Taobao-format log: MB of RSS per million rows.

Generates Taobao UserBehavior-format CSVs (no header: user_id,item_id,category_id,behavior_type,timestamp) with numpy,
then, in a fresh subprocess per measurement, runs `load_log(path, "taobao")` (the streaming check-and-count pass) and,
for the "collect" stage, `LoadedLog.collect()` (the whole canonical frame in memory). A subprocess that loads a 10-row
file gives the baseline (interpreter, polars, thread pools), and "MB / M rows" = (peak - baseline) / millions of rows.
Peak RSS is the child's VmHWM (/proc/self/status), not `ru_maxrss`: Linux carries the parent's peak RSS across
fork+exec, so `ru_maxrss` would report the generator's memory.

Run:       python benchmarks/bench_loader_memory.py --update-readme          (1M and 3M rows, about a minute)
Larger:    python benchmarks/bench_loader_memory.py --rows 1000000 5000000 20000000 --json /tmp/loader_memory.json
Gzip:      python benchmarks/bench_loader_memory.py --rows 3000000 --gzip --json /tmp/l.json   # the temp-file route
Re-render: python benchmarks/bench_loader_memory.py --from-json benchmarks/results/loader_memory.json --update-readme
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness as harness
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


def measure_child(path: Path, stage: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), stage], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="longrec-bench-", dir=args.tmp))
    try:
        tiny = workdir / "tiny.csv"
        write_taobao_csv(tiny, 10)
        baseline = measure_child(tiny, "collect")["peak_mb"]
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
                m = measure_child(path, stage)
                above = m["peak_mb"] - baseline
                results.append(
                    {"rows": rows, "stage": stage, "file_mb": file_mb, **m, "baseline_mb": baseline,
                     "mb_per_m_rows": above / (rows / 1e6), "frame_mb_per_m_rows": m["frame_mb"] / (rows / 1e6)}
                )  # fmt: skip
                print(f"{rows:>12,} rows {stage:>8}: peak {m['peak_mb']:.0f} MB", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"polars": pl.__version__, "baseline_mb": baseline, "results": results}


def render(payload: dict[str, Any]) -> str:
    config, results = payload["config"], payload["results"]
    header = ["rows", "file (MB)", "stage", "check (s)", "collect (s)", "peak RSS (MB)", "above baseline per M rows",
              "frame MB per M rows"]  # fmt: skip
    rows = [
        [f"{r['rows']:,}", f"{r['file_mb']:.0f}", r["stage"], f"{r['check_s']:.2f}",
         f"{r['collect_s']:.2f}" if r["stage"] == "collect" else "—", f"{r['peak_mb']:,.0f}",
         f"{r['mb_per_m_rows']:.0f}", f"{r['frame_mb_per_m_rows']:.0f}" if r["stage"] == "collect" else "—"]
        for r in results
    ]  # fmt: skip
    collect = [r for r in results if r["stage"] == "collect"]
    slope = ""
    if len(collect) >= 2:
        a, b = collect[0], collect[-1]
        growth = (b["peak_mb"] - a["peak_mb"]) / ((b["rows"] - a["rows"]) / 1e6)
        slope = (
            f"\n\nMarginal peak RSS (collect, {a['rows']:,} -> {b['rows']:,} rows): {growth:.1f} MB per million rows."
        )
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Polars {payload['polars']}. Taobao-format CSVs{' (gzipped)' if config['gzip'] else ''} generated with "
        'numpy; each stage in a fresh subprocess: `load_log(path, "taobao")` (check: the streaming validation '
        "pass) or that plus `LoadedLog.collect()` (collect: the whole canonical frame in memory); peak RSS = the "
        f"child's VmHWM. Baseline (interpreter + polars + a 10-row load): {payload['baseline_mb']:.0f} MB.\n\n"
        + harness.markdown_table(header, rows)
        + slope
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__.splitlines()[0], "loader_memory")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000], help="rows per generated file")
    parser.add_argument("--gzip", action="store_true", help="gzip the files (exercises the temp-file route)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the generated files (default: /tmp)")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "loader-memory", measure, render)
