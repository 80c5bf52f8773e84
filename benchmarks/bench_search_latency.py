"""DARE soft-search latency against the attention dim d_a: does halving d_a halve the search time?

DARE (Feng et al., ICLR 2025) decouples attention (d_a) from representation (d_r) embeddings and reports about 50%
less search time per halving of d_a. This script times our search for one batch of requests, no gradient, on
`--threads` threads, at d_a = 128, 64, 32 with d_r fixed, for histories of L = 1k and 10k:
- lookup: `model.search_embeddings(batch)`, the attention-table rows of all L behaviours (item, category, time) and the
  scaled query, [B, L, A] with A = 3·d_a;
- score: `<query, key_i>` over L (`torch.einsum`, what `exact_topk` computes);
- top-K: `topk_positions` on the [B, L] scores (mask, top-K, kept);
- total: the three in sequence, as `search_stage` runs them before it gathers the K behaviours.
Each is the median of `--repeats` runs after a warm-up, in a process that keeps freed memory (`reuse_freed_memory()`,
as `longrec train` does; `--default-allocator` measures page-faulted fresh memory instead). The floor is arithmetic:
the bytes that must move (every behaviour's ids and its A key floats, read once: a fused gather-and-dot would never
write the keys; ours writes them once and reads them back, because `search_embeddings` returns them) at the measured
copy bandwidth, and the score FLOPs (2·L·A per request) at the measured GEMM rate. Top-K reads [B, L] scores, whatever
d_a.

Inputs are synthetic (random ids over a `--num-items` table, full histories): latency does not depend on what the
model learnt. Batches: B requests of one user each (one target, one history), `--batch-size`.

Run:       python benchmarks/bench_search_latency.py --update-readme
Quick:     python benchmarks/bench_search_latency.py --lengths 1000 --repeats 5 --json /tmp/search_latency.json
Re-render: python benchmarks/bench_search_latency.py --from-json benchmarks/results/search_latency.json --update-readme
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import _harness as harness
import torch

from longrec.models import build_model
from longrec.search import topk_positions
from longrec.train.step import reuse_freed_memory

ATTENTION_DIMS = (128, 64, 32)


def floor_ms(B: int, L: int, A: int, fields: int, peak: dict[str, float]) -> dict[str, float]:
    """Arithmetic floor of lookup + score for a batch: every behaviour's A key floats read once (a fused gather-and-dot
    would never write them) plus its ids, at the copy bandwidth; and the score FLOPs at the GEMM rate."""
    key_bytes = B * L * A * 4
    id_bytes = B * L * fields * 8
    flops = 2 * B * L * A
    return {
        "key_mb": B * L * A * 4 / 1e6,
        "bytes_ms": 1e3 * (key_bytes + id_bytes) / (peak["gbytes_per_s"] * 1e9),
        "flops_ms": 1e3 * flops / (peak["gflops"] * 1e9),
    }


def measure_one(L: int, d_a: int, args: argparse.Namespace, peak: dict[str, float]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(
        "dare",
        num_items=args.num_items,
        num_categories=args.num_categories,
        taxonomy_levels=1,
        dim=args.representation_dim,
        attention_dim=d_a,
        max_position=L,
    ).eval()
    batch = harness.request_batch(args.batch_size, L, args.num_items, args.num_categories)
    reps = args.repeats
    with torch.no_grad():
        query, keys = model.search_embeddings(batch)  # [B, A], [B, L, A]
        scores = torch.einsum("ba,bla->bl", query, keys)  # [B, L]

        def total() -> None:
            q, k = model.search_embeddings(batch)
            topk_positions(torch.einsum("ba,bla->bl", q, k), batch.history_mask, args.k)

        row = {
            "L": L,
            "d_a": d_a,
            "A": keys.shape[-1],
            "lookup_ms": harness.median_ms(lambda: model.search_embeddings(batch), reps),
            "score_ms": harness.median_ms(lambda: torch.einsum("ba,bla->bl", query, keys), reps),
            "topk_ms": harness.median_ms(lambda: topk_positions(scores, batch.history_mask, args.k), reps),
            "total_ms": harness.median_ms(total, reps),
        }
    row |= floor_ms(args.batch_size, L, row["A"], 3, peak)
    row["per_request_us"] = 1e3 * row["total_ms"] / args.batch_size
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    allocator = "glibc default" if args.default_allocator or not reuse_freed_memory() else "reuse_freed_memory()"
    peak = harness.peaks()
    print(f"peaks on {args.threads} threads: {peak['gflops']:.0f} GFLOP/s GEMM, {peak['gbytes_per_s']:.1f} GB/s copy")
    rows = []
    for L in args.lengths:
        for d_a in sorted(args.attention_dims, reverse=True):
            rows.append(measure_one(L, d_a, args, peak))
            r = rows[-1]
            print(
                f"L={L:6d} d_a={d_a:4d}: lookup {r['lookup_ms']:7.2f}  score {r['score_ms']:6.2f}  "
                f"top-K {r['topk_ms']:6.2f}  total {r['total_ms']:7.2f} ms per batch of {args.batch_size}",
                flush=True,
            )
    plot(rows, args.png, args.batch_size, args.threads)
    return {"peaks": peak, "allocator": allocator, "png": harness.relative(args.png), "rows": rows}


def plot(rows: list[dict[str, Any]], path: Path, batch_size: int, threads: int) -> None:
    title = f"DARE soft search (lookup + score + top-K) vs attention dim, {threads} threads"
    with harness.figure(path, 2, (10, 4), title) as axes:
        for ax, L in zip(axes, sorted({r["L"] for r in rows}), strict=False):
            sub = sorted((r for r in rows if r["L"] == L), key=lambda r: r["d_a"])
            d = [r["d_a"] for r in sub]
            for key, label in (
                ("total_ms", "total"),
                ("lookup_ms", "lookup"),
                ("score_ms", "score"),
                ("topk_ms", "top-K"),
            ):
                ax.plot(d, [r[key] for r in sub], marker="o", label=label)
            ax.plot(d, [r["bytes_ms"] for r in sub], linestyle="--", color="grey", label="floor (bytes)")
            top = sub[-1]["total_ms"]
            ax.plot(d, [top * x / d[-1] for x in d], linestyle=":", color="black", label="∝ d_a (the paper's claim)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(d, [str(x) for x in d])
            ax.set_xlabel("attention dim d_a (per field)")
            ax.set_ylabel(f"ms per batch of {batch_size} requests")
            ax.set_title(f"L = {L:,}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "L",
        "d_a",
        "keys (MB)",
        "lookup (ms)",
        "score (ms)",
        "top-K (ms)",
        "total (ms)",
        "per request (µs)",
        "vs 2·d_a",
        "floor: bytes / FLOPs (ms)",
    ]
    out = []
    for r in rows:
        prev = next((p for p in rows if p["L"] == r["L"] and p["d_a"] == 2 * r["d_a"]), None)
        ratio = f"{r['total_ms'] / prev['total_ms']:.2f}" if prev else "—"
        out.append(
            [
                f"{r['L']:,}",
                str(r["d_a"]),
                f"{r['key_mb']:.0f}",
                f"{r['lookup_ms']:.2f}",
                f"{r['score_ms']:.2f}",
                f"{r['topk_ms']:.2f}",
                f"{r['total_ms']:.2f}",
                f"{r['per_request_us']:.0f}",
                ratio,
                f"{r['bytes_ms']:.2f} / {r['flops_ms']:.2f}",
            ]
        )
    return harness.markdown_table(header, out)


def render(payload: dict[str, Any]) -> str:
    config, peak = payload["config"], payload["peaks"]
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"DARE soft search, no gradient, batch of {config['batch_size']} requests with full histories, "
        f"K = {config['k']}, one taxonomy level (A = 3·d_a: item, category, time), d_r = "
        f"{config['representation_dim']}, {config['num_items']:,} items; median of {config['repeats']} runs; "
        f"allocator: {payload['allocator']}. 'vs 2·d_a' = total time over the total at twice the attention dim (the "
        f"paper: about 0.5). Floor: key + id bytes at the measured {peak['gbytes_per_s']:.1f} GB/s copy bandwidth / "
        f"score FLOPs at {peak['gflops']:.0f} GFLOP/s.\n\n"
        + table(payload["rows"])
        + f"\n\n![search latency]({harness.readme_link(payload['png'])})"
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "search_latency", threads=2, png=True)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 10000], help="history lengths L")
    parser.add_argument("--attention-dims", nargs="+", type=int, default=list(ATTENTION_DIMS))
    parser.add_argument("--representation-dim", type=int, default=64, help="d_r, fixed (search never reads it)")
    parser.add_argument("--batch-size", type=int, default=32, help="requests per batch")
    parser.add_argument("--k", type=int, default=20, help="behaviours kept")
    parser.add_argument("--num-items", type=int, default=100_000)
    parser.add_argument("--num-categories", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="skip reuse_freed_memory(): every [B, L, A] key tensor then comes from fresh, page-faulted memory",
    )
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "search-latency", measure, render)
