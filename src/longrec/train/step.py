"""One training step and what it needs: the optimizer, the L2 penalty, per-goal BCE weights, compilation, memory reuse.

`train_step` is search, forward, BCE (+ the auxiliary head's BCE, the model's extra loss, L2), backward and update,
on one batch; the loop (`longrec.train.loop.fit`) calls it, and `benchmarks/bench_throughput.py` times exactly it. Which
losses a model adds is read from its capabilities (`longrec.models.contract`), never probed with getattr.

System options (each off by default, each with a parity test against the plain path in
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
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from longrec.data.batch import Batch
from longrec.data.device import autocast
from longrec.models.contract import AuxiliaryHead, ExtraLoss, OwnLoss, SearchEmbedder, logits_of
from longrec.models.layers import fast_paths
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.optim import OPTIMIZERS, LazyAdam, sparse_tables

__all__ = [
    "COMPILED_CAPABILITIES",
    "compile_model",
    "goal_loss_weights",
    "l2_penalty",
    "make_optimizer",
    "reuse_freed_memory",
    "step_loss",
    "train_step",
]


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


def make_optimizer(model: torch.nn.Module, lr: float, optimizer: str = "adam") -> torch.optim.Optimizer:
    """The optimizer of `train.optimizer` over every parameter of `model`.

    "adam": Adam on every parameter; on the fast paths its fused kernel: one pass over each tensor instead of about ten
    (1.7 ms instead of 4.7 ms for DARE's 2M parameters on one CPU thread, the same update up to float rounding).
    "lazy_adam": the model's `nn.Embedding` tables are switched to sparse gradients and updated on the rows a batch
    touched only (`longrec.train.optim.LazyAdam`); every other parameter gets the same (fused) Adam update.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}. Got {optimizer!r} instead.")
    if optimizer == "lazy_adam":
        sparse_tables(model)
        return LazyAdam(model.parameters(), lr=lr, fused=fast_paths())
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
        The loss of `step_loss`, detached.
    """
    loss = step_loss(model, batch, search, l2, goal_weight, precision)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def step_loss(
    model: torch.nn.Module,
    batch: Batch,
    search: SearchConfig,
    l2: float = 0.0,
    goal_weight: torch.Tensor | None = None,
    precision: str = "fp32",
    scale: float = 1.0,
) -> torch.Tensor:
    """The training loss of `batch` (search, forward, BCE + the auxiliary BCE + the extra loss + L2), not yet
    backpropagated; `train_step` and the data-parallel step (`longrec.train.distributed.LossModule`) share it.

    Args:
        model: the model (set to train mode here).
        batch: a collated batch with labels.
        search: the search stage's config.
        l2: weight of `l2_penalty` (0 = off).
        goal_weight: [T] BCE weight per goal id (`goal_loss_weights`), or None.
        precision: "fp32" or "bf16" (as in `train_step`).
        scale: multiplies the data terms (every term but L2): a rank holding n of a global batch's N samples over
            W ranks uses n * W / N, so that the ranks' averaged gradients are those of the global batch's mean loss.

    Returns:
        A scalar: scale times the (goal-weighted) BCE averaged over the batch, plus the auxiliary BCE and the model's
        extra loss (`forward_with_extra_loss`); or, for a model whose `loss(batch)` returns a tensor, scale times that
        loss; plus the L2 term.
    """
    model.train()
    assert batch.label is not None  # collate always sets labels
    # A model with its own training loss (TD-SASRec's sampled softmax over in-batch candidates) uses it instead of
    # BCE (its in-batch candidates couple the rows of the batch).
    device = batch.history.device
    stored = batch.user_state is not None  # stage 2 of VISTA's training: the user side is a stored state
    with autocast(precision, device):
        own_loss = model.loss(search_stage(batch, model, search)) if isinstance(model, OwnLoss) and not stored else None
    if own_loss is not None:
        own_loss = own_loss.float() * scale if scale != 1.0 else own_loss.float()
        return own_loss + l2 * l2_penalty(model) if l2 else own_loss
    # Fast path: a model that can serve search, the main head and the aux head from one lookup does (TWIN, DARE).
    with autocast(precision, device):
        fused = isinstance(model, AuxiliaryHead) and fast_paths() and not stored
        both = model.forward_with_aux(batch, search) if fused and isinstance(model, AuxiliaryHead) else None
        extra_loss = aux_logits = None
        if both is not None:
            logits, aux_logits = both  # [B] each
        elif stored:
            # The candidate side on the stored states: no history, so no history-side loss (reconstruction, aux).
            logits = logits_of(model, batch)  # [B]
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
    if scale != 1.0:
        loss = loss * scale
    if l2:
        loss = loss + l2 * l2_penalty(model)
    return loss
