"""The run API: train into a run directory, load one back, score with it. The CLI, notebooks, benchmarks and serving
all go through here.

    import longrec
    from longrec.config import load_config

    result = longrec.run.train(load_config("configs/din_synthetic.toml"), "runs/din")   # writes runs/din/
    run = longrec.load_run("runs/din")           # from any working directory; str or Path
    run.evaluate("test")                         # AUC, GAUC, logloss, per goal
    run.evaluate_retrieval("test", ns=(50, 200))  # Recall@N, NDCG@N of the positives against a candidate pool
    probabilities = run.predict(frame)           # a polars/pandas DataFrame of raw ids, one score per row

A run directory is owned and checked (`train`): it may be new, empty, or a previous run (replaced only with
`force=True`, continued with `resume=True`); a folder holding anything else is refused; one process at a time holds
its lock; `--resume` refuses config changes that would make the checkpoint meaningless and writes nothing before it
has checked them (`longrec.run.directory`). Checkpoints load with `weights_only=True`: nothing in a run folder
executes code. `load_run` finds the store where the run recorded it, or next to the run when both moved, and checks
its vocabulary (`locate_store`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longrec.config import Config
from longrec.data.batch import Batch
from longrec.data.content import content_matrix, with_content_dim
from longrec.data.device import resolve_device
from longrec.data.sharded import open_store
from longrec.data.store import TrajectoryStore
from longrec.data.summaries import SummaryStore
from longrec.eval.evaluate import evaluate, predict
from longrec.eval.retrieval import PoolConfig, evaluate_retrieval
from longrec.files import PLOTS, RUN, check_output, lock_directory, write_json
from longrec.models import build_model_for_sizes
from longrec.models.layers import collect_keys
from longrec.run.directory import locate_store, read_run_config, resume_changes, run_config_dict
from longrec.run.frames import frame_batches
from longrec.run.incremental import Continuation, continuation
from longrec.run.summaries import compute_summaries, start_from_summaries
from longrec.train.callbacks import Callback
from longrec.train.checkpoint import load_checkpoint
from longrec.train.distributed import Ranks, broadcast, check_options, current_ranks, process_group
from longrec.train.loop import fit

__all__ = ["Run", "analyze_run", "load_run", "summarise", "train"]

logger = logging.getLogger(__name__)


def train(
    config: Config,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[int], None] | None = None,
    continue_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train `config` into the run directory `out`; return the final metrics (what `out/metrics.json` holds).

    Args:
        config: the resolved experiment.
        out: the run directory: new, empty, a previous run with `force` (cleared first) or with `resume` (continued
            from its last.pt, after `resume_changes` checked the config against its config.json).
        resume: continue the run in `out` (a fresh start when `out` holds no run yet).
        force: replace a previous run in `out`.
        callbacks: listeners of the training loop (`longrec.train.callbacks.Callback`).
        on_step: called with the global step after every optimizer step (tests simulate a crash with it).
        continue_from: a previous run to start from (day-by-day training, `longrec.run.incremental`): its last
            weights and Adam state, grown onto the store's vocabulary (which must be the run's or grown from it with
            `prepare --vocab-from`); the model is scored on the train split before its first step (progressive
            validation, "before_training" in the result). `out` is a new run; with `resume`, a killed continued run
            goes on from its own last.pt (or starts the continuation again when it wrote none).

    Under torchrun (RANK, WORLD_SIZE in the environment; `longrec train --nproc N`) every rank calls `train`: the
    ranks join a process group over loopback, rank 0 checks, locks and writes `out` and tells the others whether
    to start (and whether the run continues), and all of them train (`longrec.train.distributed`); the others
    write nothing and report to no callback. `train.batch_size` is the global batch, so `resume` may change the
    number of ranks.

    Raises:
        OutputError: `out` holds something else, or a previous run without `force`/`resume`.
        DirectoryLockedError: another process is writing `out`.
        ConfigError: --resume with changes to fixed settings (every one listed); nothing is written then.
        TrainingDiverged / ValueError / FileNotFoundError: from the store and the loop.
    """
    out = Path(out)
    ranks = current_ranks()
    check_options(ranks, config.train.compile)
    with process_group(ranks, resolve_device(config.train.device)), contextlib.ExitStack() as stack:
        store = open_store(config.data.path, config.data.shards)
        continuing = resume and (out / "config.json").is_file()
        start = _start(out, config, store, continuing, continue_from)
        if config.data.summaries and start is not None:  # refused before anything is written
            raise ValueError(
                f"data.summaries = {config.data.summaries!r} with a continued run: stage 2 starts from the weights "
                "that computed the summaries; expected no --continue-from, got one"
            )
        if not ranks.main:
            refused, continuing = broadcast(None, ranks)  # rank 0's verdict on the run folder
            if refused is not None:
                raise ValueError(f"rank 0 did not start the run: {refused}")
            return _fit(config, store, out, continuing, ranks, [], on_step, {}, start)
        try:
            applied = _check_run_folder(out, config, store, continuing, force)
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(lock_directory(out, "run directory"))
            applied = _check_run_folder(out, config, store, continuing, force)  # again: someone may have finished
            if not continuing:
                for entry in out.iterdir():  # only a previous run's files are here (checked above)
                    if entry.name != "run.lock":
                        _remove(entry)
            write_json(out / "config.json", run_config_dict(config, store, out, start.record if start else None))
        except BaseException as err:
            broadcast((str(err) or type(err).__name__, False), ranks)  # the other ranks stop too
            raise
        broadcast((None, continuing), ranks)
        handler, level = _log_to(out / "log.txt")
        try:
            for line in applied:
                logger.info("--resume: %s", line)
            if ranks.world > 1:
                logger.info("data-parallel: %d ranks, global batch %d", ranks.world, config.train.batch_size)
            report: dict[str, Any] = {"model": config.model.name, **({"resume_changes": applied} if applied else {})}
            if start is not None:
                report["continued_from"] = start.record
                grown = ", ".join(f"{n} {a:,} -> {b:,} rows" for n, (a, b) in start.record["grown"].items())
                logger.info("continuing %s from step %d; grown: %s", start.record["path"], start.record["step"],
                            grown or "nothing")  # fmt: skip
            return _fit(config, store, out, continuing, ranks, callbacks, on_step, report, start)
        finally:
            _stop_logging(handler, level)


def _fit(
    config: Config,
    store: TrajectoryStore,
    out: Path,
    continuing: bool,
    ranks: Ranks,
    callbacks: Sequence[Callback],
    on_step: Callable[[int], None] | None,
    report: dict[str, Any],
    start: Continuation | None = None,
) -> dict[str, Any]:
    """Build the model (seeded: the same on every rank), or take a continued run's start, and train it."""
    torch.manual_seed(config.train.seed)
    sizes = with_content_dim(store.sizes, store, config.data.content)
    model = build_model_for_sizes(config.model.name, config.model.params, sizes)
    if config.data.content:  # the frozen content table (a buffer: the checkpoint carries it)
        matrix, report["content"] = content_matrix(store, config.data.content)
        set_content = getattr(model, "set_content", None)
        if set_content is None:
            raise ValueError(
                f"data.content = {config.data.content} but model '{config.model.name}' does not read item content "
                "(models with a content option: din with content_proj > 0)."
            )
        set_content(torch.from_numpy(matrix))
    if start is not None and start.model is not None:
        model.load_state_dict(start.model)
    if config.data.summaries:  # stage 2: the weights that computed the summaries, user side frozen
        frozen = start_from_summaries(model, config, store)
        if ranks.main:
            logger.info("data.summaries: started from its weights; froze the user side: %s", ", ".join(frozen))
    with collect_keys(config.train.key_collection):
        return fit(
            model,
            store,
            out,
            config.train,
            config.data,
            config.search,
            resume=continuing,
            callbacks=callbacks,
            on_step=on_step,
            report=report,
            ranks=ranks,
            optimizer_state=start.optimizer if start is not None else None,
            evaluate_first="train" if start is not None else None,
        )


def _start(
    out: Path, config: Config, store: TrajectoryStore, continuing: bool, continue_from: str | Path | None
) -> Continuation | None:
    """A continued run's start (None for a fresh run): from `continue_from`, or on --resume from the run's recorded
    one (still needed when the killed run wrote no last.pt, and recorded again in its config.json either way)."""
    if continuing:
        _, info = read_run_config(out)
        recorded = info.get("continued_from")
        if recorded is None and continue_from is None:
            return None
        if recorded is not None and continue_from is not None:
            given = Path(continue_from).resolve()
            if given != Path(recorded["path"]):
                raise ValueError(
                    f"--continue-from {continue_from} differs from the run {out} continued ({recorded['path']}); "
                    "--resume goes on from where it started. Continue into a new --out instead."
                )
        if recorded is not None and (out / "last.pt").is_file():
            return Continuation(None, None, recorded)  # fit resumes from the run's own last.pt
        if recorded is not None and continue_from is None:
            continue_from = recorded["path"]
            if not Path(continue_from).is_dir():
                continue_from = out / recorded["path_from_run"]
    return continuation(continue_from, config, store, out) if continue_from is not None else None


def _check_run_folder(out: Path, config: Config, store: TrajectoryStore, continuing: bool, force: bool) -> list[str]:
    """Refuse a run folder that may not take this run; for --resume, the config changes it applies."""
    if not continuing:
        check_output(out, RUN, force)
        return []
    old, info = read_run_config(out)
    sha = info.get("store", {}).get("vocab_sha")
    same_store = sha == store.manifest["vocab_sha"] if sha else Path(old.data.path).resolve() == store.root.resolve()
    return resume_changes(old, config, same_store)


def _remove(entry: Path) -> None:
    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _log_to(path: Path) -> tuple[logging.Handler, int]:
    """Send the package's INFO lines to `path` too (whatever the console's verbosity); return the handler and the
    package logger's previous level, for `_stop_logging`."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("longrec")
    previous = package.level
    package.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    return handler, previous


def _stop_logging(handler: logging.Handler, level: int) -> None:
    package = logging.getLogger("longrec")
    package.removeHandler(handler)
    package.setLevel(level)
    handler.close()


@dataclass
class Run:
    """A trained run, loaded: its config, store, best model (in eval mode) and the step it was saved at."""

    path: Path
    config: Config
    store: TrajectoryStore
    model: nn.Module
    step: int
    info: dict[str, Any] = field(default_factory=dict)  # the run section of config.json
    unknown: dict[str, int] = field(default_factory=dict)  # unknown raw ids of the last `predict`, per column

    def predict(
        self, data: Any, batch_size: int | None = None, unknown: str = "zero", search: bool = True
    ) -> np.ndarray:
        """Click probabilities [N] of the rows of a DataFrame (raw ids; see `longrec.run.frames`) or a `Batch`.

        Args:
            data: a polars/pandas DataFrame with `target_item` and `hist_items` or `user`; or a collated `Batch`.
            batch_size: rows per forward (default: the run's `train.eval_batch_size`).
            unknown: "zero" scores unknown raw ids as out-of-vocabulary (id 0, counted in `self.unknown`);
                "error" raises on the first.
            search: run the run's search stage before the model (as in training and evaluation).
        """
        searcher = self.config.search if search else None
        if isinstance(data, Batch):
            logits = predict(self.model, [data], search=searcher)["logits"]
            return 1.0 / (1.0 + np.exp(-logits))
        built = frame_batches(
            self.store, data, self.config.data.max_history, batch_size or self.config.train.eval_batch_size, unknown
        )
        self.unknown = built.unknown
        if built.unknown:
            counts = ", ".join(f"{column} {n:,}" for column, n in built.unknown.items())
            logger.warning("predict: ids the store does not know, scored as out-of-vocabulary: %s", counts)
        logits = predict(self.model, built.batches, search=searcher)["logits"]
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def evaluate(self, split: str = "test", progress: bool = False) -> dict[str, Any]:
        """The metrics of the run's best model on every sample of `split` of its store."""
        return evaluate(
            self.model,
            self.store,
            split,
            self.config.train.eval_batch_size,
            self.config.data.max_history,
            progress=progress,
            search=self.config.search,
            summaries=SummaryStore.open(self.config.data.summaries, self.store) if self.config.data.summaries else None,
        )

    def evaluate_retrieval(
        self, split: str = "test", ns: Sequence[int] = (50, 200), pool: PoolConfig | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """Recall@N and NDCG@N of the positives of `split` ranked against a candidate pool (`PoolConfig`, default
        1,000 items drawn by popularity), behind the run's search stage (`longrec.eval.retrieval`)."""
        return evaluate_retrieval(
            self.model,
            self.store,
            split,
            ns,
            pool,
            search=self.config.search,
            max_history=self.config.data.max_history,
            progress=progress,
        )


def load_run(path: str | Path, data: str | Path | None = None) -> Run:
    """Load a run directory written by `train`: its config, its store (checked) and its best model.

    Args:
        path: the run directory.
        data: a store to use instead of the recorded one (it must have the same vocabulary).

    Raises:
        FileNotFoundError: not a run directory, no checkpoint yet, or the store cannot be found (the message says
            where it looked and how to point at it).
        ValueError: a damaged config or checkpoint, or a store with another vocabulary.
    """
    run = Path(path)
    config, info = read_run_config(run)
    store = locate_store(run, config, info, data)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    if checkpoint["vocab_sha"] != store.manifest["vocab_sha"]:
        raise ValueError(
            f"{run / 'checkpoint.pt'} was trained with vocabulary sha {checkpoint['vocab_sha']} but {store.root} has "
            f"{store.manifest['vocab_sha']}; use the store it was trained on, or retrain."
        )
    sizes = with_content_dim(store.sizes, store, config.data.content)  # the content table comes from the checkpoint
    model = build_model_for_sizes(config.model.name, config.model.params, sizes)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return Run(run, config, store, model, int(checkpoint.get("step", 0)), info)


def analyze_run(
    path: str | Path, out: str | Path | None = None, split: str = "valid", samples: int = 4096, data: str | None = None
) -> dict[str, Any]:
    """Write the analysis PNGs and `analysis.json` of a run (`longrec.eval.analyze.analyze`) into `out`
    (default: RUN/plots, redrawn in place); return the numbers and the PNG paths."""
    from longrec.eval.analyze import analyze

    run = load_run(path, data)
    target = Path(out) if out is not None else run.path / "plots"
    check_output(target, PLOTS)
    with lock_directory(run.path, "run directory"):
        target.mkdir(parents=True, exist_ok=True)
        return analyze(
            run.model,
            run.store,
            target,
            search=run.config.search,
            max_history=run.config.data.max_history,
            split=split,
            samples=samples,
            title=f"{run.path.name} ({run.config.model.name})",
            history=run.path / "metrics.jsonl",
            meta={"run": str(run.path), "model": run.config.model.name},
        )


def summarise(
    run: str | Path,
    out: str | Path,
    max_history: int | None = None,
    batch_size: int = 64,
    dtype: str = "float16",
    force: bool = False,
    data: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Stage 1 -> store: the summaries of every sample of a run's store, by the run's best model.

    Args:
        run: a run directory of a `CachedUserState` model (`longrec train`).
        out: the summary store to write.
        max_history: the history window (default: the run's `data.max_history`).
        batch_size, dtype, force, progress: as `compute_summaries`.
        data: a store to use instead of the run's (same vocabulary).
    """
    loaded = load_run(run, data)
    window = max_history if max_history is not None else loaded.config.data.max_history
    source = {"run": Path(run).name, "step": loaded.step, "trained_max_history": loaded.config.data.max_history}
    return compute_summaries(
        loaded.model,
        loaded.store,
        out,
        loaded.config.model.name,
        loaded.config.model.params,
        window,
        batch_size,
        dtype,
        force=force,
        source=source,
        progress=progress,
    )
