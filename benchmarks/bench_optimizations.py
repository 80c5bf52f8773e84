"""The system optimizations of SPEC §5, each against the plain path in the same run: what does each one buy here?

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
Models and search as in bench_throughput.py (Protocol A: dim 16, DIN over the whole history, TWIN/DARE soft search
K = 20 + auxiliary loss; Adam lr 0.01, L2 1e-6), `torch.set_num_threads(--threads)`, `reuse_freed_memory()` as
`longrec train` does. Data: the Taobao slice under Protocol A (bench_throughput's `prepare_store`; user filter 50
behaviours), a synthetic store with long histories (`longrec.ingest.synthetic`, ~1500 behaviours per user, Protocol T)
and a "wide" synthetic store (twice the users, 4 impressions each, 2M content items under a flat popularity), where a
batch touches a small share of a large item table. The default run takes 5-10 minutes on a 2-core machine, depending
on its load; --quick (DARE only, small batches, no compile) about a minute.

Run:   python benchmarks/bench_optimizations.py --update-readme
Quick: python benchmarks/bench_optimizations.py --quick
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

import torch
from _common import machine, machine_line, markdown_table, update_readme_section, write_json
from bench_throughput import MODELS, prepare_store

from longrec.data.batch import Batch
from longrec.data.dataset import collate, epoch_batches, make_loader
from longrec.data.device import DevicePrefetcher, autocast
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.ingest import load_log
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes
from longrec.models.layers import collect_keys
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.step import compile_model, make_optimizer, reuse_freed_memory, train_step

DATA = ("taobao", "synthetic", "wide")  # the stores a setting can name (see `main`)
OPTIMIZATIONS = ("keys", "bf16", "workers", "bucketing", "compile", "gpu")
LR, L2 = 0.01, 1e-6
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")


# ---------------------------------------------------------------------------------------------------- data
def prepare_synthetic(work: Path, name: str, **knobs: Any) -> tuple[Path, str]:
    """A synthetic store (`SyntheticConfig(**knobs)`, Protocol T on the generator's labelled impressions)."""
    raw, out = work / f"{name}-raw", work / name
    config = SyntheticConfig(seed=0, **knobs)
    generate(config).write(raw)
    log = load_log(raw, "synthetic")
    prepare(log.frame, out, ProtocolConfig.for_protocol("T"), source=str(raw), load_report=log.report)
    num_items = TrajectoryStore.open(out).sizes["num_items"]
    return out, (
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
class Trainer:
    """One path of a row: its own model and Adam (seed 0), its per-step losses and times, and how its steps run."""

    def __init__(
        self,
        model_name: str,
        store: TrajectoryStore,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        precision: str = "fp32",
        compiled: bool = False,
        device: torch.device | None = None,
    ) -> None:
        params, search = MODELS[model_name]
        torch.manual_seed(0)
        model = build_model_for_sizes(params["name"], {k: v for k, v in params.items() if k != "name"}, store.sizes)
        self.model = model.to(device) if device is not None else model
        if compiled:
            compile_model(self.model)  # RuntimeError where torch.compile cannot run
        self.optimizer = make_optimizer(self.model, LR)
        self.search = SearchConfig(**search)
        self.store, self.context, self.precision = store, context, precision
        self.round_rates: list[float] = []  # samples/s of each round
        self.losses: list[float] = []  # every step, in order
        self.first_steps: list[float] = []  # seconds of the first round's steps, warm-up included
        self.rounds: list[list[float]] = []  # per round, seconds of each timed batch
        self.sizes: list[int] = []  # samples of each timed batch (the same every round)
        self.parts: list[tuple[list[float], list[float]]] = []  # epoch rounds: (wait, step) seconds of each batch

    def step(self, batch: Batch) -> float:
        """One `train_step`; returns its wall seconds (the loss is read after the clock stops)."""
        with self.context():
            started = time.perf_counter()
            loss = train_step(self.model, batch, self.search, self.optimizer, L2, precision=self.precision)
            seconds = time.perf_counter() - started
        self.losses.append(float(loss))
        return seconds

    def record(self, seconds: list[float], batches: list[Batch], warmup: int) -> None:
        """Keep one round of step times: the first `warmup` are untimed warm-up, the rest count."""
        if not self.rounds:
            self.first_steps = seconds
        self.rounds.append(seconds[warmup:])
        self.sizes = [len(b) for b in batches[warmup:]]
        self.round_rates.append(sum(self.sizes) / sum(seconds[warmup:]))

    def epoch_round(self, batches: Iterable[Batch], limit: int, sync: Callable[[], None] = lambda: None) -> float:
        """Collate (iterating `batches`) + step end to end, up to `limit` batches (0 = all); returns samples/s.

        Each batch's time runs from the end of the previous step to the end of its own: the wait for the batch
        (collate in-process, or a worker's queue; the first wait includes starting the workers) plus its step; both
        parts are kept (`parts`)."""
        waits: list[float] = []
        steps: list[float] = []
        sizes: list[int] = []
        started = time.perf_counter()
        source = iter(batches)  # a DataLoader with workers starts them here
        while not limit or len(sizes) < limit:
            before = time.perf_counter()
            batch = next(source, None)
            if batch is None:
                break
            got = time.perf_counter()
            self.step(batch)
            sync()
            waits.append(got - before)
            steps.append(time.perf_counter() - got)
            sizes.append(len(batch))
        del source  # workers stop
        self.rounds.append([w + s for w, s in zip(waits, steps, strict=True)])
        self.parts.append((waits, steps))
        self.sizes = sizes
        self.round_rates.append(sum(sizes) / (time.perf_counter() - started))
        return self.round_rates[-1]

    def best_rate(self) -> float:
        """Samples/s from each timed step's (or batch's) fastest round: Σ samples / Σ_i min over rounds of t_i.

        Every round runs the same batches in the same order, so step i costs the same in every round but for the
        load other processes put on the machine, which only ever slows a step down."""
        return sum(self.sizes) / sum(min(times) for times in zip(*self.rounds, strict=True))

    def logits(self, batch: Batch, precision: str = "fp32") -> torch.Tensor:
        """The model's logits on `batch` (search included), no gradient, in eval mode."""
        self.model.eval()
        with torch.no_grad(), self.context(), autocast(precision, batch.history.device):
            out = self.model(search_stage(batch, self.model, self.search)).float()  # [B]
        self.model.train()
        return out


def alternate(paths: dict[str, Callable[[], float]], rounds: int) -> None:
    """Run the paths' rounds interleaved (a, b, a, b, ...), `rounds` each."""
    for _ in range(rounds):
        for run in paths.values():
            run()


def step_rounds(trainers: tuple[Trainer, Trainer], batches: list[Batch], warmup: int, rounds: int) -> None:
    """`rounds` passes over `batches`, the paths alternating step by step (a, b, a, b, ...), so that load from other
    processes hits both alike; per pass, the first `warmup` steps of each path are untimed."""
    for _ in range(rounds):
        seconds = [[t.step(batch) for t in trainers] for batch in batches]  # [steps][paths]
        for t, column in zip(trainers, zip(*seconds, strict=True), strict=True):
            t.record(list(column), batches, warmup)


def loader_round(t: Trainer, B: int, L: int, limit: int, **options: Any) -> float:
    """One epoch (seed 0, epoch 0) of `make_loader(..., **options)` on `t`'s store, collate + step end to end."""
    return t.epoch_round(make_loader(t.store, "train", B, L, shuffle=True, **options), limit)


def epoch_note(t: Trainer, limit: int) -> str:
    n = len(t.sizes)
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
        rates = [t.best_rate() if per_step else max(t.round_rates) for t in paths]
        out |= {"plain": rates[0], "optimized": rates[1], "speedup": rates[1] / rates[0]}
        out["round_rates"] = {"plain": paths[0].round_rates, "optimized": paths[1].round_rates}
        out["estimate"] = "per-step minimum over rounds" if per_step else "best round"
        pairs = [
            a / b for ra, rb in zip(paths[0].rounds, paths[1].rounds, strict=True) for a, b in zip(ra, rb, strict=True)
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
            plain = Trainer(model, data.stores[name])
            collected = Trainer(model, data.stores[name], context=collect_keys)
            step_rounds((plain, collected), batches, args.warmup, args.rounds)
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
        fp32 = Trainer(model, data.stores[name])
        bf16 = Trainer(model, data.stores[name], precision="bf16")
        step_rounds((fp32, bf16), batches, args.warmup, args.rounds)
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
        trainers = {w: Trainer(model, store) for w in args.workers}
        for t in trainers.values():
            t.step(warm)  # first-step allocations, untimed

        def run(w: int, t: Trainer) -> float:
            loader = make_loader(
                store, "train", B, L, shuffle=True, num_workers=w, prefetch_factor=args.prefetch_factor
            )
            return t.epoch_round(loader, args.epoch_batches)

        alternate({str(w): partial(run, w, t) for w, t in trainers.items()}, args.rounds)
        base = args.workers[0]
        for w in args.workers[1:]:
            plain, workers = trainers[base], trainers[w]
            first = {k: [min(p[i][0] for p in t.parts) for i in (0, 1)] for k, t in ((0, plain), (1, workers))}
            later = [max(sum(t.sizes[1:]) / sum(r[1:]) for r in t.rounds) for t in (plain, workers)]
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
            trainers = {flag: Trainer(model, store) for flag in (False, True)}
            for t in trainers.values():
                t.step(warm)

            alternate(
                {
                    str(f): partial(loader_round, t, B, L, args.epoch_batches, bucket_by_length=f)
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
        eager = Trainer(model, data.stores[name])
        torch._dynamo.utils.counters.clear()
        try:
            compiled = Trainer(model, data.stores[name], compiled=True)
            step_rounds((eager, compiled), batches, warmup, args.rounds)
        except RuntimeError as error:  # no C++ compiler, an unsupported Python, or inductor failing
            message = str(error).strip().splitlines()[0][:300]
            print(f"torch.compile failed for {model}: {error}", file=sys.stderr)
            rows.append(row("torch.compile", model, setting, "—", f"not measured: {message}"))
            continue
        compile_s = sum(compiled.first_steps[:warmup]) - sum(eager.first_steps[:warmup])
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
        trainers = {p: Trainer(model, store, device=device) for p in ("to", "prefetcher")}
        warm = data.batches(name, L, B, 1)[0].to(device)
        for t in trainers.values():
            t.step(warm)

        def run(path: str, t: Trainer) -> float:
            loader = make_loader(store, "train", B, L, shuffle=True, pin_memory=path == "prefetcher")
            batches = DevicePrefetcher(loader, device) if path == "prefetcher" else (b.to(device) for b in loader)
            torch.cuda.synchronize()
            return t.epoch_round(batches, args.epoch_batches, sync=torch.cuda.synchronize)

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
def render(rows: list[dict[str, Any]]) -> str:
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
    return markdown_table(header, out)


def span(values: list[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low}x" if low == high else f"{low}-{high}x"


def summary(rows: list[dict[str, Any]], flags: dict[str, bool], gemm_ratio: float) -> str:
    """The table in words, computed from the numbers."""

    def of(optimization: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["optimization"] == optimization and "speedup" in r]

    out = []
    if keys := of("key collection"):
        settings: dict[str, list[dict[str, Any]]] = {}
        for r in keys:
            settings.setdefault(r["setting"], []).append(r)
        parts = [
            f"{s} ({rs[0]['unique_ratio']:.0%} of ids distinct, {rs[0]['table_rows_touched']:.0%} of item rows "
            f"touched): {span([r['speedup'] for r in rs])}"
            for s, rs in settings.items()
        ]
        wins, losses = sum(r["speedup"] > 1.05 for r in keys), sum(r["speedup"] < 0.95 for r in keys)
        lowest = min(keys, key=lambda r: r["table_rows_touched"])
        text = (
            f"Key collection ran at {'; '.join(parts)} of the plain step: more than 5% faster in {wins} and more than "
            f"5% slower in {losses} of {len(keys)} rows, with bit-identical logits "
            f"({sum(r['parity'].startswith('identical') for r in keys)} of {len(keys)} rows)."
        )
        if wins == 0:
            text += (
                " It can only pay where a batch's distinct ids are few next to both its ids and the tables' rows "
                "(its [U, D] block then stays in cache while the table does not); even at the fewest rows touched "
                f"here ({lowest['table_rows_touched']:.0%}, {lowest['setting']}) the extra unique pass and the "
                "second gather cost more than the smaller scatter saved."
            )
        out.append(text)
    if bf16 := of("bf16 autocast"):
        worst = max(r["logit_max_abs_diff"] for r in bf16)
        have = "has avx512_bf16" if flags.get("avx512_bf16") else "has no avx512_bf16"
        amx = "and AMX" if flags.get("amx_bf16") else "but no AMX"
        growth = "; ".join(f"{r['model']}: {r['growth'][0][0]} {r['growth'][0][1]:+.0f} ms" for r in bf16)
        out.append(
            f"bf16 autocast ran at {span([r['speedup'] for r in bf16])} of fp32 (faster by more than 5% for "
            f"{', '.join(r['model'] for r in bf16 if r['speedup'] > 1.05) or 'no model'}), with logits within "
            f"{worst:.3f} of fp32. This CPU {have} {amx}; a bare bf16 GEMM of DIN's scorer shape took "
            f"{gemm_ratio:.2f}x the fp32 time. Only the MLPs run in bf16 (embedding gathers, attention kernels, "
            "losses and Adam stay fp32 by design), so what bf16 can win follows the step's share of MLP GEMMs: large "
            "in DIN, whose scorer MLP runs on every behaviour, small in TWIN and DARE, whose MLPs see only the target "
            "and the pooled interests; the casts in and out are paid either way. The op that gained the most self "
            f"time in a profiled bf16 step: {growth}."
        )
    if workers := of("prefetching workers"):
        text = (
            "Background collate workers ran the epoch end to end at "
            + ", ".join(f"{r['speedup']:.2f}x ({r['model']}, {r['setting'].split(', ')[-1]})" for r in workers)
            + " of collating in-process, and the batches after the first at "
            + span([r["speedup_after_first_batch"] for r in workers])
        )
        if all(r["speedup_after_first_batch"] < 1.0 for r in workers):
            text += (
                ": even once running, a worker on 2 cores takes CPU from the step's 2 threads and costs more than "
                "the collation it hides"
            )
        slow_first = [r for r in workers if r["first_batch"]["step"] > 2 * r["first_batch_in_process"]["step"]]
        if slow_first:
            text += (
                ". The first step after the workers start took "
                + ", ".join(
                    f"{r['first_batch']['step']:.2f} s vs {r['first_batch_in_process']['step']:.2f} s ({r['model']})"
                    for r in {r["model"]: r for r in reversed(slow_first)}.values()
                )
                + ": forked workers share the parent's heap copy-on-write, and `reuse_freed_memory()` keeps that "
                "heap at its peak, so the parent's first step copies every page it writes; without persistent "
                "workers every epoch pays it again"
            )
        out.append(text + ".")
    if buckets := of("bucketing by length"):
        r0 = buckets[0]
        out.append(
            f"Bucketing cut the padding from {r0['padding_plain']:.0%} to {r0['padding_bucketed']:.0%} of the cells "
            f"and ran the epoch at {span([r['speedup'] for r in buckets])} of the unbucketed speed (same samples, "
            "regrouped: its effect on accuracy is a training question, not measured here)."
        )
    compiled = of("torch.compile")
    failed = [r for r in rows if r["optimization"] == "torch.compile" and "speedup" not in r]
    if compiled:
        parts = []
        for r in compiled:
            saved = r["batch_size"] / r["plain"] - r["batch_size"] / r["optimized"]  # seconds per step
            pays = f"earned back after {r['compile_s'] / saved:,.0f} steps" if saved > 0 else "never earned back"
            parts.append(f"{r['model']} {r['speedup']:.2f}x after {r['compile_s']:.0f} s of compilation ({pays})")
        out.append(
            f"torch.compile ran at {span([r['speedup'] for r in compiled])} of eager after warm-up: "
            + "; ".join(parts)
            + ". The eager path is already hand-fused where it mattered (the fast paths of models/layers.py)."
        )
    elif failed and failed[0]["notes"].startswith("not measured"):
        out.append(f"torch.compile could not run here ({failed[0]['notes']}).")
    return " ".join(out)


def parse_setting(text: str) -> tuple[str, int, int]:
    """'data:L:B' -> (data, L, B)."""
    name, L, B = text.split(":")
    if name not in DATA:
        raise argparse.ArgumentTypeError(f"data must be one of {', '.join(DATA)}. Got {name!r} instead.")
    return name, int(L), int(B)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--optimizations",
        nargs="+",
        choices=OPTIMIZATIONS,
        default=None,
        metavar="OPT",
        help=f"which rows, of {', '.join(OPTIMIZATIONS)} (default: all; --quick: all but compile)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        metavar="MODEL",
        help="models of every row (default DIN TWIN DARE; --quick: DARE)",
    )
    parser.add_argument(
        "--compile-models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        metavar="MODEL",
        help="models of the compile rows (default: DIN DARE; each compiles for ~20-60 s)",
    )
    parser.add_argument(
        "--key-settings",
        nargs="+",
        type=parse_setting,
        default=None,
        metavar="DATA:L:B",
        help="key collection settings, DATA one of taobao, synthetic, wide (default synthetic:100:2048 "
        "synthetic:1000:512 taobao:100:2048 wide:1000:512; B = 512 at L = 1000 because DIN at B = 2048 peaks at ~7 GB)",
    )
    parser.add_argument(
        "--step-setting",
        type=parse_setting,
        default=None,
        metavar="DATA:L:B",
        help="setting of the bf16, workers, compile and gpu rows (default taobao:200:2048)",
    )
    parser.add_argument(
        "--bucket-settings",
        nargs="+",
        type=parse_setting,
        default=None,
        metavar="DATA:L:B",
        help="bucketing settings (default taobao:500:2048)",
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="num_workers values; first = plain")
    parser.add_argument("--prefetch-factor", type=int, default=4, help="batches each worker builds ahead (data.*)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per path (default 3; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round of a step row (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per round of a step row")
    parser.add_argument("--epoch-batches", type=int, default=0, help="cap on the batches of an epoch row (0 = all)")
    parser.add_argument("--synthetic-users", type=int, default=None, help="synthetic store size (default 1000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-behaviours", type=int, default=50, help="Protocol A user filter on the Taobao slice")
    parser.add_argument("--quick", action="store_true", help="DARE only, small batches, 2 rounds, no compile: < 1 min")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "optimizations.json")
    parser.add_argument("--update-readme", action="store_true", help="replace the section in benchmarks/README.md")
    args = parser.parse_args()
    quick = args.quick
    chosen = args.optimizations is not None
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

    torch.set_num_threads(args.threads)
    allocator = "reuse_freed_memory()" if reuse_freed_memory() else "glibc default"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-optimizations-"))
    info = machine()
    load_before = os.getloadavg()
    needs = {s[0] for s in args.key_settings if "keys" in args.optimizations}
    needs |= {s[0] for s in args.bucket_settings if "bucketing" in args.optimizations}
    if set(args.optimizations) & {"bf16", "workers", "compile", "gpu"}:
        needs.add(args.step_setting[0])
    stores = {}
    if "taobao" in needs:
        stores["taobao"] = prepare_store(work / "taobao", args.min_behaviours)
    if "synthetic" in needs:
        stores["synthetic"] = prepare_synthetic(work, "synthetic", num_users=args.synthetic_users, events_per_user=1500)
    if "wide" in needs:  # many users, few impressions each, a flat popularity: a batch touches few of the item rows
        stores["wide"] = prepare_synthetic(
            work,
            "wide",
            num_users=args.synthetic_users * 2,
            events_per_user=1000,
            impressions_per_user=4,
            num_content_items=2_000_000,
            zipf_exponent=0.6,
        )
    data = Data(stores)
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
    if quick and not chosen:
        rows.append(row("torch.compile", "—", "—", "—", "skipped by --quick (--optimizations compile)"))
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()

    table, words = render(rows), summary(rows, flags, gemm_ratio)
    print("\n" + table + "\n\n" + words + f"\n\n{seconds:.0f} s of measurements")
    payload = {
        "machine": info,
        "load_average": {"before": load_before, "after": load_after},
        "cpu_flags": flags,
        "gemm_bf16_over_fp32": gemm_ratio,
        "allocator": allocator,
        "data": data.lines,
        "config": vars(args) | {"work": str(work), "json": str(args.json)},
        "seconds": seconds,
        "rows": rows,
    }
    write_json(args.json, payload)
    if args.update_readme:
        command = "python benchmarks/bench_optimizations.py" + (" --quick" if quick else "") + " --update-readme"
        body = (
            f"Command: `{command}`. "
            + machine_line(info)
            + f" Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min, 2 cores). Data: "
            + "; ".join(f"{k} = {v}" for k, v in data.lines.items())
            + ". Each row switches one system option of SPEC §5 on against the plain path (the default code), "
            f"{args.threads} torch threads. Step rows (key collection, bf16, compile) time `train_step` alone on "
            f"pre-collated full batches, plain and optimized alternating step by step, {args.rounds} passes of "
            f"{args.warmup} warm-up + {args.steps} timed steps; each timed step's fastest pass counts. Epoch rows "
            "(workers, bucketing) time `make_loader` + `train_step` end to end over one epoch, alternating epoch by "
            f"epoch, {args.rounds} epochs per path; bucketing counts each batch's fastest epoch, workers the fastest "
            "whole epoch (worker start-up included, as in every epoch of `longrec train`). Every path trains its "
            "own model from seed 0 on the same batches in the same order, so 'parity' compares their losses step by "
            "step (bf16 also: the fp32 model's logits with and without autocast on one batch). 'unique items' = "
            "distinct / total item ids in the non-padded history cells of a batch, and distinct ids / rows of the "
            "item table; 'padding' = padded / all cells "
            f"of the collated batches over the epoch. Allocator: {allocator}.\n\n" + table + "\n\n" + words
        )
        update_readme_section("optimizations", body)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
