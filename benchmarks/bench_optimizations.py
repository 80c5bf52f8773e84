"""The system options of `longrec train`, each against the plain path in the same run: what does each one buy here?

Question: `longrec train` has six system options, all off by default (src/longrec/train/loop.py lists them). On this
machine, how much faster (or slower) does each make training, and does it change what is computed?

Rows (the plain path is the default code; "optimized" switches one option on and nothing else):
1. keys: key collection (`train.key_collection`, `longrec.models.layers.collect_keys`) on `train_step`, for DIN, TWIN
   and DARE at L = 100 and L = 1000 (same synthetic store), at L = 100 on the Taobao slice and at L = 1000 on the
   "wide" store. What it feeds on is in the note: distinct / total item ids over the non-padded history cells of a
   timed batch (repeats), and distinct ids / rows of the item table (how much of the table a batch touches).
2. bf16: `train_step(..., precision="bf16")` (CPU autocast) vs fp32; parity = max |logit difference| of the fp32
   model's forward with and without autocast on one batch (same weights), next to the largest |logit|. The CPU's
   bf16 flags (avx512_bf16, amx_bf16 in /proc/cpuinfo) and a bf16-vs-fp32 GEMM timing are printed beside it.
3. workers: `data.num_workers` = 1 and 2 vs 0, end to end: `make_loader` + `train_step` over one epoch.
4. bucketing: `data.bucket_by_length` (`epoch_batches(..., lengths=...)`) vs not, end to end over one epoch of the
   Taobao slice with a large max_history (its histories run from 1 to ~500 behaviours); the note gives the padding
   fraction (padded cells / all cells of the collated [B, L] batches) of both.
5. compile: `longrec.train.loop.compile_model` (torch.compile) vs eager on `train_step`, after warm-up; the compile
   (the compiled path's warm-up steps beyond eager's, with a cold inductor cache under a fresh --work) is reported
   separately, with dynamo's graph-break count. Where torch.compile cannot run (no C++ compiler), the row carries
   the RuntimeError's message.
6. gpu: `DevicePrefetcher` with pinned batches vs plain `.to(device)`; measured only where `torch.cuda.is_available()`.

Method: each path of a row keeps its own model and Adam optimizer, built from seed 0, and every path of a row trains on
the same batches in the same order, so their losses can be compared step by step (the parity column; bucketing
regroups the samples, so its losses differ by design). The paths alternate and the fastest round counts (timeit's
rule: the machine is shared, and load from other processes only ever slows a step down):
- step rows (keys, bf16, compile) time `train_step` alone on pre-collated full batches, the paths alternating step by
  step (plain, optimized, plain, optimized, ...) so that both see the same load; `--rounds` passes over `--warmup` +
  `--steps` batches, the first `--warmup` steps of each pass untimed. Samples/s = Σ samples / Σ over timed steps of
  that step's fastest pass;
- epoch rows (workers, bucketing, gpu) time collate + step end to end over one epoch of `make_loader` (seed 0, epoch
  0; `--epoch-batches` caps it), the paths alternating epoch by epoch, `--rounds` epochs each. Bucketing counts each
  batch's fastest epoch, as step rows do (with in-process collation every batch is independent); workers and gpu
  count the fastest whole epoch, because a pipelined loader's wait for one batch depends on the others, and that
  epoch includes starting the workers, as every epoch of `longrec train` does (persistent_workers=False).
The JSON also keeps every round's rate and the median over steps of the paired time ratio (plain / optimized).
Models and search as in bench_throughput.py (the harness's `PROTOCOL_A`: dim 16, DIN over the whole history, TWIN/DARE
soft search K = 20 + auxiliary loss; Adam lr 0.01, L2 1e-6), each path timed by the harness's `Trainer`,
`torch.set_num_threads(--threads)`, `reuse_freed_memory()` as `longrec train` does. Data: the Taobao slice under
Protocol A (the harness's `Stores.taobao`; user filter 50 behaviours), a synthetic store with long histories
(`longrec.ingest.synthetic`, ~1500 behaviours per user, Protocol T) and a "wide" synthetic store (twice the users,
4 impressions each, 2M content items under a flat popularity), where a batch touches a small share of a large item
table. The default run takes 5-10 minutes on a 2-core machine, depending
on its load; --quick (DARE only, small batches, no compile) about a minute.

Run:       python benchmarks/bench_optimizations.py --update-readme
Quick:     python benchmarks/bench_optimizations.py --quick --json /tmp/optimizations.json
Re-render: python benchmarks/bench_optimizations.py --from-json benchmarks/results/optimizations.json --update-readme
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import _harness as harness
import torch
from _harness import PROTOCOL_A as MODELS
from _harness import Trainer

from longrec.data.batch import Batch
from longrec.data.dataset import collate, epoch_batches, make_loader
from longrec.data.device import DevicePrefetcher
from longrec.data.store import TrajectoryStore
from longrec.ingest.synthetic import SyntheticConfig
from longrec.models.layers import collect_keys
from longrec.train.step import compile_model, reuse_freed_memory

DATA = ("taobao", "synthetic", "wide")  # the stores a setting can name (see `main`)
OPTIMIZATIONS = ("keys", "bf16", "workers", "bucketing", "compile", "gpu")
LR, L2 = 0.01, 1e-6
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")


# ---------------------------------------------------------------------------------------------------- data
def synthetic_store(stores: harness.Stores, **knobs: Any) -> tuple[Path, str]:
    """A synthetic store (`SyntheticConfig(**knobs)`, Protocol T on the generator's labelled impressions)."""
    config = SyntheticConfig(**knobs)
    store = stores.synthetic(**knobs)
    num_items = store.open().sizes["num_items"]
    return store.path, (
        f"synthetic ({config.num_users} users, ~{config.events_per_user} behaviours and {config.impressions_per_user} "
        f"impressions each, {num_items:,} items seen; Protocol T)"
    )


class Data:
    """The prepared stores, opened once, and the samples of their train splits."""

    def __init__(self, stores: dict[str, tuple[Path, str]]) -> None:
        self.lines = {name: line for name, (_, line) in stores.items()}
        self.stores = {name: TrajectoryStore.open(path) for name, (path, _) in stores.items()}

    def batches(self, data: str, L: int, B: int, n: int) -> list[Batch]:
        """The first `n` full batches of epoch 0 (seed 0), collated at max_history L: the batches a step row times."""
        store = self.stores[data]
        samples = store.samples("train")
        plan = [index for index in epoch_batches(len(samples), B, True, 0, 0) if len(index) == B]
        if len(plan) < n:
            raise SystemExit(
                f"{data}: {len(plan)} full batches of {B}, but a step row needs {n}; lower the batch size."
            )
        return [collate(store, samples, index, L) for index in plan[:n]]


def unique_ratio(batch: Batch) -> tuple[float, int]:
    """Distinct / total item ids over the non-padded history cells (lower = more repeats), and the distinct count."""
    ids = batch.history[batch.history_mask]  # [N]
    distinct = ids.unique().numel()
    return distinct / max(ids.numel(), 1), distinct


def padding_fraction(batches: Iterable[Batch]) -> float:
    padded = total = 0
    for batch in batches:
        padded += int((~batch.history_mask).sum())
        total += batch.history_mask.numel()
    return padded / max(total, 1)


def slowest_growth(plain: Trainer, optimized: Trainer, batch: Batch, top: int = 2) -> list[tuple[str, float]]:
    """The ops whose self CPU time grew most from `plain` to `optimized` in one profiled step each (op [shapes], ms)."""
    times = []
    for t in (plain, optimized):
        with torch.profiler.profile(record_shapes=True) as prof:
            t.step(batch)
        by_op: dict[str, float] = {}
        for event in prof.key_averages(group_by_input_shape=True):
            shapes = [s for s in event.input_shapes if s]
            key = f"{event.key} {shapes}".replace(" ", "") if shapes else event.key
            by_op[key] = by_op.get(key, 0.0) + event.self_cpu_time_total / 1e3
        times.append(by_op)
    growth = sorted(((ms - times[0].get(op, 0.0), op) for op, ms in times[1].items()), reverse=True)
    return [(op, ms) for ms, op in growth[:top]]


def cpu_flags() -> dict[str, bool]:
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {flag: flag in flags for flag in BF16_FLAGS}


def gemm_bf16_ratio(rows: int = 409_600, inner: int = 64, out: int = 80) -> float:
    """bf16 / fp32 time of one [rows, inner] @ [inner, out] matmul (DIN's scorer at B·L = 2048·200), best of 5."""
    a, b = torch.randn(rows, inner), torch.randn(inner, out)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        torch.mm(x, y)
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(x, y)
            best = min(best, time.perf_counter() - t)
        times[dtype] = best
    return times[torch.bfloat16] / times[torch.float32]


# ---------------------------------------------------------------------------------------------------- paths
def path(
    model: str, store: TrajectoryStore, compiled: bool = False, device: torch.device | None = None, **options: Any
) -> Trainer:
    """One path of a row: its own model (seed 0) and Adam, trained by `train_step` with `options` (precision,
    context)."""
    net, search = harness.protocol_a_model(model, store.sizes)
    net = net.to(device) if device is not None else net
    if compiled:
        compile_model(net)  # RuntimeError where torch.compile cannot run
    return Trainer(net, search, LR, L2, **options)


def alternate(paths: dict[str, Callable[[], float]], rounds: int) -> None:
    """Run the paths' rounds interleaved (a, b, a, b, ...), `rounds` each."""
    for _ in range(rounds):
        for run in paths.values():
            run()


def loader_round(t: Trainer, store: TrajectoryStore, B: int, L: int, limit: int, **options: Any) -> float:
    """One epoch (seed 0, epoch 0) of `make_loader(..., **options)` on `store`, collate + step end to end."""
    return t.epoch(make_loader(store, "train", B, L, shuffle=True, **options), limit).rate


def epoch_note(t: Trainer, limit: int) -> str:
    n = len(t.rounds[-1].sizes)
    return f"collate+step over {'the first ' if limit and n == limit else 'the whole epoch, '}{n} batches"


def describe_losses(plain: Trainer, optimized: Trainer) -> str:
    """How far apart two paths' losses are, step by step (same seed, same batches, same order)."""
    diff = max((abs(x - y) for x, y in zip(plain.losses, optimized.losses, strict=True)), default=0.0)
    n = len(plain.losses)
    return f"same losses over {n} steps" if diff == 0.0 else f"max |Δloss| {diff:.1e} over {n} steps"


def row(
    optimization: str,
    model: str,
    setting: str,
    parity: str,
    notes: str,
    paths: tuple[Trainer, Trainer] | None = None,
    per_step: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One table row. With `paths` (plain, optimized): their rates, from each step's fastest round (`best_rate`) or,
    with `per_step=False` (pipelined loaders, where one batch's wait depends on the others), the best whole round."""
    out: dict[str, Any] = {"optimization": optimization, "model": model, "setting": setting}
    out |= {"parity": parity, "notes": notes, **extra}
    if paths is not None:
        rates = [t.best_rate() if per_step else max(r.rate for r in t.rounds) for t in paths]
        out |= {"plain": rates[0], "optimized": rates[1], "speedup": rates[1] / rates[0]}
        out["round_rates"] = {
            "plain": [r.rate for r in paths[0].rounds],
            "optimized": [r.rate for r in paths[1].rounds],
        }
        out["estimate"] = "per-step minimum over rounds" if per_step else "best round"
        pairs = [
            a / b
            for ra, rb in zip(paths[0].rounds, paths[1].rounds, strict=True)
            for a, b in zip(ra.times, rb.times, strict=True)
        ]
        out["paired_median_speedup"] = statistics.median(pairs)  # per step (or batch): plain time / optimized time
    measured = (
        f"{out['plain']:8,.0f}/s -> {out['optimized']:8,.0f}/s ({out['speedup']:.2f}x)  " if paths is not None else ""
    )
    print(f"{optimization:20s} {model:5s} {setting:38s} {measured}{parity}; {notes}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------- rows
def keys_rows(data: Data, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, L, B in args.key_settings:
        batches = data.batches(name, L, B, args.warmup + args.steps)
        counted = [unique_ratio(b) for b in batches]
        ratio = statistics.median(r for r, _ in counted)
        touched = statistics.median(n for _, n in counted) / data.stores[name].sizes["num_items"]
        for model in args.models:
            plain = path(model, data.stores[name])
            collected = path(model, data.stores[name], context=collect_keys)
            harness.alternate_steps((plain, collected), batches, args.warmup, args.rounds)
            same = torch.equal(plain.logits(batches[0]), collected.logits(batches[0]))
            parity = ("identical logits" if same else "logits differ") + "; " + describe_losses(plain, collected)
            setting = f"{name} L={L} B={B}"
            notes = f"unique items {ratio:.1%} of the batch's, {touched:.0%} of the item table's rows"
            rows.append(
                row(
                    "key collection",
                    model,
                    setting,
                    parity,
                    notes,
                    (plain, collected),
                    unique_ratio=ratio,
                    table_rows_touched=touched,
                )
            )
    return rows


def bf16_rows(data: Data, args: argparse.Namespace, flags: dict[str, bool], gemm_ratio: float) -> list[dict[str, Any]]:
    name, L, B = args.step_setting
    batches = data.batches(name, L, B, args.warmup + args.steps)
    have = [f for f, on in flags.items() if on and f != "avx512f"]
    lacks = [f for f, on in flags.items() if not on]
    cpu = f"CPU has {', '.join(have) or 'no bf16 flag'}, lacks {', '.join(lacks) or 'nothing'}"
    rows = []
    for model in args.models:
        fp32 = path(model, data.stores[name])
        bf16 = path(model, data.stores[name], precision="bf16")
        harness.alternate_steps((fp32, bf16), batches, args.warmup, args.rounds)
        reference, low = fp32.logits(batches[0]), fp32.logits(batches[0], "bf16")  # [B] each, same weights
        diff, scale = float((low - reference).abs().max()), float(reference.abs().max())
        parity = f"max |Δlogit| {diff:.3f} (max |logit| {scale:.2f}); losses: {describe_losses(fp32, bf16)}"
        growth = slowest_growth(fp32, bf16, batches[0])
        notes = f"{cpu}; bf16 GEMM {gemm_ratio:.2f}x fp32 time; most added time (profiled step): " + ", ".join(
            f"{op} {ms:+.0f} ms" for op, ms in growth
        )
        rows.append(
            row(
                "bf16 autocast",
                model,
                f"{name} L={L} B={B}",
                parity,
                notes,
                (fp32, bf16),
                growth=growth,
                logit_max_abs_diff=diff,
                logit_max_abs=scale,
            )
        )
    return rows


def workers_rows(data: Data, args: argparse.Namespace) -> list[dict[str, Any]]:
    name, L, B = args.step_setting
    store = data.stores[name]
    warm = data.batches(name, L, B, 1)[0]
    padding_fraction(make_loader(store, "train", B, L, shuffle=True))  # touch the store's pages once, untimed
    rows = []
    for model in args.models:
        trainers = {w: path(model, store) for w in args.workers}
        for t in trainers.values():
            t.step(warm)  # first-step allocations, untimed

        def run(w: int, t: Trainer) -> float:
            loader = make_loader(
                store, "train", B, L, shuffle=True, num_workers=w, prefetch_factor=args.prefetch_factor
            )
            return t.epoch(loader, args.epoch_batches).rate

        alternate({str(w): partial(run, w, t) for w, t in trainers.items()}, args.rounds)
        base = args.workers[0]
        for w in args.workers[1:]:
            plain, workers = trainers[base], trainers[w]
            # the first batch's wait and step, each the fastest over rounds; the rate of the batches after it
            first = {k: [min(r.waits[0] for r in t.rounds), min(r.steps[0] for r in t.rounds)]
                     for k, t in ((0, plain), (1, workers))}  # fmt: skip
            later = [max(sum(r.sizes[1:]) / sum(r.times[1:]) for r in t.rounds) for t in (plain, workers)]
            rows.append(
                row(
                    "prefetching workers",
                    model,
                    f"{name} L={L} B={B}, {w} vs {base} workers",
                    describe_losses(plain, workers),
                    f"{epoch_note(plain, args.epoch_batches)}, prefetch_factor {args.prefetch_factor}; first batch: "
                    f"wait {first[1][0]:.2f} s + step {first[1][1]:.2f} s (in-process {first[0][0]:.2f} + "
                    f"{first[0][1]:.2f} s); after it {later[1] / later[0]:.2f}x",
                    (plain, workers),
                    per_step=False,
                    first_batch={"wait": first[1][0], "step": first[1][1]},
                    first_batch_in_process={"wait": first[0][0], "step": first[0][1]},
                    speedup_after_first_batch=later[1] / later[0],
                )
            )
    return rows


def bucketing_rows(data: Data, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, L, B in args.bucket_settings:
        store = data.stores[name]
        padding = {
            flag: padding_fraction(make_loader(store, "train", B, L, shuffle=True, bucket_by_length=flag))
            for flag in (False, True)
        }
        warm = data.batches(name, L, B, 1)[0]
        for model in args.models:
            trainers = {flag: path(model, store) for flag in (False, True)}
            for t in trainers.values():
                t.step(warm)

            alternate(
                {
                    str(f): partial(loader_round, t, store, B, L, args.epoch_batches, bucket_by_length=f)
                    for f, t in trainers.items()
                },
                args.rounds,
            )
            samples = len(store.samples("train"))
            rows.append(
                row(
                    "bucketing by length",
                    model,
                    f"{name} max_history={L} B={B}",
                    f"same {samples:,} samples, regrouped",
                    f"padding {padding[False]:.0%} -> {padding[True]:.0%} (whole epoch); "
                    + epoch_note(trainers[False], args.epoch_batches),
                    (trainers[False], trainers[True]),
                    padding_plain=padding[False],
                    padding_bucketed=padding[True],
                )
            )
    return rows


def compile_rows(data: Data, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    name, L, B = args.step_setting
    setting = f"{name} L={L} B={B}"
    cache = work / "inductor-cache"  # fresh under a new --work: the compile time is the cold one
    cache_state = "warm cache" if cache.exists() else "cold cache"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    warmup = max(args.warmup, 2)  # a second compile can come at step 2 (the optimizer's state appears)
    batches = data.batches(name, L, B, warmup + args.steps)
    rows = []
    for model in args.compile_models:
        eager = path(model, data.stores[name])
        torch._dynamo.utils.counters.clear()
        try:
            compiled = path(model, data.stores[name], compiled=True)
            harness.alternate_steps((eager, compiled), batches, warmup, args.rounds)
        except RuntimeError as error:  # no C++ compiler, an unsupported Python, or inductor failing
            message = str(error).strip().splitlines()[0][:300]
            print(f"torch.compile failed for {model}: {error}", file=sys.stderr)
            rows.append(row("torch.compile", model, setting, "—", f"not measured: {message}"))
            continue
        compile_s = sum(compiled.rounds[0].warmup) - sum(eager.rounds[0].warmup)
        breaks = torch._dynamo.utils.counters["graph_break"]  # reason -> count, over this model's compilation
        notes = f"compile {compile_s:.0f} s (first {warmup} steps, {cache_state}, beyond eager's); " + (
            f"{sum(breaks.values())} graph break(s), e.g. {next(iter(breaks)).splitlines()[0][:90]}"
            if breaks
            else "no graph break"
        )
        rows.append(
            row(
                "torch.compile",
                model,
                setting,
                describe_losses(eager, compiled),
                notes,
                (eager, compiled),
                compile_s=compile_s,
                batch_size=B,
                graph_breaks=dict(breaks),
            )
        )
    return rows


def gpu_rows(data: Data, args: argparse.Namespace) -> list[dict[str, Any]]:
    name, L, B = args.step_setting
    if not torch.cuda.is_available():
        note = f"not measured: no GPU (torch.cuda.is_available() is False; torch {torch.__version__})"
        return [row("GPU prefetch + pinned memory", "—", "—", "—", note)]
    device = torch.device("cuda")
    store = data.stores[name]
    rows = []
    for model in args.models:
        trainers = {p: path(model, store, device=device) for p in ("to", "prefetcher")}
        warm = data.batches(name, L, B, 1)[0].to(device)
        for t in trainers.values():
            t.step(warm)

        def run(kind: str, t: Trainer) -> float:
            loader = make_loader(store, "train", B, L, shuffle=True, pin_memory=kind == "prefetcher")
            batches = DevicePrefetcher(loader, device) if kind == "prefetcher" else (b.to(device) for b in loader)
            torch.cuda.synchronize()
            return t.epoch(batches, args.epoch_batches, sync=torch.cuda.synchronize).rate

        alternate({p: partial(run, p, t) for p, t in trainers.items()}, args.rounds)
        rows.append(
            row(
                "GPU prefetch + pinned memory",
                model,
                f"{name} L={L} B={B}, {torch.cuda.get_device_name(device)}",
                describe_losses(trainers["to"], trainers["prefetcher"]),
                "plain = pageable batches, .to(device); optimized = DevicePrefetcher, pinned, side stream",
                (trainers["to"], trainers["prefetcher"]),
                per_step=False,
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    header = ["optimization", "model", "setting", "plain (samples/s)", "optimized (samples/s)", "speed-up"]
    header += ["parity", "notes"]
    out = []
    for r in rows:
        measured = "speedup" in r
        out.append(
            [
                r["optimization"],
                r["model"],
                r["setting"],
                f"{r['plain']:,.0f}" if measured else "—",
                f"{r['optimized']:,.0f}" if measured else "—",
                f"{r['speedup']:.2f}x" if measured else "—",
                r["parity"],
                r["notes"],
            ]
        )
    return harness.markdown_table(header, out)


def parse_setting(text: str) -> tuple[str, int, int]:
    """'data:L:B' -> (data, L, B)."""
    name, L, B = text.split(":")
    if name not in DATA:
        raise argparse.ArgumentTypeError(f"data must be one of {', '.join(DATA)}. Got {name!r} instead.")
    return name, int(L), int(B)


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill the options left unset with the full run's values, or --quick's."""
    quick = args.quick
    defaults: dict[str, Any] = {
        "optimizations": [o for o in OPTIMIZATIONS if o != "compile"] if quick else list(OPTIMIZATIONS),
        "models": ["DARE"] if quick else list(MODELS),
        "compile_models": ["DARE"] if quick else ["DIN", "DARE"],
        "key_settings": [("synthetic", 100, 256), ("synthetic", 1000, 64)]
        if quick
        else [("synthetic", 100, 2048), ("synthetic", 1000, 512), ("taobao", 100, 2048), ("wide", 1000, 512)],
        "step_setting": ("taobao", 200, 256) if quick else ("taobao", 200, 2048),
        "bucket_settings": [("taobao", 500, 256)] if quick else [("taobao", 500, 2048)],
        "rounds": 2 if quick else 3,
        "steps": 2 if quick else 3,
        "synthetic_users": 100 if quick else 1000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick and args.epoch_batches == 0:
        args.epoch_batches = 6


def measure(args: argparse.Namespace) -> dict[str, Any]:
    chosen = args.optimizations is not None
    apply_defaults(args)
    allocator = "reuse_freed_memory()" if reuse_freed_memory() else "glibc default"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-optimizations-"))
    stores = harness.Stores(args.cache)
    needs = {s[0] for s in args.key_settings if "keys" in args.optimizations}
    needs |= {s[0] for s in args.bucket_settings if "bucketing" in args.optimizations}
    if set(args.optimizations) & {"bf16", "workers", "compile", "gpu"}:
        needs.add(args.step_setting[0])
    paths = {}
    if "taobao" in needs:
        taobao = stores.taobao(args.min_behaviours)
        paths["taobao"] = (taobao.path, taobao.info["line"])
    if "synthetic" in needs:
        paths["synthetic"] = synthetic_store(stores, num_users=args.synthetic_users, events_per_user=1500)
    if "wide" in needs:  # many users, few impressions each, a flat popularity: a batch touches few of the item rows
        paths["wide"] = synthetic_store(
            stores,
            num_users=args.synthetic_users * 2,
            events_per_user=1000,
            impressions_per_user=4,
            num_content_items=2_000_000,
            zipf_exponent=0.6,
        )
    data = Data(paths)
    for name, line in data.lines.items():
        print(f"{name}: {line}; {len(data.stores[name].samples('train')):,} training samples", file=sys.stderr)
    flags = cpu_flags()
    gemm_ratio = gemm_bf16_ratio()
    print(f"CPU flags: {flags}; bf16 GEMM takes {gemm_ratio:.2f}x the fp32 time; allocator {allocator}")

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for optimization in args.optimizations:
        if optimization == "keys":
            rows += keys_rows(data, args)
        elif optimization == "bf16":
            rows += bf16_rows(data, args, flags, gemm_ratio)
        elif optimization == "workers":
            rows += workers_rows(data, args)
        elif optimization == "bucketing":
            rows += bucketing_rows(data, args)
        elif optimization == "compile":
            rows += compile_rows(data, args, work)
        elif optimization == "gpu":
            rows += gpu_rows(data, args)
        print(f"[{optimization}: done at {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    if args.quick and not chosen:
        rows.append(row("torch.compile", "—", "—", "—", "skipped by --quick (--optimizations compile)"))
    return {"cpu_flags": flags, "gemm_bf16_over_fp32": gemm_ratio, "allocator": allocator, "data": data.lines,
            "rows": rows}  # fmt: skip


def render(payload: dict[str, Any]) -> str:
    config, data = payload["config"], payload["data"]
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        "Data: "
        + "; ".join(f"{k} = {data[k]}" for k in DATA if k in data)  # in DATA's order (the JSON sorts its keys)
        + ". Each row switches one system option of `longrec train` on against the plain path (the default code), "
        f"{config['threads']} torch threads. Step rows (key collection, bf16, compile) time `train_step` alone on "
        f"pre-collated full batches, plain and optimized alternating step by step, {config['rounds']} passes of "
        f"{config['warmup']} warm-up + {config['steps']} timed steps; each timed step's fastest pass counts. Epoch "
        "rows (workers, bucketing) time `make_loader` + `train_step` end to end over one epoch, alternating epoch by "
        f"epoch, {config['rounds']} epochs per path; bucketing counts each batch's fastest epoch, workers the fastest "
        "whole epoch (worker start-up included, as in every epoch of `longrec train`). Every path trains its own "
        "model from seed 0 on the same batches in the same order, so 'parity' compares their losses step by step "
        "(bf16 also: the fp32 model's logits with and without autocast on one batch). 'unique items' = distinct / "
        "total item ids in the non-padded history cells of a batch, and distinct ids / rows of the item table; "
        f"'padding' = padded / all cells of the collated batches over the epoch. Allocator: {payload['allocator']}."
        "\n\n" + table(payload["rows"])
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "optimizations", threads=2, scratch=True)
    parser.add_argument(
        "--optimizations",
        nargs="+",
        choices=OPTIMIZATIONS,
        default=None,
        metavar="OPT",
        help=f"which rows, of {', '.join(OPTIMIZATIONS)} (default: all; --quick: all but compile)",
    )
    models = {"nargs": "+", "default": None, "choices": list(MODELS), "metavar": "MODEL"}
    parser.add_argument("--models", **models, help="models of every row (default DIN TWIN DARE; --quick: DARE)")
    parser.add_argument(
        "--compile-models", **models, help="models of the compile rows (default: DIN DARE; each compiles for ~20-60 s)"
    )
    setting = {"type": parse_setting, "default": None, "metavar": "DATA:L:B"}
    parser.add_argument(
        "--key-settings",
        nargs="+",
        **setting,
        help="key collection settings, DATA one of taobao, synthetic, wide (default synthetic:100:2048 "
        "synthetic:1000:512 taobao:100:2048 wide:1000:512; B = 512 at L = 1000 because DIN at B = 2048 peaks at ~7 GB)",
    )
    parser.add_argument(
        "--step-setting", **setting, help="setting of the bf16, workers, compile and gpu rows (default taobao:200:2048)"
    )
    parser.add_argument("--bucket-settings", nargs="+", **setting, help="bucketing settings (default taobao:500:2048)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="num_workers values; first = plain")
    parser.add_argument("--prefetch-factor", type=int, default=4, help="batches each worker builds ahead (data.*)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per path (default 3; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round of a step row (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per round of a step row")
    parser.add_argument("--epoch-batches", type=int, default=0, help="cap on the batches of an epoch row (0 = all)")
    parser.add_argument("--synthetic-users", type=int, default=None, help="synthetic store size (default 1000)")
    parser.add_argument("--min-behaviours", type=int, default=50, help="Protocol A user filter on the Taobao slice")
    parser.add_argument("--quick", action="store_true", help="DARE only, small batches, 2 rounds, no compile: < 1 min")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "optimizations", measure, render)
