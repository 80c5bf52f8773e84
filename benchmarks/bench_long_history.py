"""Long histories (10^2 -> 10^5 behaviours): who still uses the far past, VQL's quantization error, memory per sample.

A. **Accuracy vs L with long-range planted relevance.** Synthetic data with mechanisms (a) (recent same-SPU ad
   behaviours with a time decay) and (g) (long-range memories, `longrec.ingest.synthetic`): each user's oldest
   behaviours are a few *memory* ad behaviours of SPUs that occur nowhere else, half the impressions show a
   memory-SPU item, and the label gets +w_g only when a same-SPU behaviour lies more than `--g-min-back` behaviours
   before the impression. A window of the most recent `--g-min-back` behaviours therefore holds no evidence about a
   memory target. Each method is trained at every `--lengths` L (collate keeps the L most recent behaviours) with
   `train_step` (the harness's `Trainer`: Adam, `--epochs` epochs, batch `--batch-size`, the last model is scored:
   no validation-based selection) and scored on the test split with `predict`; predictions are joined to the
   generator's truth by `event_id`. Reported: test AUC over all impressions, AUC on the memory-target impressions only
   (truth column `memory_target`), and the AUC of the true probability on the same rows (the ceiling). Methods: DIN
   over the L most recent behaviours (no search); TWIN and DARE with soft search (K = `--k`) over all L; SIM-style
   category search on the finest taxonomy level (K = `--k`) + DIN / TIN; VISTA and VQL over all L (their per-user
   state summarises the whole history).
B. **VQL error vs exact attention as L grows** (`longrec.models.vql.attention_error`, the relative error
   ||o_quantized - o_exact|| / ||o_exact|| of the attention output) at `--error-lengths`, on real histories of
   exactly L behaviours from the store (samples with at least L behaviours before the impression, all splits), for
   codebooks `--codebooks`: freshly initialised (the default temporal kernel, and `temporal = "none"`, where every
   behaviour weighs the same whatever its age) and after part A's recipe at the largest L of `--lengths`.
C. **Memory.** Bytes of the collated `Batch` per sample at `--memory-lengths`, from the tensors' nbytes, against the
   formula L x (45 + 8M + 8E) (M taxonomy levels, E extra id fields; collate's comment). The peak RSS of the soft
   search (`search_stage`, TWIN, B = 8, no gradient) at the largest of `--memory-lengths`, chunked (`search.chunk = 0`,
   auto) vs unchunked (`-1`), each in a fresh subprocess (VmHWM after resetting it with /proc/self/clear_refs: torch's
   CPU allocations are invisible to tracemalloc). And the peak RSS and step time of training at the largest L of
   `--lengths` (`longrec.train.loop.train`, a few steps, fresh subprocess per config): what fits a 2-core 24 GB machine.

The data: `--users` users with about `--events` behaviours each (uniform +-20%), plus `--long-users` users with
`--long-events` behaviours each, generated from the same world (same seed and sizes) and appended with shifted user
and event ids, so that parts B and C find histories of 10^5 behaviours in the same store (same vocabulary as the
trained models). Part A's metrics cover the main users only; the long users' samples (about 1-2% of the training set)
are in training, truncated to L like every other sample.

Run:       python benchmarks/bench_long_history.py --update-readme
Quick:     python benchmarks/bench_long_history.py --quick --json /tmp/long_history.json --png /tmp/long_history.png
Re-render: python benchmarks/bench_long_history.py --from-json benchmarks/results/long_history.json --update-readme
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import polars as pl
import torch

from longrec.data.batch import Batch
from longrec.data.dataset import collate, make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SampleSet, TrajectoryStore
from longrec.eval.evaluate import predict
from longrec.eval.metrics import auc
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes
from longrec.models.vql import attention_error
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.step import reuse_freed_memory

HERE = Path(__file__).resolve().parent
# method -> (model name, model params, search config fields)
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "DIN (recent L)": ("din", {}, {"method": "none"}),
    "TWIN (soft)": ("twin", {}, {"method": "soft"}),
    "DARE (soft)": ("dare", {}, {"method": "soft"}),
    "category + DIN": ("din", {}, {"method": "category", "level": -1}),
    "category + TIN": ("tin", {}, {"method": "category", "level": -1}),
    "VISTA": ("vista", {}, {"method": "none"}),
    "VQL": ("vql", {}, {"method": "none"}),
}

# Part B's model states: initialised (the default temporal kernel, or none), and trained with part A's recipe.
FRESH, FRESH_FLAT, TRAINED = "fresh", "fresh, temporal = none", "trained"

# Peak RSS of one soft search over B = 8 histories of L behaviours from the store, in a fresh process.
SEARCH_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import torch
    from longrec.search.config import SearchConfig
    from longrec.data.dataset import collate
    from longrec.data.store import SampleSet, TrajectoryStore
    from longrec.search import search_stage
    from longrec.models import build_model_for_sizes

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**10

    store_path, L, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(2)
    store = TrajectoryStore.open(store_path)
    samples = SampleSet.concat([store.samples(split) for split in ("test", "valid", "train")])
    index = np.flatnonzero(np.asarray(samples.end) >= L)[:8]
    batch = collate(store, samples, index, L)
    torch.manual_seed(0)
    model = build_model_for_sizes("twin", {}, store.sizes).eval()
    config = SearchConfig(method="soft", k=50, chunk=chunk)
    search_stage(batch.replace(**{k: v[:, -2048:] for k, v in batch.fields().items() if k.startswith("history")}),
                 model, config)  # warm-up on a short slice: allocator and kernels
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before, started = rss("VmRSS"), time.perf_counter()
    out = search_stage(batch, model, config)
    seconds = time.perf_counter() - started
    keys = model.search_embeddings(batch.replace(**{k: v[:, :1] for k, v in batch.fields().items()
                                                    if k.startswith("history")}))[1]
    print(json.dumps({"peak_mb": rss("VmHWM") - before, "seconds": seconds, "B": len(batch), "L": L,
                      "key_width": keys.shape[-1], "positions": out.history_position.tolist()}))
    """
)

# Peak RSS and seconds per step of `longrec.train.loop.train` at one L, in a fresh process.
TRAIN_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from longrec.config import load_config
    from longrec.run import train

    store_path, out, steps, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    sets = sets + [f"data.path={store_path}", f"train.max_steps={steps}", "train.eval_every=1000000",
                   "train.epochs=1", "train.threads=2", "train.progress=false"]
    stamps = []
    started = time.perf_counter()
    metrics = train(load_config(None, sets), out, on_step=lambda step: stamps.append(time.perf_counter()))
    total = time.perf_counter() - started
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**10
    steps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (warm-up) is not timed
    print(json.dumps({"peak_mb": peak, "steps": metrics["steps"], "total_s": total,
                      "step_s": sorted(steps)[len(steps) // 2]}))
    """
)


# --------------------------------------------------------------------------------------------------------------------
# Data.


def make_store(
    args: argparse.Namespace, stores: harness.Stores
) -> tuple[TrajectoryStore, pl.DataFrame, dict[str, Any]]:
    """Generate the main and the long users from one world, prepare one store; return it, the main truth and stats."""
    base = SyntheticConfig(
        num_users=args.users,
        events_per_user=args.events,
        events_spread=0.2,
        impressions_per_user=args.impressions,
        mechanisms=("a", "g"),
        g_min_back=args.g_min_back,
        weight_g=args.weight_g,
        seed=args.data_seed,
    )
    long_users = {"num_users": args.long_users, "events_per_user": args.long_events, "events_spread": 0.0,
                  "impressions_per_user": args.long_impressions}  # fmt: skip

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        main = generate(base)
        long = generate(dataclasses.replace(base, **long_users))
        user_shift, event_shift = int(main.log["user_id"].max()), int(main.log["event_id"].max()) + 1
        shifted = long.log.with_columns(pl.col("user_id") + user_shift, pl.col("event_id") + event_shift)
        log = pl.concat([main.log, shifted])
        generated = time.perf_counter() - started
        protocol = ProtocolConfig.for_protocol("T", split_fractions=(0.7, 0.1, 0.2))
        result = prepare(log, folder / "store", protocol, force=True)
        (folder / "raw").mkdir(exist_ok=True)
        main.truth.select("event_id", "memory_target", "term_g", "prob", "label").write_parquet(
            folder / "raw" / "truth.parquet"
        )
        return {
            "behaviours": main.stats["num_behaviours"] + long.stats["num_behaviours"],
            "main_events_per_user": main.stats["events_per_user"],
            "samples": {split: result.manifest["counts"]["samples"][split] for split in ("train", "valid", "test")},
            "generate_s": round(generated, 1),
            "prepare_s": round(time.perf_counter() - started - generated, 1),
            "positive_rate": main.stats["positive_rate"],
            "memory_spus": len(main.planted["memory_spus"]),
        }

    store = stores.get("long-history", {"config": repr(base), "long_users": long_users}, build)
    return store.open(), store.truth(), store.info


def take_full(store: TrajectoryStore, L: int, count: int) -> tuple[list[int], Batch]:
    """The first `count` samples (any split) with at least L behaviours before the impression, collated to L; and
    their event ids."""
    samples = SampleSet.concat([store.samples(split) for split in ("test", "valid", "train")])
    index = np.flatnonzero(np.asarray(samples.end) >= L)[:count]
    if len(index) < count:
        raise ValueError(f"only {len(index)} samples have >= {L} behaviours (need {count}); raise --long-events.")
    return np.asarray(samples.event_id)[index].tolist(), collate(store, samples, index, L)


# --------------------------------------------------------------------------------------------------------------------
# A. Accuracy vs L.


def fit(
    method: str,
    L: int,
    seed: int,
    store: TrajectoryStore,
    args: argparse.Namespace,
    params: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, SearchConfig, float]:
    """Train `method` at max_history L with train_step; return the model, its search config and the seconds."""
    name, base_params, search_fields = METHODS[method]
    search = SearchConfig.from_table({"k": args.k, **search_fields})
    torch.manual_seed(seed)
    model = build_model_for_sizes(name, {**base_params, **(params or {})}, store.sizes)
    trainer = harness.Trainer(model, search, args.lr)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        trainer.epoch(make_loader(store, "train", args.batch_size, L, shuffle=True, seed=seed, epoch=epoch))
    return model, search, time.perf_counter() - started


def memory_in_input(
    model: torch.nn.Module, search: SearchConfig, store: TrajectoryStore, L: int, batch_size: int, g_min_back: int
) -> np.ndarray:
    """[N] per test sample: does the model's input (the K searched behaviours, or the L collated ones) hold a far
    memory, i.e. a behaviour of the target's SPU more than g_min_back behaviours back (memory SPUs occur nowhere
    else)?"""
    found = []
    with torch.no_grad():
        for batch in make_loader(store, "test", batch_size, L):
            kept = search_stage(batch, model, search)
            assert kept.history_category is not None and kept.target_category is not None
            same = kept.history_category[..., -1] == kept.target_category[:, None, -1]  # [B, K]
            far = kept.history_mask & (kept.history_position > g_min_back)  # [B, K]
            found.append((same & far).any(1).numpy())
    return np.concatenate(found)


def score(
    model: torch.nn.Module,
    search: SearchConfig,
    store: TrajectoryStore,
    L: int,
    truth: pl.DataFrame,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Test AUC overall and on memory targets (main users), the true probability's AUC on the same rows, and the
    share of far-memory impressions whose model input holds the memory."""
    started = time.perf_counter()
    out = predict(model, make_loader(store, "test", args.eval_batch_size, L), search=search)
    seconds = time.perf_counter() - started
    rows = pl.DataFrame(
        {
            "event_id": np.asarray(store.samples("test").event_id),
            "logit": out["logits"],
            "found": memory_in_input(model, search, store, L, args.eval_batch_size, args.g_min_back),
        }
    )
    rows = rows.join(truth, on="event_id", how="inner")  # main users only
    memory = rows.filter("memory_target")
    return {
        "auc": auc(rows["label"], rows["logit"]),
        "memory_auc": auc(memory["label"], memory["logit"]),
        "other_auc": auc(*rows.filter(~pl.col("memory_target")).select("label", "logit")),
        "oracle_auc": auc(rows["label"], rows["prob"]),
        "oracle_memory_auc": auc(memory["label"], memory["prob"]),
        "memory_found": float(rows.filter(pl.col("term_g") > 0)["found"].mean()),
        "test_rows": rows.height,
        "memory_rows": memory.height,
        "far_memory_rows": int((rows["term_g"] > 0).sum()),
        "eval_s": seconds,
    }


def part_a(
    store: TrajectoryStore, truth: pl.DataFrame, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[int, torch.nn.Module]]:
    rows, vql_models = [], {}
    for seed in args.seeds:
        for L in args.lengths:
            for method in args.methods:
                model, search, seconds = fit(method, L, seed, store, args)
                result = score(model, search, store, L, truth, args)
                rows.append({"method": method, "L": L, "seed": seed, "train_s": seconds, **result})
                print(
                    f"A seed {seed} L={L:6d} {method:16s} AUC {result['auc']:.4f}  memory AUC "
                    f"{result['memory_auc']:.4f}  other {result['other_auc']:.4f}  memory in input "
                    f"{result['memory_found']:.0%}  train {seconds:6.1f} s",
                    flush=True,
                )
                if method == "VQL" and max(args.lengths) == L and seed == args.seeds[0]:
                    vql_models[L] = model
    return rows, vql_models


def summarise_a(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and spread over seeds) per (method, L)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for L in sorted({r["L"] for r in rows}):
            group = [r for r in rows if r["method"] == method and r["L"] == L]
            if not group:
                continue
            entry: dict[str, Any] = {"method": method, "L": L, "seeds": len(group)}
            keys = (
                "auc",
                "memory_auc",
                "other_auc",
                "oracle_auc",
                "oracle_memory_auc",
                "memory_found",
                "train_s",
                "eval_s",
            )
            for key in keys:
                values = [r[key] for r in group]
                entry[key] = statistics.fmean(values)
                entry[f"{key}_spread"] = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
            out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------------------------
# B. VQL attention error vs L.


def part_b(
    store: TrajectoryStore, truth: pl.DataFrame, args: argparse.Namespace, trained: dict[str, torch.nn.Module]
) -> list[dict[str, Any]]:
    taken = {L: take_full(store, L, args.error_batch) for L in args.error_lengths}
    rows = []
    for codebooks, model_trained in trained.items():
        sizes = [int(x) for x in codebooks.split(",")]
        torch.manual_seed(0)
        fresh = build_model_for_sizes("vql", {"codebook_sizes": sizes}, store.sizes).eval()
        torch.manual_seed(0)
        flat = build_model_for_sizes("vql", {"codebook_sizes": sizes, "temporal": "none"}, store.sizes).eval()
        for state, model in ((FRESH, fresh), (FRESH_FLAT, flat), (TRAINED, model_trained.eval())):
            decay = (1 / model.decay()).tolist() if model.decay_raw is not None else []
            for L, (events, batch) in taken.items():
                error = attention_error(model, batch)  # [B]
                rows.append(
                    {
                        "codebooks": codebooks,
                        "state": state,
                        "L": L,
                        "error_mean": float(error.mean()),
                        "error_max": float(error.max()),
                        "B": len(batch),
                        "decay_scales": decay,
                        "event_ids": events,
                    }
                )
                print(
                    f"B codebooks [{codebooks}] {state:22s} L={L:7d} relative error mean {error.mean():.4f} "
                    f"max {error.max():.4f} (B = {len(batch)})",
                    flush=True,
                )
    return rows


def train_vql_models(
    store: TrajectoryStore, truth: pl.DataFrame, args: argparse.Namespace, part_a_vql: dict[int, torch.nn.Module]
) -> tuple[dict[str, torch.nn.Module], list[dict[str, Any]]]:
    """A trained VQL per codebook setting at part A's largest L: part A's own model for its codebooks, else trained
    here with the same recipe (seed = the first seed)."""
    L, seed = max(args.lengths), args.seeds[0]
    default = ",".join(str(s) for s in build_model_for_sizes("vql", {}, store.sizes).config.codebook_sizes)
    models, rows = {}, []
    for codebooks in args.codebooks:
        if codebooks == default and L in part_a_vql:
            models[codebooks] = part_a_vql[L]
            continue
        sizes = [int(x) for x in codebooks.split(",")]
        model, search, seconds = fit("VQL", L, seed, store, args, {"codebook_sizes": sizes})
        result = score(model, search, store, L, truth, args)
        rows.append({"method": f"VQL [{codebooks}]", "L": L, "seed": seed, "train_s": seconds, **result})
        print(f"B trained VQL [{codebooks}] at L={L}: AUC {result['auc']:.4f} memory {result['memory_auc']:.4f}")
        models[codebooks] = model
    return models, rows


# --------------------------------------------------------------------------------------------------------------------
# C. Memory.


def batch_memory(store: TrajectoryStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    M = store.taxonomy_levels
    E = int(store.arrays["extra"].shape[1]) if "extra" in store.arrays else 0
    per_behaviour = 45 + 8 * M + 8 * E
    rows = []
    for L in args.memory_lengths:
        _, batch = take_full(store, L, args.memory_batch)
        B = len(batch)
        fields = batch.fields()
        total = sum(v.element_size() * v.numel() for v in fields.values())
        history = sum(v.element_size() * v.numel() for v in fields.values() if v.dim() >= 2 and v.shape[1] == L)
        rows.append(
            {
                "L": L,
                "B": B,
                "M": M,
                "E": E,
                "bytes_per_sample": total / B,
                "history_bytes_per_sample": history / B,
                "formula_bytes_per_sample": L * per_behaviour,
                "store_bytes_per_behaviour": store.batch_bytes_per_behaviour(),
                "fields": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in fields.items()},
            }
        )
        print(
            f"C L={L:7d}: {total / B / 1e6:.3f} MB per sample measured (history fields {history / B / 1e6:.3f} MB), "
            f"formula L x (45 + 8M + 8E) = {L} x {per_behaviour} = {L * per_behaviour / 1e6:.3f} MB",
            flush=True,
        )
    return rows


def child(code: str, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=HERE, check=False
    )
    if out.returncode:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def search_memory(store: TrajectoryStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    L = max(args.memory_lengths)
    rows = []
    for label, chunk in (("auto (search.chunk = 0)", 0), ("unchunked (search.chunk = -1)", -1)):
        result = child(SEARCH_CHILD, str(store.root), str(L), str(chunk))
        result["keys_mb"] = result["B"] * L * result["key_width"] * 4 / 2**20
        rows.append({"setting": label, "chunk": chunk, **result})
        print(
            f"C soft search L={L} B={result['B']} {label}: peak +{result['peak_mb']:.0f} MB, {result['seconds']:.2f} s "
            f"(keys [B, L, {result['key_width']}] = {result['keys_mb']:.0f} MB)",
            flush=True,
        )
    same = rows[0].pop("positions") == rows[1].pop("positions")
    for r in rows:
        r["identical_to_unchunked"] = same
    return rows


def train_memory(store: TrajectoryStore, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Peak RSS and time per step of `train` at the largest L, fresh process per config."""
    L = max(args.lengths)
    configs = {
        "TWIN, soft search K": ["model.name=twin", "search.method=soft"],
        "TIN, category search K": ["model.name=tin", "search.method=category"],
        "DIN, recent L (no search)": ["model.name=din"],
        "VQL, whole history": ["model.name=vql"],
    }
    rows = []
    for label, sets in configs.items():
        sets = [
            *sets,
            f"search.k={args.k}",
            f"data.max_history={L}",
            f"train.batch_size={args.batch_size}",
            f"train.eval_batch_size={args.eval_batch_size}",
        ]
        result = child(
            TRAIN_CHILD, str(store.root), str(root / f"run-{len(rows)}"), str(args.memory_steps), json.dumps(sets)
        )
        rows.append({"config": label, "L": L, "batch_size": args.batch_size, "sets": sets, **result})
        print(
            f"C train {label} at L={L}: peak {result['peak_mb']:.0f} MB, {result['step_s']:.3f} s per step",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Output.


def plot(summary: list[dict[str, Any]], errors: list[dict[str, Any]], path: Path, g_min_back: int) -> None:
    import matplotlib

    with harness.figure(path, 2, (14, 5)) as axes:
        ax = axes[0]
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, method in enumerate(dict.fromkeys(r["method"] for r in summary)):
            sub = sorted((r for r in summary if r["method"] == method), key=lambda r: r["L"])
            Ls = [r["L"] for r in sub]
            colour = colours[i % len(colours)]
            ax.plot(Ls, [r["memory_auc"] for r in sub], marker="o", color=colour, label=method)
            ax.plot(Ls, [r["auc"] for r in sub], marker=".", linestyle=":", color=colour)
        oracle = max(summary, key=lambda r: r["L"])
        ax.axhline(oracle["oracle_memory_auc"], color="grey", linestyle="--", label="true probability (memory)")
        ax.axhline(0.5, color="black", linewidth=0.5)
        ax.axvline(g_min_back, color="grey", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("L (most recent behaviours collated)")
        ax.set_ylabel("test AUC")
        ax.set_title("memory-target AUC (solid), all impressions (dotted)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(True, which="both", alpha=0.3)
        ax = axes[1]
        for i, codebooks in enumerate(dict.fromkeys(r["codebooks"] for r in errors)):
            for state, style in ((FRESH, "--"), (FRESH_FLAT, ":"), (TRAINED, "-")):
                sub = sorted(
                    (r for r in errors if r["codebooks"] == codebooks and r["state"] == state), key=lambda r: r["L"]
                )
                ax.plot(
                    [r["L"] for r in sub],
                    [r["error_mean"] for r in sub],
                    marker="o",
                    linestyle=style,
                    color=colours[i % len(colours)],
                    label=f"[{codebooks}] {state}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("L")
        ax.set_ylabel("||o_quantized - o_exact|| / ||o_exact||")
        ax.set_title("VQL: quantized vs exact attention (mean over samples)")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)


def fmt(value: float, spread: float, seeds: int) -> str:
    return f"{value:.3f} ± {spread:.3f}" if seeds > 1 else f"{value:.3f}"


def render_a(summary: list[dict[str, Any]]) -> str:
    if not summary:
        return "(part A not run)"
    Ls = sorted({r["L"] for r in summary})
    header = [
        "method",
        *[f"AUC L={L:,}" for L in Ls],
        *[f"memory AUC L={L:,}" for L in Ls],
        "memory in input (largest L)",
        "train s (largest L)",
    ]
    out = []
    for method in dict.fromkeys(r["method"] for r in summary):
        by_L = {r["L"]: r for r in summary if r["method"] == method}
        row = [method]
        row += [fmt(by_L[L]["auc"], by_L[L]["auc_spread"], by_L[L]["seeds"]) if L in by_L else "—" for L in Ls]
        row += [
            fmt(by_L[L]["memory_auc"], by_L[L]["memory_auc_spread"], by_L[L]["seeds"]) if L in by_L else "—" for L in Ls
        ]
        row.append(f"{by_L[max(by_L)]['memory_found']:.0%}")
        row.append(f"{by_L[max(by_L)]['train_s']:.0f}")
        out.append(row)
    top = summary[0]
    out.append(
        [
            "true probability",
            *[f"{top['oracle_auc']:.3f}"] * len(Ls),
            *[f"{top['oracle_memory_auc']:.3f}"] * len(Ls),
            "—",
            "—",
        ]
    )
    return harness.markdown_table(header, out)


def render_b(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "(part B not run)"
    Ls = sorted({r["L"] for r in errors})
    header = ["codebooks", "model", *[f"L={L:,}" for L in Ls], "learned 1/λ per group (behaviours)"]
    out = []
    for codebooks in dict.fromkeys(r["codebooks"] for r in errors):
        for state in (FRESH, FRESH_FLAT, TRAINED):
            by_L = {r["L"]: r for r in errors if r["codebooks"] == codebooks and r["state"] == state}
            if not by_L:
                continue
            decay = next(iter(by_L.values()))["decay_scales"]
            out.append(
                [
                    f"[{codebooks}]",
                    state,
                    *[f"{by_L[L]['error_mean']:.4f}" for L in Ls],
                    ", ".join(f"{d:.0f}" for d in decay) or "— (no kernel)",
                ]
            )
    return harness.markdown_table(header, out)


def render_c(
    batch_rows: list[dict[str, Any]], search_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]
) -> str:
    t1 = harness.markdown_table(
        ["L", "measured MB / sample", "of which L-axis fields", "formula L·(45+8M+8E)", "measured / formula"],
        [
            [
                f"{r['L']:,}",
                f"{r['bytes_per_sample'] / 1e6:.3f}",
                f"{r['history_bytes_per_sample'] / 1e6:.3f}",
                f"{r['formula_bytes_per_sample'] / 1e6:.3f} (M={r['M']}, E={r['E']})",
                f"{r['bytes_per_sample'] / r['formula_bytes_per_sample']:.4f}",
            ]
            for r in batch_rows
        ],
    )
    t2 = harness.markdown_table(
        [
            "soft search (TWIN, K)",
            "L",
            "B",
            "peak RSS above start (MB)",
            "keys [B, L, E] (MB)",
            "seconds",
            "same result",
        ],
        [
            [
                r["setting"],
                f"{r['L']:,}",
                str(r["B"]),
                f"{r['peak_mb']:.0f}",
                f"{r['keys_mb']:.0f}",
                f"{r['seconds']:.2f}",
                "yes" if r["identical_to_unchunked"] else "NO",
            ]
            for r in search_rows
        ],
    )
    t3 = harness.markdown_table(
        ["training (`longrec train`)", "L", "batch", "peak RSS (MB)", "s / step (median)", "samples / s"],
        [
            [
                r["config"],
                f"{r['L']:,}",
                str(r["batch_size"]),
                f"{r['peak_mb']:.0f}",
                f"{r['step_s']:.3f}",
                f"{r['batch_size'] / r['step_s']:.0f}",
            ]
            for r in train_rows
        ],
    )
    return t1 + "\n\n" + t2 + "\n\n" + t3


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.update_readme and sorted(args.parts) != ["A", "B", "C"]:
        raise SystemExit("--update-readme needs every part (--parts A B C)")
    if args.quick:
        args.users, args.events, args.impressions = 40, 2500, 10
        args.long_users, args.long_events, args.long_impressions = 2, 15_000, 20
        args.g_min_back, args.lengths, args.seeds = 300, [100, 1000], [0]
        args.error_lengths, args.memory_lengths, args.memory_steps = [100, 1000, 10_000], [1000, 10_000], 3
    reuse_freed_memory()
    store, truth, data_stats = make_store(args, harness.Stores(args.cache))
    print(f"data: {data_stats}", flush=True)
    rows_a, vql_models = part_a(store, truth, args) if "A" in args.parts else ([], {})
    trained, extra_rows = train_vql_models(store, truth, args, vql_models) if "B" in args.parts else ({}, [])
    errors = part_b(store, truth, args, trained) if "B" in args.parts else []
    batch_rows = batch_memory(store, args) if "C" in args.parts else []
    search_rows = search_memory(store, args) if "C" in args.parts else []
    train_rows = (
        train_memory(store, args, args.work or Path(tempfile.mkdtemp(prefix="bench-long-")))
        if "C" in args.parts
        else []
    )
    summary = summarise_a(rows_a + extra_rows)
    if summary and errors:
        plot(summary, errors, args.png, args.g_min_back)
    return {
        "png": harness.relative(args.png),
        "data": data_stats,
        "accuracy": {"runs": rows_a + extra_rows, "summary": summary},
        "vql_error": errors,
        "batch_memory": batch_rows,
        "search_memory": search_rows,
        "train_memory": train_rows,
    }


def render(payload: dict[str, Any]) -> str:
    config, data = payload["config"], payload["data"]
    plural = "s" if config["epochs"] > 1 else ""
    return (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)}\n\n"
        "Docs: [docs/long_histories.md](../docs/long_histories.md).\n\n"
        + textwrap.dedent(
            f"""\
            **A. Accuracy vs L with long-range planted relevance.** Synthetic mechanisms (a) + (g):
            {config["users"]} users with {config["events"]:,} ± 20% behaviours, {config["impressions"]} labelled
            impressions each (Protocol T split 0.7 / 0.1 / 0.2 by time: {data["samples"]["train"]:,} train,
            {data["samples"]["test"]:,} test samples), {data["memory_spus"]} memory SPUs, each user's
            3 memories are their oldest behaviours, w_g = {config["weight_g"]}, and only memories more than
            g_min_back = {config["g_min_back"]:,} behaviours back count. Every method is trained at each L (the L
            most recent behaviours) for {config["epochs"]} epoch{plural}, batch {config["batch_size"]}, Adam lr
            {config["lr"]}, seeds {config["seeds"]} (mean ± half-range), the last model scored; search keeps K =
            {config["k"]}; category search matches the finest level (SPU). Metrics on the main users' test impressions
            ({config["long_users"]} long users of {config["long_events"]:,} behaviours, there for parts B and C, are in
            training only). "memory AUC" = AUC on the test impressions whose target is a memory SPU; "true
            probability" = AUC of the generator's label probability on the same rows; "memory in input" = share
            of the far-memory test impressions whose model input (K searched, or L collated behaviours) holds the
            far memory.
            """
        ).replace("\n", " ")
        + "\n\n"
        + render_a(payload["accuracy"]["summary"])
        + "\n\n"
        + textwrap.dedent(
            f"""\
            **B. VQL: quantized vs exact attention** (`attention_error`, mean over {config["error_batch"]} real
            histories of exactly L behaviours per L; L = 10^5 from the long users). Fresh = initialised (seed 0)
            with the default position kernel (1/λ from 8 to 512 behaviours) or with `temporal = "none"`; trained
            = part A's recipe at L = {max(config["lengths"]):,}, seed {config["seeds"][0]}.
            """
        ).replace("\n", " ")
        + "\n\n"
        + render_b(payload["vql_error"])
        + "\n\n"
        + f"**C. Memory.** Collated `Batch` bytes per sample (tensor nbytes; B = {config['memory_batch']} samples with "
        + "at least L behaviours); soft-search peak RSS and training peak RSS, each in a fresh subprocess (VmHWM).\n\n"
        + render_c(payload["batch_memory"], payload["search_memory"], payload["train_memory"])
        + f"\n\n![long histories]({harness.readme_link(payload['png'])})"
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "long_history", seeds=[0, 1], threads=2, png=True, scratch=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (about a minute): a smoke run, not results")
    parser.add_argument("--users", type=int, default=300, help="main users")
    parser.add_argument("--events", type=int, default=8000, help="mean behaviours per main user (uniform +-20%%)")
    parser.add_argument("--impressions", type=int, default=20, help="labelled impressions per user")
    parser.add_argument("--long-users", type=int, default=4, help="users with --long-events behaviours (parts B, C)")
    parser.add_argument("--long-events", type=int, default=120_000)
    parser.add_argument("--long-impressions", type=int, default=24)
    parser.add_argument("--g-min-back", type=int, default=1000, help="(g): only memories this far back count")
    parser.add_argument("--weight-g", type=float, default=4.0, help="(g): logit added by a far memory match")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 1000, 10_000], help="part A: max_history L")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--k", type=int, default=50, help="behaviours kept by search")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--error-lengths", nargs="+", type=int, default=[100, 1000, 10_000, 100_000], help="part B")
    parser.add_argument("--error-batch", type=int, default=8, help="part B: histories per L")
    parser.add_argument("--codebooks", nargs="+", default=["8,32", "64,256"], help="part B: VQL codebook sizes")
    parser.add_argument("--memory-lengths", nargs="+", type=int, default=[1000, 10_000, 100_000], help="part C")
    parser.add_argument("--memory-batch", type=int, default=8, help="part C: samples per collated batch")
    parser.add_argument("--memory-steps", type=int, default=10, help="part C: training steps per measured config")
    parser.add_argument("--parts", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"], help="what to run")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "long-history", measure, render)
