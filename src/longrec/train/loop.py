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

One step is `train_step`; `benchmarks/bench_throughput.py` times exactly that function.

System options (SPEC §5; each off by default, each with a parity test against the plain path in
tests/train/test_optimizations.py and a measured effect in `benchmarks/bench_optimizations.py`):
`train.precision = "bf16"` (autocast, `longrec.data.device.autocast`), `train.key_collection` (one lookup per distinct
id, `longrec.models.layers.collect_keys`), `train.compile` (`compile_model`), `train.device` (CUDA with pinned,
non-blocking copies on a side stream, `longrec.data.device.DevicePrefetcher`), `data.bucket_by_length` (batches of
similar history lengths, `longrec.data.dataset.epoch_batches`) and `data.num_workers` (batches built in background
processes).
"""

from __future__ import annotations

import ctypes
import difflib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch
from longrec.data.config import DataConfig
from longrec.data.dataset import make_loader
from longrec.data.device import DevicePrefetcher, autocast, resolve_device
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate, metrics_lines
from longrec.files import atomic_write_text, dumps_json, write_json
from longrec.models.contract import AuxiliaryHead, ExtraLoss, OwnLoss, SearchEmbedder
from longrec.models.layers import fast_paths
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.callbacks import Callback, make_loggers, progress_callback
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
from longrec.train.config import TrainConfig

__all__ = [
    "TrainingDiverged",
    "compile_model",
    "fit",
    "goal_loss_weights",
    "l2_penalty",
    "make_optimizer",
    "reuse_freed_memory",
    "train_step",
]

logger = logging.getLogger(__name__)


def l2_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of squared non-embedding weights (biases and norm parameters excluded), as in DARE's setup."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    terms = [p.pow(2).sum() for n, p in model.named_parameters() if p.dim() > 1 and id(p) not in embeddings]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def goal_loss_weights(goal_weights: Mapping[str, float], goal_names: Sequence[str]) -> torch.Tensor | None:
    """BCE weight per goal id [T] from `train.goal_weights` (by goal name); None when no weight is set.

    Args:
        goal_weights: goal name -> weight; goals not named (and id 0, the unknown goal) weigh 1.
        goal_names: the store's goal vocabulary in dense-id order (goal id = position + 1); empty without goals.

    Raises:
        ValueError: a name that is not one of the data's goals.
    """
    if not goal_weights:
        return None
    weights = torch.ones(len(goal_names) + 1)  # [T]
    for name, weight in goal_weights.items():
        if name not in goal_names:
            close = difflib.get_close_matches(name, goal_names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(goal_names) if goal_names else "none: the data has no goal column"
            raise ValueError(f"train.goal_weights: {name!r} is not a goal of the data{hint}. Its goals: {known}.")
        weights[1 + list(goal_names).index(name)] = float(weight)
    return weights


def reuse_freed_memory() -> bool:
    """Keep freed memory in the process for the next step instead of handing it back to the OS (glibc only).

    glibc serves every allocation above 32 MB from fresh `mmap` pages and unmaps them on free, so each [B, L, E] tensor
    of a big batch is page-faulted and zeroed by the kernel again on every step: a 78 MB copy measured 29 ms into fresh
    pages and 5 ms into reused ones, and at batch 2048 this doubled the step time. `mallopt(M_MMAP_MAX, 0)` serves
    big blocks from the heap, and a 1 GB `M_TRIM_THRESHOLD` keeps the freed heap. The cost: the process keeps its
    peak memory. Process-wide; a no-op returning False where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam on every parameter; on the fast paths its fused kernel: one pass over each tensor instead of about ten
    (1.7 ms instead of 4.7 ms for DARE's 2M parameters on one CPU thread, the same update up to float rounding)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fast_paths())


# The capabilities whose methods a training or evaluation step calls; `compile_model` compiles a model's.
COMPILED_CAPABILITIES: dict[type, tuple[str, ...]] = {
    AuxiliaryHead: ("forward_with_aux", "aux_logits"),
    ExtraLoss: ("forward_with_extra_loss",),
    SearchEmbedder: ("search_embeddings",),
    OwnLoss: ("loss",),
}


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` the model in place: its `forward` and the step's methods of its capabilities.

    In place (`nn.Module.compile` plus compiled bound methods set on the instance), so parameter names, the state dict
    and checkpoints stay those of the eager model. The first steps pay the compilation (seconds to a minute on a CPU;
    a new history length L may compile again, after which shapes are treated as dynamic).

    Raises:
        RuntimeError: torch.compile cannot run here (on the CPU, inductor needs a C++ compiler such as gcc).
    """
    if not torch._dynamo.is_dynamo_supported():  # e.g. a Python version dynamo does not support yet
        raise RuntimeError(f"train.compile: torch.compile is not supported on this Python ({sys.version.split()[0]}).")
    on_cpu = all(p.is_cpu for p in model.parameters())
    if on_cpu and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise RuntimeError(
            "train.compile: torch.compile on the CPU needs a C++ compiler (inductor generates C++), and none of "
            "$CXX, g++, c++, clang++ is on PATH. Install one (e.g. apt-get install g++) or set train.compile=false."
        )
    model.compile()
    for capability, names in COMPILED_CAPABILITIES.items():
        if isinstance(model, capability):
            for name in names:
                setattr(model, name, torch.compile(getattr(model, name)))
    return model


def train_step(
    model: torch.nn.Module,
    batch: Batch,
    search: SearchConfig,
    optimizer: torch.optim.Optimizer,
    l2: float = 0.0,
    goal_weight: torch.Tensor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimizer step on `batch`: search, forward, BCE (+ the auxiliary head's BCE), L2, backward, update.

    Args:
        model: the model (set to train mode here).
        batch: a collated batch with labels.
        search: the search stage's config.
        optimizer: stepped once.
        l2: weight of `l2_penalty` (0 = off).
        goal_weight: [T] BCE weight per goal id (`goal_loss_weights`), or None.
        precision: "fp32", or "bf16": search and forward under bf16 autocast (`longrec.data.device.autocast`); the
            losses are computed on fp32 logits, the backward and the update in fp32.

    Returns:
        The loss, detached: the (goal-weighted) BCE averaged over the batch, plus the auxiliary BCE, the model's
        extra loss (`forward_with_extra_loss`) and the L2 term; or, for a model whose `loss(batch)` returns a
        tensor, that loss plus the L2 term.
    """
    model.train()
    assert batch.label is not None  # collate always sets labels
    # A model with its own training loss (TD-SASRec's sampled softmax over in-batch candidates) uses it instead of
    # BCE (its in-batch candidates couple the rows of the batch).
    device = batch.history.device
    with autocast(precision, device):
        own_loss = model.loss(search_stage(batch, model, search)) if isinstance(model, OwnLoss) else None
    if own_loss is not None:
        own_loss = own_loss.float()
        loss = own_loss + l2 * l2_penalty(model) if l2 else own_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    # Fast path: a model that can serve search, the main head and the aux head from one lookup does (TWIN, DARE).
    with autocast(precision, device):
        both = model.forward_with_aux(batch, search) if isinstance(model, AuxiliaryHead) and fast_paths() else None
        extra_loss = aux_logits = None
        if both is not None:
            logits, aux_logits = both  # [B] each
        else:
            searched = search_stage(batch, model, search)
            # A model with a regulariser computed in the same forward (VISTA's reconstruction, VQL's codebook and
            # commitment losses) returns it beside the logits; it is added to the training loss, never to the logloss.
            if isinstance(model, ExtraLoss):
                logits, extra_loss = model.forward_with_extra_loss(searched)  # [B], scalar
            else:
                logits = model(searched)  # [B]
            # [B] full-history attention head, or None
            aux_logits = model.aux_logits(batch) if isinstance(model, AuxiliaryHead) else None
    # The losses in fp32, whatever precision the forward ran in.
    logits = logits.float()  # [B]
    aux_logits = aux_logits.float() if aux_logits is not None else None  # [B]
    extra_loss = extra_loss.float() if extra_loss is not None else None
    weight = goal_weight[batch.goal] if goal_weight is not None and batch.goal is not None else None  # [B]
    loss = F.binary_cross_entropy_with_logits(logits, batch.label, weight=weight)
    if extra_loss is not None:
        loss = loss + extra_loss
    if aux_logits is not None:
        loss = loss + F.binary_cross_entropy_with_logits(aux_logits, batch.label, weight=weight)
    if l2:
        loss = loss + l2 * l2_penalty(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


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

    Returns:
        The final metrics (what metrics.json holds): {"valid": {...}, "test": {...}, "best_step", "steps",
        "train_seconds" (all segments), "segments", "parameters", "selection_metric"}.

    Raises:
        TrainingDiverged: the loss diverged; the checkpoints written before stay.
        ValueError: a validation split that cannot pick checkpoints, or a metric that is undefined on it.
    """
    out = Path(out)
    tc, dc = train, data
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if fast_paths():
        reuse_freed_memory()
    _check_validation_labels(store, tc.metric)
    device = resolve_device(tc.device)
    model = model.to(device)
    optimizer = make_optimizer(model, tc.lr)
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
        atomic_write_text(out / "metrics.jsonl", "".join(dumps_json(x, indent=None) + "\n" for x in state["history"]))
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            out / "last.pt",
            state["step"],
            state["epoch"] + 1,
            state["batch"],
        )
    if tc.compile:
        compile_model(model)
    shown = [c for c in (progress_callback(tc.progress),) if c is not None]
    listeners: list[Callback] = [*shown, *make_loggers(tc.loggers, out, tc.log_every), *callbacks]
    eval_options: dict[str, Any] = {
        "batch_size": tc.eval_batch_size,
        "max_history": dc.max_history,
        "num_workers": dc.num_workers,
        "search": search,
        "device": device,
        "precision": tc.precision,
        "bucket_by_length": dc.bucket_by_length,
    }
    vocab_sha = store.manifest["vocab_sha"]
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
        line = {"step": state["step"], "epoch": state["epoch"], **{k: v for k, v in metrics.items() if k != "per_goal"}}
        state["history"].append(line)
        state["validated_step"] = state["step"]
        with open(out / "metrics.jsonl", "a") as f:
            f.write(dumps_json(line, indent=None) + "\n")
        best = _better(tc.metric, value, state["best"])
        if best:
            state["best"], state["best_step"], state["stale"] = value, state["step"], 0
            save_checkpoint(
                out / "checkpoint.pt",
                {
                    "model": model.state_dict(),
                    "step": state["step"],
                    "metric": {tc.metric: value},
                    "vocab_sha": vocab_sha,
                },
            )
        else:
            state["stale"] += 1
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
        raise TrainingDiverged(
            f"training diverged at step {step} (epoch {state['epoch'] + 1}): {why}. Lower train.lr (now {tc.lr:g}) "
            f"and train again with --force; {out} keeps the checkpoints written before step {step}."
        )

    logger.info("training on %s: %d samples, %d steps/epoch", store.root, num_train, steps_per_epoch)
    info = {"steps_total": steps_per_epoch * tc.epochs, "steps_done": state["step"], "epochs": tc.epochs}
    for listener in listeners:
        listener.on_train_start({**info, "samples_per_epoch": num_train, "out": str(out)})
    stop = state.get("stopped", False)
    result: dict[str, Any] = {}
    try:
        while not stop and state["epoch"] < tc.epochs:
            loader = make_loader(
                store,
                "train",
                tc.batch_size,
                dc.max_history,
                shuffle=True,
                seed=tc.seed,
                epoch=state["epoch"],
                start_batch=state["batch"],
                num_workers=dc.num_workers,
                prefetch_factor=dc.prefetch_factor,
                pin_memory=device.type == "cuda",
                check=dc.check_batches,
                bucket_by_length=dc.bucket_by_length,
                bucket_batches=dc.bucket_batches,
            )
            for batch in DevicePrefetcher(loader, device):
                loss = train_step(model, batch, search, optimizer, tc.l2, goal_weight, tc.precision)
                state["step"] += 1
                state["batch"] += 1
                check_divergence(loss)
                for listener in listeners:
                    listener.on_step(state["step"], state["epoch"], loss, len(batch))
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
        }
        for split in ("valid", "test"):
            result[split] = evaluate(model, store, split, **eval_options)
        write_json(out / "metrics.json", result)
        for line in metrics_lines({"valid": result["valid"], "test": result["test"]}):
            logger.info(line)
    finally:
        for listener in listeners:
            listener.on_train_end(result)  # {} when the run failed
    return result
