"""The benchmark harness: what every script in benchmarks/ shares, so that a script states only what it measures.

- **The flow** (`options`, `main`): each script declares its own options on the parser `options` returns (which
  already holds --json, --update-readme, --readme, --from-json, --threads, --seeds, --work, --cache where the script
  asks for them) and hands `main` two functions: `measure(args) -> payload` and `render(payload) -> README section`.
  `main` stamps the machine and the load average around `measure`, writes the results JSON (strict, paths relative
  to the repository) and replaces the script's section of benchmarks/README.md; with --from-json it skips `measure`
  and renders an earlier JSON, so a section can always be rebuilt from its JSON alone.
- **Machine facts**: `machine()` (CPU, cores, threads, torch, commit, date), the load average before and after a
  measurement, `peaks()` (GEMM rate and copy bandwidth).
- **Data** (`Stores`): the Taobao slice under Protocol A, MovieLens, synthetic logs with given knobs and planted
  mechanisms, a catalog log (every item of a large vocabulary once) and a store's copy whose train split keeps a
  window of sample times, each prepared once into a cache folder (a temporary one unless --cache names one; a store
  whose knobs changed is prepared again with `force=True`).
- **Training**: `train_run(values, out)` trains a whole run with the package's own `longrec.run.train` (`parallel` runs
  such jobs in worker processes; `newest_run` loads one back with the weights of its last step); `Trainer`
  times `longrec.train.step.train_step` calls (its own Adam from `make_optimizer`, warm-up, rounds, per-step
  minimum, rates), and `timings` / `median_ms` / `percentile` time anything else.
- **Output**: `markdown_table`, `mean_std`, `folder_bytes`, `write_section` (the text between `<!-- BEGIN name -->` and
  `<!-- END name -->` of a README given by path), `write_results` / `read_results`.

Readings of the numbers are written by hand in benchmarks/README.md, outside the markers; a section holds what a
script can render from its JSON: the command, the machine, the settings and the tables.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from longrec.config import Config
from longrec.data.batch import Batch
from longrec.data.device import autocast
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore, write_manifest
from longrec.files import atomic_write_text, dumps_json
from longrec.ingest import load_log
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes
from longrec.run import Run, load_run, train
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.checkpoint import load_checkpoint
from longrec.train.step import make_optimizer, train_step
from longrec.version import __version__

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
RESULTS = HERE / "results"
SHARED_DATA = ROOT / ".." / "shared" / "data"  # the real data slices live beside the repository
TAOBAO_SLICE = SHARED_DATA / "taobao_userbehavior" / "UserBehavior_927users.csv.gz"
MOVIELENS = SHARED_DATA / "movielens_latest_small" / "ratings.csv.gz"

# DARE's Protocol A models (dim 16 per field; TWIN and DARE with soft search to K = 20 and the auxiliary loss), as
# bench_throughput.py and bench_optimizations.py train them: name -> (model table, search table).
PROTOCOL_A: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "DIN": ({"name": "din", "dim": 16}, {"method": "none"}),
    "TWIN": ({"name": "twin", "dim": 16, "aux_loss": True}, {"method": "soft", "k": 20}),
    "DARE": ({"name": "dare", "dim": 16, "aux_loss": True}, {"method": "soft", "k": 20}),
}


# ---------------------------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, torch, commit, date."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.date.today().isoformat(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads; commit {info['commit']}, {info['date']}."
    )


def load_line(payload: dict[str, Any]) -> str:
    """The 1-minute load average before and after the measurement (the "after" value includes its own threads)."""
    load, cores = payload["load_average"], payload["machine"]["cores"]
    return f"Load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after (1 min; {cores} cores)."


def peak_rss_mb() -> float:
    """This process image's peak RSS in MiB: VmHWM from /proc/self/status (`ru_maxrss` would carry the parent's peak
    across fork + exec)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**10


def peaks(repeats: int = 5, statistic: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """fp32 GEMM rate (1024³ matmul) and copy bandwidth (256 MB into a reused buffer) on the current threads, from
    `statistic` (median, or min for the best) of `repeats` timings after one warm-up."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    src, dst = torch.randn(2**26), torch.empty(2**26)
    gemm = 2 * 1024**3 / statistic(timings(lambda: torch.mm(a, b), repeats))
    copy = 2 * src.numel() * 4 / statistic(timings(lambda: dst.copy_(src), repeats))  # read + write
    return {"gflops": gemm / 1e9, "gbytes_per_s": copy / 1e9}


# ---------------------------------------------------------------------------------------------------- timing
def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1, budget_s: float = math.inf) -> list[float]:
    """Seconds of `repeats` calls after `warmup` untimed ones; stops early (after >= 1 call) once `budget_s` is
    spent."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < repeats and (not out or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1, budget_s: float = math.inf) -> float:
    return 1e3 * statistics.median(timings(fn, repeats, warmup, budget_s))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class Round:
    """One timed pass of a `Trainer` over batches, in seconds: per batch, the wait for it (collate, a worker's queue;
    0 for batches collated beforehand) and its step; `warmup` = the untimed steps before them; `wall` = the pass."""

    waits: list[float]
    steps: list[float]
    sizes: list[int]
    wall: float
    warmup: list[float] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [w + s for w, s in zip(self.waits, self.steps, strict=True)]

    @property
    def rate(self) -> float:
        """Samples/s of the pass."""
        return sum(self.sizes) / self.wall


class Trainer:
    """One model trained by `train_step`, exactly as the loop runs it: its own optimizer (`make_optimizer`: "adam" or
    "lazy_adam", as `train.optimizer`), search config,
    L2 weight, precision and an optional context entered around every step (e.g. `collect_keys`); it keeps every
    step's loss and each timed pass (`rounds`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        search: SearchConfig,
        lr: float,
        l2: float = 0.0,
        precision: str = "fp32",
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        optimizer: str = "adam",
    ) -> None:
        self.model, self.search, self.l2, self.precision, self.context = model, search, l2, precision, context
        self.optimizer = make_optimizer(model, lr, optimizer)
        self.losses: list[float] = []
        self.rounds: list[Round] = []

    def step(self, batch: Batch) -> float:
        """One `train_step`; returns its wall seconds (the loss is read after the clock stops)."""
        with self.context():
            started = time.perf_counter()
            loss = train_step(self.model, batch, self.search, self.optimizer, self.l2, precision=self.precision)
            seconds = time.perf_counter() - started
        self.losses.append(float(loss))
        return seconds

    def repeat(self, batch: Batch, repeats: int, warmup: int = 1, budget_s: float = math.inf) -> list[float]:
        """Seconds of `repeats` steps on the same batch after `warmup` (stops early once `budget_s` is spent)."""
        return timings(lambda: self.step(batch), repeats, warmup, budget_s)

    def epoch(
        self, batches: Iterable[Batch], limit: int = 0, warmup: int = 0, sync: Callable[[], None] = lambda: None
    ) -> Round:
        """Wait for each batch (iterating `batches`: collate in-process, or a loader's workers) and step on it, up to
        `limit` batches (0 = all), the first `warmup` untimed; the pass is kept in `rounds` and returned.

        A batch's time runs from the end of the previous step to the end of its own; the pass's wall time starts
        before `iter(batches)` (a DataLoader starts its workers there), or at the first timed batch after a warm-up."""
        waits: list[float] = []
        steps: list[float] = []
        sizes: list[int] = []
        untimed: list[float] = []
        started = time.perf_counter()
        source = iter(batches)
        while not limit or len(untimed) + len(sizes) < limit:
            before = time.perf_counter()
            batch = next(source, None)
            if batch is None:
                break
            got = time.perf_counter()
            self.step(batch)
            sync()
            if len(untimed) < warmup:
                untimed.append(time.perf_counter() - before)
                started = time.perf_counter()
                continue
            waits.append(got - before)
            steps.append(time.perf_counter() - got)
            sizes.append(len(batch))
        del source  # a loader's workers stop
        self.rounds.append(Round(waits, steps, sizes, time.perf_counter() - started, untimed))
        return self.rounds[-1]

    def best_rate(self) -> float:
        """Samples/s from each timed batch's fastest round: Σ samples / Σ_i min over rounds of t_i.

        Every round runs the same batches in the same order, so batch i costs the same in every round but for the
        load other processes put on the machine, which only ever slows a step down (timeit's rule)."""
        return sum(self.rounds[0].sizes) / sum(min(ts) for ts in zip(*(r.times for r in self.rounds), strict=True))

    def logits(self, batch: Batch, precision: str = "fp32") -> torch.Tensor:
        """The model's logits on `batch` (search included), no gradient, in eval mode."""
        self.model.eval()
        with torch.no_grad(), self.context(), autocast(precision, batch.history.device):
            out = self.model(search_stage(batch, self.model, self.search)).float()  # [B]
        self.model.train()
        return out


def alternate_steps(trainers: Sequence[Trainer], batches: list[Batch], warmup: int, rounds: int) -> None:
    """`rounds` passes over `batches`, the trainers alternating step by step (a, b, a, b, ...) so that load from other
    processes hits all alike; per pass, the first `warmup` steps of each trainer are untimed."""
    for _ in range(rounds):
        seconds = [[t.step(batch) for t in trainers] for batch in batches]  # [steps][trainers]
        for t, column in zip(trainers, zip(*seconds, strict=True), strict=True):
            timed = list(column[warmup:])
            sizes = [len(b) for b in batches[warmup:]]
            t.rounds.append(Round([0.0] * len(timed), timed, sizes, sum(timed), list(column[:warmup])))


def protocol_a_model(name: str, sizes: dict[str, Any], seed: int = 0) -> tuple[torch.nn.Module, SearchConfig]:
    """A `PROTOCOL_A` model for a store's sizes, initialised from `seed`, and its search config."""
    params, search = PROTOCOL_A[name]
    torch.manual_seed(seed)
    model = build_model_for_sizes(params["name"], {k: v for k, v in params.items() if k != "name"}, sizes)
    return model, SearchConfig(**search)


# ---------------------------------------------------------------------------------------------------- runs
def config_from(values: dict[str, Any]) -> Config:
    """An experiment config from dotted keys ({"model.name": "din", "train.lr": 0.01, ...}), checked like a file."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return Config.from_dict(tree, "the benchmark")


def train_run(values: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Train the experiment `values` (dotted keys) into the run directory `out` (replaced if it holds a run) with
    `longrec.run.train`; its final metrics, plus the wall "seconds"."""
    started = time.perf_counter()
    result = train(config_from(values), out, force=True)
    return result | {"seconds": round(time.perf_counter() - started, 1)}


def run_values(
    store: str | Path, seed: int, batch_size: int, epochs: int, max_history: int, eval_every: int = 0, lr: float = 0.003
) -> dict[str, Any]:
    """The data and train settings (dotted keys, for `train_run`) of a run in a worker process of `parallel`: one
    torch thread, no progress bar, validation AUC picks the checkpoint (every `eval_every` steps, or each epoch)."""
    return {
        "data.path": str(store),
        "data.max_history": max_history,
        "train.lr": lr,
        "train.batch_size": batch_size,
        "train.epochs": epochs,
        "train.eval_every": eval_every,
        "train.seed": seed,
        "train.metric": "auc",
        "train.threads": 1,
        "train.progress": False,
    }


def schedule(store: Store, epochs: int, batch_size: int, shrink: int = 1) -> dict[str, int]:
    """Epochs and validation interval (`train.eval_every`, steps; 0 = each epoch's end) of a run: `epochs`, or, for a
    store whose train split is about `shrink` times the others', `epochs // shrink` epochs validated `shrink` times
    each (about the others' number of steps and validations)."""
    if shrink == 1:
        return {"epochs": epochs, "eval_every": 0}
    steps = -(-int(store.open().manifest["counts"]["samples"]["train"]) // batch_size)  # per epoch
    return {"epochs": max(1, epochs // shrink), "eval_every": -(-steps // shrink)}


def request_batch(B: int, L: int, num_items: int, num_categories: int, seed: int = 0) -> Batch:
    """B requests, each a full history of L random behaviours (one taxonomy level), positions L..1, and a target."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        history=torch.randint(1, num_items, (B, L), generator=g),
        history_mask=torch.ones(B, L, dtype=torch.bool),
        target=torch.randint(1, num_items, (B,), generator=g),
        history_category=torch.randint(1, num_categories, (B, L, 1), generator=g),
        target_category=torch.randint(1, num_categories, (B, 1), generator=g),
        history_position=torch.arange(L, 0, -1).expand(B, L).contiguous(),
    )


def parallel(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    jobs: list[dict[str, Any]],
    processes: int,
    describe: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """`fn(job)` for every job in `processes` fresh worker processes (spawned, not forked: a forked child of a process
    that ran polars' thread pool can deadlock), logging `describe(result)` as each result arrives, in job order."""
    import logging
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log = logging.getLogger("benchmarks")
    log.info("%d runs in %d processes", len(jobs), processes)
    results = []
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, result in enumerate(pool.map(fn, jobs)):
            results.append(result)
            log.info("[%d/%d] %s", i + 1, len(jobs), describe(result))
    return results


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """ "mean ± std" of `values` (population std, as numpy's default)."""
    array = np.asarray(values, dtype=np.float64)
    return f"{array.mean():.{digits}f} ± {array.std():.{digits}f}"


def newest_run(run_dir: Path) -> Run:
    """The run with its newest weights (last.pt, the step it stopped at) instead of its best checkpoint: a few steps
    on a small validation split need not move the best one, and a model update is the weights training reached."""
    run = load_run(run_dir)
    saved = load_checkpoint(run_dir / "last.pt")
    run.model.load_state_dict(saved["model"])
    return dataclasses.replace(run, step=int(saved["state"]["step"]))


# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Store:
    """A prepared store in the cache: `folder/store` (the store), `folder/raw` (a generated log and its truth), and
    `info`, what its builder recorded (counts, generation stats)."""

    folder: Path
    info: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.folder / "store"

    @property
    def raw(self) -> Path:
        return self.folder / "raw"

    def open(self) -> TrajectoryStore:
        return TrajectoryStore.open(self.path)

    def truth(self) -> pl.DataFrame:
        """A synthetic store's ground truth (what the generator planted, per labelled impression)."""
        return pl.read_parquet(self.raw / "truth.parquet")


class Stores:
    """The stores of one benchmark run, each prepared once into `root` (a temporary folder by default: --cache names
    one to keep them between runs, e.g. benchmarks/.cache, which git ignores). A store is reused while its key (the
    knobs, the longrec version) is unchanged, and prepared again over the old one (`force=True`) when it is not."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="longrec-bench-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
        self.root = root

    def get(self, name: str, key: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Store:
        """The store `name` with knobs `key`: from the cache, or `build(folder)` (writes folder/store, returns info)."""
        key = {"longrec": __version__, **key}
        folder = self.root / f"{name}-{hashlib.sha256(dumps_json(key).encode()).hexdigest()[:10]}"
        stamp = folder / "store.json"
        if stamp.is_file() and (known := json.loads(stamp.read_text()))["key"] == key:
            return Store(folder, known["info"])
        folder.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)  # a half-built store is never taken for a finished one
        info = build(folder)
        atomic_write_text(stamp, dumps_json({"key": key, "info": info}))
        return Store(folder, info)

    def taobao(self, min_behaviours: int = 50, negatives: int | None = None) -> Store:
        """The 927-user Taobao slice (page views) under Protocol A, users with >= `min_behaviours` behaviours (and
        `negatives` sampled negatives per positive instead of Protocol A's 2, when given)."""

        def build(folder: Path) -> dict[str, Any]:
            if not TAOBAO_SLICE.is_file():
                raise FileNotFoundError(
                    f"{TAOBAO_SLICE.name} not found: the Taobao slice lives in ../shared/data beside the repository."
                )
            log = load_log(TAOBAO_SLICE, "taobao", actions=("pv",))
            more = {} if negatives is None else {"negatives": negatives}
            protocol = ProtocolConfig.for_protocol("A", min_behaviours=min_behaviours, **more)
            result = prepare(log.frame, folder / "store", protocol, source=TAOBAO_SLICE.name, force=True,
                             load_report=log.report)  # fmt: skip
            line = f"Taobao slice ({TAOBAO_SLICE.name}), Protocol A, users with >= {min_behaviours} behaviours"
            line += "" if negatives is None else f", {negatives} negatives per positive"
            return {"line": line, "counts": result.manifest["counts"]}

        key = {"min_behaviours": min_behaviours} | ({} if negatives is None else {"negatives": negatives})
        return self.get("taobao-A", key, build)

    def movielens(self, min_rating: float = 3.5, protocol: str = "B") -> Store:
        """MovieLens latest-small (ratings >= `min_rating` as behaviours) under `protocol`."""

        def build(folder: Path) -> dict[str, Any]:
            log = load_log(MOVIELENS, "movielens", movies=MOVIELENS.with_name("movies.csv"), min_rating=min_rating)
            result = prepare(log.frame, folder / "store", ProtocolConfig.for_protocol(protocol), source=MOVIELENS.name,
                             load_report=log.report, force=True)  # fmt: skip
            line = f"MovieLens latest-small, ratings >= {min_rating}, Protocol {protocol}"
            return {"line": line, "counts": result.manifest["counts"]}

        return self.get(f"movielens-{protocol}", {"min_rating": min_rating, "protocol": protocol}, build)

    def synthetic(self, protocol: ProtocolConfig | None = None, **knobs: Any) -> Store:
        """A generated log (`SyntheticConfig(seed=0, **knobs)`: mechanisms, users, ...) and its truth in `raw`,
        prepared under `protocol` (default: Protocol T on the generator's labelled impressions)."""
        protocol = protocol or ProtocolConfig.for_protocol("T")
        config = SyntheticConfig(**{"seed": 0, **knobs})

        def build(folder: Path) -> dict[str, Any]:
            generated = generate(config)
            generated.write(folder / "raw", force=True)
            log = load_log(folder / "raw", "synthetic")
            result = prepare(log.frame, folder / "store", protocol, source="synthetic", load_report=log.report,
                             force=True)  # fmt: skip
            return {"counts": result.manifest["counts"], "stats": generated.stats}

        name = "synthetic-" + "".join(config.mechanisms)
        return self.get(name, {"config": repr(config), "protocol": repr(protocol)}, build)

    def catalog(self, num_items: int, num_users: int = 2_000, num_categories: int = 9_439, days: int = 9) -> Store:
        """A large item vocabulary, cheaply: a generated log in which each of `num_items` items is one behaviour of a
        random user (of `num_users`), in a random category (one taxonomy level, `num_categories` values) at a random
        time within `days`; Protocol T with the 3 most recent behaviours of a user as targets. For serving
        measurements that need the tables of a big catalog, not a model that learned anything."""

        def build(folder: Path) -> dict[str, Any]:
            rng = np.random.default_rng(0)
            frame = pl.DataFrame(
                {
                    "user_id": rng.integers(0, num_users, num_items),
                    "item_id": np.arange(1, num_items + 1),
                    "timestamp": 1_700_000_000 + rng.integers(0, days * 86_400, num_items),
                    "cat_1": rng.integers(0, num_categories, num_items),
                }
            )
            protocol = ProtocolConfig.for_protocol("T", max_targets_per_user=3)
            result = prepare(frame, folder / "store", protocol, source="catalog", force=True)
            line = f"a generated catalog log: {num_items:,} items, one behaviour each, {num_users:,} users"
            return {"line": line, "counts": result.manifest["counts"], "sizes": result.manifest["sizes"]}

        key = {"num_items": num_items, "num_users": num_users, "num_categories": num_categories, "days": days}
        return self.get("catalog", key, build)

    def train_window(self, store: Store, start: int, end: int) -> Store:
        """A copy of `store` whose train split keeps only the samples with `start` <= target_time < `end` (epoch
        seconds); trajectories, vocabularies (so the vocabulary sha), item tables, valid and test are the same. A
        model trained on one window continues on another of the same store (`--resume` accepts the same
        vocabulary), as a day's update continues the model of the days before."""

        def build(folder: Path) -> dict[str, Any]:
            shutil.copytree(store.path, folder / "store", dirs_exist_ok=True, ignore=shutil.ignore_patterns("train"))
            train_split = store.open().samples("train")
            times = np.asarray(train_split.target_time)  # [N]
            kept = train_split.take(np.flatnonzero((times >= start) & (times < end)))
            kept.save(folder / "store" / "samples" / "train")
            manifest = json.loads((store.path / "manifest.json").read_text())
            counts = manifest["counts"]
            counts["samples"]["train"], counts["positives"]["train"] = len(kept), int(kept.label.sum())
            manifest["train_window"] = {"source": store.folder.name, "start": start, "end": end}
            write_manifest(folder / "store", manifest)
            return {"counts": counts, "window": [start, end]}

        return self.get(f"{store.folder.name}-window", {"source": store.folder.name, "start": start, "end": end}, build)


# ---------------------------------------------------------------------------------------------------- output
@contextlib.contextmanager
def figure(path: Path, columns: int, size: tuple[float, float], title: str | None = None) -> Iterator[Any]:
    """A row of `columns` matplotlib axes (Agg), saved to `path` (PNG, 120 dpi) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size)
    yield axes
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def relative(path: str | Path) -> str:
    """A path as committed files show it: relative to the repository root, or only its name (after '.../') when it
    lies outside (an absolute path of the machine that ran it says nothing to a reader)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return f".../{path.name}"


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON (`longrec.files.dumps_json`: NaN and infinities as null, keys sorted), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps_json(payload))


def read_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --from-json re-renders an earlier run's results JSON.")
    return dict(json.loads(path.read_text()))


def read_section(readme: Path, name: str) -> str | None:
    """The text between `<!-- BEGIN name -->` and `<!-- END name -->` of `readme`, or None."""
    begin, end = f"<!-- BEGIN {name} -->\n", f"\n<!-- END {name} -->"
    text = readme.read_text() if readme.is_file() else ""
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_section(readme: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- BEGIN name -->` and `<!-- END name -->` of `readme` (appending the section if
    absent); what stands outside the markers (the hand-written readings) is kept."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(readme, text)


# ---------------------------------------------------------------------------------------------------- the flow
# The harness's own options: where things go, not what is measured (left out of a results JSON's "config").
PLUMBING = ("json", "png", "update_readme", "readme", "from_json", "work", "cache", "child")


def options(
    doc: str | None,
    name: str,
    *,
    seeds: list[int] | None = None,
    threads: int | None = None,
    png: bool = False,
    scratch: bool = False,
    child: bool = False,
) -> argparse.ArgumentParser:
    """The parser of a script `name` (its results go to benchmarks/results/<name>.json): the harness's options, plus
    --seeds / --threads with the script's defaults where given, --png with a plot, --work and --cache with a scratch
    folder and data stores, and a hidden --child JOB for scripts that measure in fresh processes (`in_subprocess`).
    The script adds its own options to it."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness = parser.add_argument_group("harness (benchmarks/_harness.py)")
    harness.add_argument(
        "--json",
        type=Path,
        default=RESULTS / f"{name}.json",
        help=f"results JSON (default: benchmarks/results/{name}.json)",
    )
    if png:
        harness.add_argument(
            "--png", type=Path, default=RESULTS / f"{name}.png", help=f"plot (default: benchmarks/results/{name}.png)"
        )
    harness.add_argument("--update-readme", action="store_true", help="replace this script's section of the README")
    harness.add_argument(
        "--readme", type=Path, default=README, help="the README to update (default: benchmarks/README.md)"
    )
    harness.add_argument(
        "--from-json", type=Path, default=None, metavar="PATH", help="measure nothing: render an earlier results JSON"
    )
    if threads is not None:
        harness.add_argument("--threads", type=int, default=threads, help="torch threads (default: %(default)s)")
    if seeds is not None:
        harness.add_argument("--seeds", nargs="+", type=int, default=seeds, help="seeds (default: %(default)s)")
    if scratch:
        harness.add_argument("--work", type=Path, default=None, help="scratch folder for runs (default: a temp dir)")
        harness.add_argument(
            "--cache", type=Path, default=None, help="prepared stores, reused between runs (default: a temp dir)"
        )
    if child:
        parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON job of `in_subprocess`
    return parser


def in_subprocess(script: str | Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run `script --child JOB` in a fresh interpreter (its own allocator state and peak memory) and return the JSON
    object on the last line it prints."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{Path(script).name} --child {job} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def readme_link(path: str) -> str:
    """A repository-relative path as a link from benchmarks/README.md."""
    return Path(os.path.relpath(ROOT / path, HERE)).as_posix()


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options a results JSON records: the script's, not the harness's paths; other paths repository-relative."""
    return {k: relative(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in PLUMBING}


def command(script: str, argv: Sequence[str]) -> str:
    """The command line as the README shows it: `python benchmarks/<script> <argv>`, paths repository-relative."""
    words = [relative(word) if os.path.isabs(word) else word for word in argv]
    return " ".join(["python", f"benchmarks/{script}", *words])


def main(
    args: argparse.Namespace,
    section: str,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    argv: Sequence[str] | None = None,
    child: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure (or, with --from-json, read an earlier JSON), write the JSON, print the section and, with
    --update-readme, write it into the README. Returns the payload. In a process started by `in_subprocess`
    (--child JOB), run `child(job)` instead and print its result as one JSON line.

    The payload of a measurement: `machine()` (with the entries of the payload's own "machine" over it), the load
    average before and after, the seconds it took, the command, the options (`settings`), then what `measure` returned.
    """
    if getattr(args, "child", None) and child is not None:
        result = child(json.loads(args.child))
        print(json.dumps(result))
        return result
    if args.from_json is not None:
        payload = read_results(args.from_json)
    else:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        before, started = os.getloadavg(), time.perf_counter()
        measured = measure(args)
        stamp = {"machine": machine() | measured.pop("machine", {})}
        stamp["load_average"] = {"before": list(before), "after": list(os.getloadavg())}
        stamp["seconds"] = measured.pop("seconds", time.perf_counter() - started)
        script = Path(str(sys.modules[measure.__module__].__file__)).name
        stamp["command"] = command(script, sys.argv[1:] if argv is None else argv)
        payload = stamp | {"config": settings(args)} | measured
        write_results(args.json, payload)
    body = render(payload)
    print(body, flush=True)
    if args.update_readme:
        write_section(args.readme, section, body)
    return payload
