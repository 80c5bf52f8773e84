"""The one training loop: `train(config, out)`, top to bottom.

Adam on BCE (plus an optional L2 penalty on non-embedding weights), validation every `eval_every` steps or each
epoch, the best checkpoint by the chosen validation metric, early stopping, then the best model scored on the
validation and test splits. `last.pt` is written atomically at every validation and holds everything needed to
resume (model, optimizer, RNG state, data position, best-so-far), so a killed run resumed with `resume=True`
ends with the same metrics as an uninterrupted run with the same seed: batch order is a pure function of
(seed, epoch), and every step after the last checkpoint is redone identically.

One step is `train_step`; `benchmarks/bench_throughput.py` times exactly that function.

System options (SPEC §5; each off by default, each with a parity test against the plain path in
tests/train/test_optimizations.py and a measured effect in `benchmarks/bench_optimizations.py`):
`train.precision = "bf16"` (autocast, `longrec.train.device.autocast`), `train.key_collection` (one lookup per distinct
id, `longrec.models.layers.collect_keys`), `train.compile` (`compile_model`), `train.device` (CUDA with pinned,
non-blocking copies on a side stream, `longrec.train.device.DevicePrefetcher`), `data.bucket_by_length` (batches of
similar history lengths, `longrec.data.dataset.epoch_batches`) and `data.num_workers` (batches built in background
processes).
"""

from __future__ import annotations

import ctypes
import difflib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from longrec.config import DATA_SIZE_FIELDS, Config, SearchConfig
from longrec.data.batch import Batch
from longrec.data.dataset import make_loader
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate
from longrec.files import atomic_write_text
from longrec.models import MODELS, build_model, data_params
from longrec.models.layers import collect_keys, fast_paths
from longrec.search import search_stage
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
from longrec.train.device import DevicePrefetcher, autocast, resolve_device

__all__ = [
    "build_model_for_store",
    "compile_model",
    "goal_loss_weights",
    "l2_penalty",
    "make_optimizer",
    "reuse_freed_memory",
    "train",
    "train_step",
]

logger = logging.getLogger(__name__)


def build_model_for_store(name: str, params: dict[str, Any], store: TrajectoryStore) -> torch.nn.Module:
    """Build model `name` with the data-derived sizes its config declares (num_items, ...) plus `params`."""
    sizes = {k: v for k, v in store.sizes.items() if k in DATA_SIZE_FIELDS}
    config_cls = MODELS[name][0] if name in MODELS else None
    return build_model(name, **(data_params(config_cls, sizes) if config_cls else {}), **params)


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


# The model methods a training or evaluation step calls; `compile_model` compiles the ones a model has.
COMPILED_METHODS = ("forward_with_aux", "forward_with_extra_loss", "aux_logits", "search_embeddings", "loss")


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` the model in place: its `forward` and every method of `COMPILED_METHODS` it has.

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
    for name in COMPILED_METHODS:
        method = getattr(model, name, None)
        if callable(method):
            setattr(model, name, torch.compile(method))
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
        precision: "fp32", or "bf16": search and forward under bf16 autocast (`longrec.train.device.autocast`); the
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
    own = getattr(model, "loss", None)
    with autocast(precision, device):
        own_loss = own(search_stage(batch, model, search)) if callable(own) else None
    if own_loss is not None:
        own_loss = own_loss.float()
        loss = own_loss + l2 * l2_penalty(model) if l2 else own_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    # Fast path: a model that can serve search, the main head and the aux head from one lookup does (TWIN, DARE).
    fused = getattr(model, "forward_with_aux", None) if fast_paths() else None
    with autocast(precision, device):
        both = fused(batch, search) if fused is not None else None
        extra_loss = None
        if both is not None:
            logits, aux_logits = both  # [B] each
        else:
            searched = search_stage(batch, model, search)
            # A model with a regulariser computed in the same forward (VISTA's reconstruction, VQL's codebook and
            # commitment losses) returns it beside the logits; it is added to the training loss, never to the logloss.
            with_extra = getattr(model, "forward_with_extra_loss", None)
            if with_extra is not None:
                logits, extra_loss = with_extra(searched)  # [B], scalar
            else:
                logits = model(searched)  # [B]
            aux = getattr(model, "aux_logits", None)
            aux_logits = aux(batch) if aux is not None else None  # [B] full-history attention head, or None
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


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric == "logloss" else value > best


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not enabled or not sys.stderr.isatty(),
        transient=True,
    )


def train(
    config: Config,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `config.model` on `config.data.path`, writing a run directory.

    Args:
        config: the resolved experiment config.
        out: the run directory: config.json, checkpoint.pt (best), last.pt (resume state), metrics.jsonl (one line
            per validation), metrics.json (final valid/test metrics of the best model) and log.txt.
        resume: continue from `out/last.pt` if it exists.
        on_step: called with the global step after every optimizer step (tests use it to simulate a crash).

    Returns:
        The final metrics: {"valid": {...}, "test": {...}, "best_step": int, "steps": int, ...}.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # log.txt gets INFO lines whatever the console verbosity; the logger's level is restored afterwards.
    handler = logging.FileHandler(out / "log.txt")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("longrec")
    previous = package_logger.level
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    try:
        with collect_keys(config.train.key_collection):
            return _train(config, out, resume, on_step)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)
        handler.close()


def _train(config: Config, out: Path, resume: bool, on_step: Callable[[int], None] | None) -> dict[str, Any]:
    tc, dc = config.train, config.data
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if fast_paths():
        reuse_freed_memory()
    device = resolve_device(tc.device)
    store = TrajectoryStore.open(dc.path)
    torch.manual_seed(tc.seed)
    model = build_model_for_store(config.model.name, config.model.params, store).to(device)
    optimizer = make_optimizer(model, tc.lr)
    goal_names = [str(g) for g in store.vocab("goal").to_list()] if store.sizes.get("num_goals", 1) > 1 else []
    goal_weight = goal_loss_weights(tc.goal_weights, goal_names)  # [T] or None
    goal_weight = goal_weight.to(device) if goal_weight is not None else None
    atomic_write_text(out / "config.json", config.to_json())
    num_train = len(store.samples("train"))
    steps_per_epoch = -(-num_train // tc.batch_size)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_step": 0, "stale": 0, "history": []}
    if resume and (out / "last.pt").is_file():
        saved = load_checkpoint(out / "last.pt")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            out / "last.pt",
            state["step"],
            state["epoch"],
            state["batch"],
        )
    if tc.compile:
        compile_model(model)
    logger.info("training %s on %s: %d samples, %d steps/epoch", config.model.name, dc.path, num_train, steps_per_epoch)
    eval_options: dict[str, Any] = {
        "batch_size": tc.eval_batch_size,
        "max_history": dc.max_history,
        "num_workers": dc.num_workers,
        "search": config.search,
        "device": device,
        "precision": tc.precision,
        "bucket_by_length": dc.bucket_by_length,
    }
    vocab_sha = store.manifest["vocab_sha"]

    def validate() -> bool:
        """Validate, keep the best model, write last.pt; True when early stopping says stop."""
        metrics = evaluate(model, store, "valid", **eval_options)
        value = float(metrics[tc.metric])
        line = {"step": state["step"], "epoch": state["epoch"], **{k: v for k, v in metrics.items() if k != "per_goal"}}
        state["history"].append(line)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        if _better(tc.metric, value, state["best"]):
            state["best"], state["best_step"], state["stale"] = value, state["step"], 0
            save_checkpoint(
                out / "checkpoint.pt",
                {
                    "model": model.state_dict(),
                    "model_name": config.model.name,
                    "model_config": config.model.params,
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
                "state": state,
            },
        )
        logger.info(
            "step %d valid %s=%.5f (best %.5f at step %d)",
            state["step"],
            tc.metric,
            value,
            state["best"] or float("nan"),
            state["best_step"],
        )
        return bool(tc.patience and state["stale"] >= tc.patience)

    stop = state.get("stopped", False)
    started, seen, next_status = time.perf_counter(), 0, 0.0
    with _progress(tc.progress) as bar:
        task = bar.add_task("training", total=steps_per_epoch * tc.epochs, completed=state["step"], status="")
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
                loss = train_step(model, batch, config.search, optimizer, tc.l2, goal_weight, tc.precision)
                state["step"] += 1
                state["batch"] += 1
                seen += len(batch)
                if bar.live.is_started and time.perf_counter() >= next_status:  # .item() would sync a GPU every step
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    bar.update(task, status=f"loss {loss.item():.4f} · {rate:,.0f} samples/s")
                    next_status = time.perf_counter() + 0.5
                bar.advance(task)
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
    if not state["history"]:
        validate()
    # Score the best model on valid and test, every sample.
    best = load_checkpoint(out / "checkpoint.pt")
    model.load_state_dict(best["model"])
    result: dict[str, Any] = {
        "model": config.model.name,
        "steps": state["step"],
        "best_step": state["best_step"],
        "selection_metric": tc.metric,
        "train_seconds": round(time.perf_counter() - started, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for split in ("valid", "test"):
        result[split] = evaluate(model, store, split, **eval_options)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    logger.info("test %s", {k: v for k, v in result["test"].items() if k != "per_goal"})
    return result
