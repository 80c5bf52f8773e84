"""A cascade of two trained runs: a pre-ranking run's top M of a candidate pool, ranked by a ranking run
(`longrec.eval.cascade` measures it; `longrec cascade` is this module on the command line).

    from longrec.eval.cascade import CascadeConfig
    from longrec.run.cascade import cascade_runs, write_cascade

    report = cascade_runs("runs/td-sasrec", "runs/dare", CascadeConfig(ms=(50, 200), ks=(10, 50)))
    write_cascade(report, "reports/cascade")          # reports/cascade/cascade.json, written atomically

Both runs must share one vocabulary: item ids are what the pre-ranker hands the ranker, so runs trained on stores
with different vocabularies (another log, another `prepare`) are refused before anything is scored. The cascade
reads the split and the pool from the ranking run's store (or `data`, a store with the same vocabulary). Each model
runs behind its own run's search stage and collates its own run's `data.max_history`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longrec.eval.cascade import CascadeConfig, evaluate_cascade
from longrec.files import CASCADE, output_directory, write_json
from longrec.run import Run, load_run

__all__ = ["cascade_runs", "check_same_vocabulary", "write_cascade"]


def check_same_vocabulary(prerank: Run, rank: Run) -> None:
    """Refuse two runs whose stores have different vocabularies (their ids would mean different items).

    Raises:
        ValueError: both runs, their stores and their vocabulary shas.
    """
    a, b = prerank.store.manifest["vocab_sha"], rank.store.manifest["vocab_sha"]
    if a != b:
        raise ValueError(
            f"the pre-ranking run {prerank.path} was trained on a store with vocabulary sha {a} ({prerank.store.root}) "
            f"but the ranking run {rank.path} on one with {b} ({rank.store.root}): the item ids the pre-ranker passes "
            "on would mean other items to the ranker. Train both runs on the same store."
        )


def _describe(run: Run) -> dict[str, Any]:
    params = run.config.model.params
    return {
        "path": str(run.path),
        "model": run.config.model.name,
        "loss": params.get("loss"),
        "search": run.config.search.method,
        "max_history": run.config.data.max_history,
        "step": run.step,
    }


def cascade_runs(
    prerank: str | Path | Run,
    rank: str | Path | Run,
    config: CascadeConfig | None = None,
    data: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`evaluate_cascade` of a pre-ranking run and a ranking run (best checkpoints), after checking their vocabularies.

    Args:
        prerank: the pre-ranking run (a run directory or a loaded `Run`): TD-SASRec, its mean tower, any model.
        rank: the ranking run: any model trained on the same store.
        config: M, K, the pool and the split (default `CascadeConfig()`).
        data: a store with the same vocabulary to evaluate on (default: the ranking run's store).
        progress: a progress bar on stderr.

    Returns:
        `evaluate_cascade`'s report plus "prerank_run" and "rank_run" ({path, model, loss, search, max_history, step})
        and "store" (the store's folder).

    Raises:
        ValueError: the runs' vocabularies differ (`check_same_vocabulary`).
    """
    pre = prerank if isinstance(prerank, Run) else load_run(prerank, data)
    ranking = rank if isinstance(rank, Run) else load_run(rank, data)
    check_same_vocabulary(pre, ranking)
    report = evaluate_cascade(
        pre.model,
        ranking.model,
        ranking.store,
        config,
        prerank_search=pre.config.search,
        rank_search=ranking.config.search,
        prerank_history=pre.config.data.max_history,
        rank_history=ranking.config.data.max_history,
        progress=progress,
    )
    return report | {"prerank_run": _describe(pre), "rank_run": _describe(ranking), "store": str(ranking.store.root)}


def write_cascade(report: dict[str, Any], out: str | Path, force: bool = False) -> Path:
    """Write `report` as OUT/cascade.json into a new or empty folder, or over a previous cascade report with `force`
    (`longrec.files.check_output`: a folder holding anything else is refused); the folder is replaced atomically.

    Returns:
        the JSON file's path.
    """
    with output_directory(out, CASCADE, force) as tmp:
        write_json(tmp / CASCADE.marker, report)
    return Path(out) / CASCADE.marker
