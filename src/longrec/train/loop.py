"""The one training loop: `train(config, out)`, top to bottom.

Adam on BCE (plus an optional L2 penalty on non-embedding weights), validation every `eval_every` steps or each
epoch, the best checkpoint by the chosen validation metric, early stopping, then the best model scored on the
validation and test splits. `last.pt` is written atomically at every validation and holds everything needed to
resume (model, optimizer, RNG state, data position, best-so-far), so a killed run resumed with `resume=True`
ends with the same metrics as an uninterrupted run with the same seed: batch order is a pure function of
(seed, epoch), and every step after the last checkpoint is redone identically.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from longrec.config import DATA_SIZE_FIELDS, Config
from longrec.data.dataset import make_loader
from longrec.data.store import TrajectoryStore, atomic_write_text
from longrec.eval.evaluate import evaluate
from longrec.models import MODELS, build_model, data_params
from longrec.search import search_stage
from longrec.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["build_model_for_store", "l2_penalty", "train"]

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
        return _train(config, out, resume, on_step)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)
        handler.close()


def _train(config: Config, out: Path, resume: bool, on_step: Callable[[int], None] | None) -> dict[str, Any]:
    tc, dc = config.train, config.data
    if tc.threads:
        torch.set_num_threads(tc.threads)
    store = TrajectoryStore.open(dc.path)
    torch.manual_seed(tc.seed)
    model = build_model_for_store(config.model.name, config.model.params, store)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
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
    logger.info("training %s on %s: %d samples, %d steps/epoch", config.model.name, dc.path, num_train, steps_per_epoch)
    vocab_sha = store.manifest["vocab_sha"]

    def validate() -> bool:
        """Validate, keep the best model, write last.pt; True when early stopping says stop."""
        metrics = evaluate(
            model, store, "valid", tc.eval_batch_size, dc.max_history, dc.num_workers, search=config.search
        )
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
    started, seen = time.perf_counter(), 0
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
                check=dc.check_batches,
            )
            for batch in loader:
                model.train()
                assert batch.label is not None  # collate always sets labels
                logits = model(search_stage(batch, model, config.search))  # [B]
                loss = F.binary_cross_entropy_with_logits(logits, batch.label)
                aux = getattr(model, "aux_logits", None)
                aux_logits = aux(batch) if aux is not None else None  # [B] full-history attention head, or None
                if aux_logits is not None:
                    loss = loss + F.binary_cross_entropy_with_logits(aux_logits, batch.label)
                if tc.l2:
                    loss = loss + tc.l2 * l2_penalty(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                seen += len(batch)
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=1, status=f"loss {loss.item():.4f} · {rate:,.0f} samples/s")
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
        result[split] = evaluate(
            model, store, split, tc.eval_batch_size, dc.max_history, dc.num_workers, search=config.search
        )
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    logger.info("test %s", {k: v for k, v in result["test"].items() if k != "per_goal"})
    return result
