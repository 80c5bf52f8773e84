"""`longrec serve`: open a model (an exported artifact or a run directory) and a history store, then answer HTTP.

    longrec serve models/din --store data/taobao --history-log serving/history.sqlite --port 8000
    longrec serve runs/din                                   # a run: exported to a temporary artifact first
    longrec serve models/din --store data/taobao --redis redis://127.0.0.1:6379/0

`open_service` is the Python side of the same thing (tests and benchmarks start servers with it).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

import uvicorn

from longrec.run import load_run
from longrec.serve.artifact import ModelArtifact, export_run, load_artifact
from longrec.serve.embedding_cache import EmbeddingCacheConfig
from longrec.serve.history import HistoryStore
from longrec.serve.history_redis import open_redis
from longrec.serve.history_sqlite import open_embedded
from longrec.serve.http import create_app
from longrec.serve.schema import Limits
from longrec.serve.service import ScoringService
from longrec.serve.versions import Versions

__all__ = ["open_model", "open_service", "run_server"]

logger = logging.getLogger(__name__)


def open_model(
    path: str | Path, store: str | Path | None = None, embedding_cache: EmbeddingCacheConfig | None = None
) -> tuple[ModelArtifact, Path | None]:
    """The model to serve and, for a run directory, its store.

    A run directory is exported into a temporary artifact first (removed when the process exits), so a run and
    its export serve identically.

    Raises:
        FileNotFoundError: `path` is neither an artifact (model.json) nor a run directory (config.json).
    """
    folder = Path(path)
    if (folder / "model.json").is_file():
        return load_artifact(folder, embedding_cache), Path(store) if store is not None else None
    if (folder / "config.json").is_file():
        run = load_run(folder, store)
        temporary = Path(tempfile.mkdtemp(prefix="longrec-serve-"))
        atexit.register(shutil.rmtree, temporary, True)
        exported = export_run(run, temporary / "model")
        return load_artifact(exported, embedding_cache), run.store.root
    raise FileNotFoundError(
        f"{folder} is neither a serving artifact (model.json, written by 'longrec export') nor a run directory "
        "(config.json, written by 'longrec train')."
    )


def open_service(
    model: str | Path,
    store: str | Path | None = None,
    history_log: str | Path | None = None,
    redis: str | None = None,
    limits: Limits | None = None,
    embedding_cache: EmbeddingCacheConfig | None = None,
) -> ScoringService:
    """A scoring service over `model` and a history store (SQLite log by default, or Redis).

    Args:
        model: an artifact folder, or a run directory.
        store: the prepared store the model was trained on (the history's base); needed for an artifact.
        history_log: the SQLite append log (created when missing); default `serving-history.sqlite` beside it.
        redis: a Redis URL: histories are appended there instead (shared by several servers).
        limits: request limits.
        embedding_cache: serve the big tables from the artifact's file through an LRU of hot rows.

    Raises:
        ValueError: no store for an artifact, or the store's vocabulary is not the model's.
    """
    artifact, run_store = open_model(model, store, embedding_cache)
    base = Path(store) if store is not None else run_store
    if base is None:
        raise ValueError(
            f"{model} is an artifact: say which store it serves histories from with --store (the prepared store it "
            "was trained on, or a folder written by 'longrec compact')."
        )
    history: HistoryStore = (
        open_redis(base, redis)
        if redis is not None
        else open_embedded(base, log=history_log if history_log is not None else "serving-history.sqlite")
    )
    versions = Versions()
    versions.publish(artifact)
    return ScoringService(versions, history, limits)


def run_server(service: ScoringService, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> None:
    """Serve `service` over HTTP until interrupted (uvicorn, one process, requests on its thread pool)."""
    app = create_app(service, service.metrics)
    logger.info("serving %s on http://%s:%d (docs at /docs)", service.status()["current"], host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=False)
    finally:
        service.history.close()
