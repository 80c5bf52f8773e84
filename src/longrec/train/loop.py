"""The one training loop: `fit(model, store, out, train, data, search)`, top to bottom.

Adam on BCE (plus an optional L2 penalty on non-embedding weights), validation every `eval_every` steps or each
epoch, the best checkpoint by the chosen validation metric, early stopping, then the best model scored on the
validation and test splits. `last.pt` is written atomically at every validation and holds everything needed to
resume (model, optimizer, RNG state, data position, best-so-far, time spent), so a killed run resumed with
`resume=True` ends with the same metrics as an uninterrupted run with the same seed: batch order is a pure function of
(seed, epoch), and every step after the last checkpoint is redone identically.

The loop fails loudly rather than "succeed" with a broken model: a validation split with one label (AUC cannot rank
checkpoints) is refused before the first step; a loss that stops being finite, or whose mean over 20 steps exceeds
`train.divergence` times the first step's, stops the run with `TrainingDiverged` naming the step; a validation metric
that is undefined (NaN) is an error, not a checkpoint that is never written; and the last steps are always validated,
also when `eval_every` does not divide them. What the run does is reported to `longrec.train.callbacks` listeners
(progress bar or lines, CSV, TensorBoard).

`fit` writes only the training artefacts (checkpoint.pt, last.pt, metrics.jsonl, metrics.json, the loggers' files);
the run directory itself (config.json, the lock, what may be resumed) belongs to `longrec.run`, which calls it.

One step is `longrec.train.step.train_step` (with the optimizer, compilation and the system options). With several
ranks (torchrun; `ranks`), each rank trains on its part of every global batch under `DistributedDataParallel`, the
validation metrics are computed over the whole split, and only rank 0 writes (`longrec.train.distributed`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longrec.data.config import DataConfig
from longrec.data.dataset import epoch_batches, make_loader
from longrec.data.device import DevicePrefetcher, resolve_device
from longrec.data.store import TrajectoryStore
from longrec.data.summaries import SummaryStore
from longrec.eval.evaluate import evaluate, metrics_lines
from longrec.files import atomic_write_text, dumps_json, write_json
from longrec.models.layers import fast_paths
from longrec.search.config import SearchConfig
from longrec.train.callbacks import Callback, make_loggers, progress_callback
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
from longrec.train.config import TrainConfig
from longrec.train.distributed import LossModule, Ranks, all_mean, barrier, check_options, setup, shard
from longrec.train.step import compile_model, goal_loss_weights, make_optimizer, reuse_freed_memory, train_step

__all__ = [
    "TrainingDiverged",
    "fit",
]

logger = logging.getLogger(__name__)


DIVERGENCE_WINDOW = 20  # steps whose mean loss is compared with the first step's


class TrainingDiverged(ValueError):
    """The training loss stopped being finite or grew far beyond its start (`train.divergence`)."""


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "logloss" else value > best


def _check_validation_labels(store: TrajectoryStore, metric: str) -> None:
    """Refuse, before the first step, a validation split that cannot pick checkpoints by `metric`."""
    labels = np.asarray(store.samples("valid").label)
    if labels.size == 0:
        raise ValueError(f"the validation split of {store.root} is empty: nothing to pick checkpoints with.")
    if metric != "logloss" and np.unique(labels).size < 2:
        raise ValueError(
            f"the validation split of {store.root} holds only label {labels.flat[0]:g} ({labels.size:,} samples): "
            f"train.metric = '{metric}' (a ranking metric) cannot pick checkpoints without both labels. Use "
            "train.metric = 'logloss', or prepare the data so that validation holds positives and negatives."
        )


def fit(
    model: torch.nn.Module,
    store: TrajectoryStore,
    out: str | Path,
    train: TrainConfig,
    data: DataConfig,
    search: SearchConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[int], None] | None = None,
    report: Mapping[str, Any] | None = None,
    ranks: Ranks | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    evaluate_first: str | None = None,
) -> dict[str, Any]:
    """Train `model` on `store`'s train split, validating on its valid split; write the artefacts into `out`.

    Args:
        model: a freshly built model (seeded by the caller) for `store`'s vocabularies.
        store: the prepared data.
        out: an existing folder owned by the caller (`longrec.run.train` checks and locks it): checkpoint.pt (best
            model), last.pt (resume state), metrics.jsonl (one line per validation), metrics.json (final metrics).
        train: optimisation, validation and stopping (`TrainConfig`).
        data: batching (`DataConfig`; its `path` is not read: `store` is).
        search: the search stage run before the model.
        resume: continue from `out/last.pt` when it exists (a changed `train.lr` is applied to the optimizer).
        callbacks: listeners (`longrec.train.callbacks`), besides the progress display and `train.loggers`.
        on_step: called with the global step after every optimizer step (tests use it to simulate a crash).
        report: JSON-ready fields put first in the result and metrics.json (e.g. the model's name).
        ranks: this process's rank in a data-parallel run (default: one rank); every rank calls `fit`, only rank 0
            writes into `out` and reports to `callbacks`.
        optimizer_state: Adam's state to start from (a continued run: `longrec.train.grow`); `train.lr` applies.
        evaluate_first: a split to score the model on before its first step (progressive validation of a continued
            run: the model trained through day d on day d + 1's train samples, before it trains on them); kept in
            the result as "before_training".

    Returns:
        The final metrics (what metrics.json holds): {"valid": {...}, "test": {...}, "best_step", "steps",
        "train_seconds" (all segments), "segments", "parameters", "selection_metric"}.

    Raises:
        TrainingDiverged: the loss diverged; the checkpoints written before stay.
        ValueError: a validation split that cannot pick checkpoints, or a metric that is undefined on it.
    """
    out = Path(out)
    tc, dc = train, data
    ranks = ranks or Ranks()
    check_options(ranks, tc.compile)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if fast_paths():
        reuse_freed_memory()
    _check_validation_labels(store, tc.metric)
    device = setup(ranks, resolve_device(tc.device))
    model = model.to(device)
    optimizer = make_optimizer(model, tc.lr, tc.optimizer)
    if optimizer_state is not None:
        optimizer.load_state_dict(dict(optimizer_state))
        for group in optimizer.param_groups:
            group["lr"] = tc.lr
    goal_names = [str(g) for g in store.vocab("goal").to_list()] if store.sizes.get("num_goals", 1) > 1 else []
    goal_weight = goal_loss_weights(tc.goal_weights, goal_names)  # [T] or None
    goal_weight = goal_weight.to(device) if goal_weight is not None else None
    num_train = len(store.samples("train"))
    steps_per_epoch = -(-num_train // tc.batch_size)
    state: dict[str, Any] = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "best": None,
        "best_step": 0,
        "stale": 0,
        "history": [],
        "validated_step": -1,
        "first_loss": None,
        "segments": [],
    }
    if resume and (out / "last.pt").is_file():
        saved = load_checkpoint(out / "last.pt")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = {**state, **saved["state"]}
        for group in optimizer.param_groups:  # a changed train.lr applies from here on (longrec.run checked it)
            group["lr"] = tc.lr
        # metrics.jsonl holds exactly the saved validations: lines a killed run wrote after last.pt are redone
        if ranks.main:
            history = "".join(dumps_json(x, indent=None) + "\n" for x in state["history"])
            atomic_write_text(out / "metrics.jsonl", history)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            out / "last.pt",
            state["step"],
            state["epoch"] + 1,
            state["batch"],
        )
    summaries = SummaryStore.open(dc.summaries, store) if dc.summaries else None
    if tc.compile:
        compile_model(model)
    # Several ranks: DDP wraps the whole loss (the model's capability methods run inside its forward) and averages
    # the gradients over the ranks in backward.
    step_module = None
    if ranks.world > 1:
        loss_module = LossModule(model, search, tc.l2, goal_weight, tc.precision)
        step_module = torch.nn.parallel.DistributedDataParallel(loss_module, find_unused_parameters=True)
    listeners: list[Callback] = []
    if ranks.main:
        shown = [c for c in (progress_callback(tc.progress),) if c is not None]
        listeners = [*shown, *make_loggers(tc.loggers, out, tc.log_every), *callbacks]
    eval_options: dict[str, Any] = {
        "batch_size": tc.eval_batch_size,
        "max_history": dc.max_history,
        "num_workers": dc.num_workers,
        "search": search,
        "device": device,
        "precision": tc.precision,
        "bucket_by_length": dc.bucket_by_length,
        "ranks": (ranks.rank, ranks.world),
        "summaries": summaries,
    }
    vocab_sha = store.manifest["vocab_sha"]
    if evaluate_first is not None and "before_training" not in state:
        state["before_training"] = {"split": evaluate_first, **evaluate(model, store, evaluate_first, **eval_options)}
        for line in metrics_lines({f"{evaluate_first} before training": state["before_training"]}):
            logger.info(line)
    segment = {"from_step": state["step"], "to_step": state["step"], "seconds": 0.0}
    state["segments"].append(segment)
    started = time.perf_counter()

    def checkpoint_state() -> dict[str, Any]:
        segment["to_step"], segment["seconds"] = state["step"], round(time.perf_counter() - started, 2)
        return state

    def validate() -> bool:
        """Validate, keep the best model, write last.pt; True when early stopping says stop."""
        metrics = evaluate(model, store, "valid", **eval_options)
        value = float(metrics[tc.metric])
        if math.isnan(value):
            raise ValueError(
                f"train.metric = '{tc.metric}' is undefined on the validation split of {store.root} at step "
                f"{state['step']} (no group holds both labels). Use train.metric = 'auc' or 'logloss'."
            )
        line = {
            "step": state["step"],
            "epoch": state["epoch"],
            **{k: v for k, v in metrics.items() if k not in ("per_goal", "per_scene")},
        }
        state["history"].append(line)
        state["validated_step"] = state["step"]
        if ranks.main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(dumps_json(line, indent=None) + "\n")
        best = _better(tc.metric, value, state["best"])
        if best:
            state["best"], state["best_step"], state["stale"] = value, state["step"], 0
        else:
            state["stale"] += 1
        if ranks.main:  # every rank keeps the same state; rank 0 writes it
            if best:
                checkpoint = {"model": model.state_dict(), "step": state["step"], "metric": {tc.metric: value}}
                save_checkpoint(out / "checkpoint.pt", {**checkpoint, "vocab_sha": vocab_sha})
            save_checkpoint(
                out / "last.pt",
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "state": checkpoint_state(),
                },
            )
        logger.info(
            "step %d valid %s=%.5f (best %.5f at step %d)",
            state["step"],
            tc.metric,
            value,
            state["best"],
            state["best_step"],
        )
        for listener in listeners:
            listener.on_validation(state["step"], state["epoch"], line, best)
        return bool(tc.patience and state["stale"] >= tc.patience)

    window = torch.zeros((), device=device)  # sum of the losses of the current divergence window

    def check_divergence(loss: torch.Tensor) -> None:
        nonlocal window
        step = state["step"]
        if state["first_loss"] is None:
            state["first_loss"] = float(loss)
        window = window + loss
        if step % DIVERGENCE_WINDOW and math.isfinite(state["first_loss"]):
            return
        mean = float(window) / DIVERGENCE_WINDOW
        window = torch.zeros((), device=device)
        first = state["first_loss"]
        limit = tc.divergence * max(first, 1e-3) if tc.divergence else math.inf
        if math.isfinite(mean) and math.isfinite(first) and mean <= limit:
            return
        lo = max(1, step - DIVERGENCE_WINDOW + 1)
        why = (
            f"the loss is not finite ({mean}) over steps {lo}-{step}"
            if not (math.isfinite(mean) and math.isfinite(first))
            else f"the mean loss over steps {lo}-{step} is {mean:.4g}, more than train.divergence = "
            f"{tc.divergence:g} times the first step's {first:.4g}"
        )
        kept = (
            f"{out} keeps the best checkpoint, of step {state['best_step']}"
            if state["history"]
            else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"training diverged at step {step} (epoch {state['epoch'] + 1}): {why}. Lower train.lr (now {tc.lr:g}) "
            f"and train again with --force; {kept}."
        )

    logger.info(
        "training on %s: %d samples, %d steps/epoch%s",
        store.root,
        num_train,
        steps_per_epoch,
        f", {ranks.world} ranks" if ranks.world > 1 else "",
    )
    bucket = dc.bucket_by_length and summaries is None  # stored states have no length to bucket by
    lengths = np.minimum(store.samples("train").end, dc.max_history) if bucket else None  # [N]
    info = {"steps_total": steps_per_epoch * tc.epochs, "steps_done": state["step"], "epochs": tc.epochs}
    for listener in listeners:
        listener.on_train_start({**info, "samples_per_epoch": num_train, "out": str(out), "model": model})
    stop = state.get("stopped", False)
    result: dict[str, Any] = {}
    try:
        while not stop and state["epoch"] < tc.epochs:
            # The epoch's global batches (a pure function of (seed, epoch)), and this rank's part of each.
            plan = epoch_batches(
                num_train, tc.batch_size, tc.shuffle, tc.seed, state["epoch"], lengths, dc.bucket_batches
            )
            parts = [shard(rows, ranks) for rows in plan[state["batch"] :]]
            sizes = [len(rows) for rows in plan[state["batch"] :]]  # global batch sizes
            loader = make_loader(
                store,
                "train",
                tc.batch_size,
                dc.max_history,
                batches=[rows for rows, _ in parts],
                num_workers=dc.num_workers,
                prefetch_factor=dc.prefetch_factor,
                pin_memory=device.type == "cuda",
                check=dc.check_batches,
                summaries=summaries,
            )
            for i, batch in enumerate(DevicePrefetcher(loader, device)):
                if step_module is None:
                    loss = train_step(model, batch, search, optimizer, tc.l2, goal_weight, tc.precision)
                else:
                    loss = step_module(batch, parts[i][1])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # DDP averages the gradients over the ranks here
                    optimizer.step()
                    loss = all_mean(loss.detach(), ranks)  # the global batch's loss, the same on every rank
                state["step"] += 1
                state["batch"] += 1
                check_divergence(loss)
                for listener in listeners:
                    listener.on_step(state["step"], state["epoch"], loss, sizes[i])
                if on_step is not None:
                    on_step(state["step"])
                at_limit = bool(tc.max_steps and state["step"] >= tc.max_steps)
                if at_limit or (tc.eval_every and state["step"] % tc.eval_every == 0):
                    if state["batch"] == steps_per_epoch:
                        state["epoch"], state["batch"] = state["epoch"] + 1, 0
                    stop = validate() or at_limit
                    if stop or state["batch"] == 0:
                        break
            else:
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
                if not tc.eval_every:
                    stop = validate()
        state["stopped"] = True
        if state["validated_step"] != state["step"]:  # the steps after the last multiple of eval_every
            validate()
        # Score the best model on valid and test, every sample.
        barrier(ranks)  # rank 0 has written checkpoint.pt
        best = load_checkpoint(out / "checkpoint.pt")
        model.load_state_dict(best["model"])
        checkpoint_state()
        result = {
            **(report or {}),
            "steps": state["step"],
            "best_step": state["best_step"],
            "selection_metric": tc.metric,
            "train_seconds": round(sum(s["seconds"] for s in state["segments"]), 2),
            "segments": state["segments"],
            "parameters": sum(p.numel() for p in model.parameters()),
            **({"before_training": state["before_training"]} if "before_training" in state else {}),
        }
        for split in ("valid", "test"):  # a split empty on purpose (a day's store has no test window) has no metrics
            empty = {"auc": math.nan, "gauc": math.nan, "logloss": math.nan, "count": 0}
            result[split] = evaluate(model, store, split, **eval_options) if len(store.samples(split)) else empty
        if ranks.main:
            write_json(out / "metrics.json", result)
        for line in metrics_lines({"valid": result["valid"], "test": result["test"]}):
            logger.info(line)
    finally:
        for listener in listeners:
            listener.on_train_end(result)  # {} when the run failed
    return result
