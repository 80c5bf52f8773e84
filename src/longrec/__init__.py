"""longrec: long user-behaviour-sequence modeling for ads and recommendation ranking.

Pipeline: raw logs (`longrec.ingest`) -> trajectory store, samples and `Batch` (`longrec.data`) -> search
(`longrec.search`) -> target-attention models (`longrec.models`) -> training and evaluation (`longrec.train`,
`longrec.eval`) -> run directories (`longrec.run`) -> serving (`longrec.serve`). `docs/architecture.md` maps it.

Importing `longrec` is cheap: submodules load on first use, including `longrec.load_run`:

    >>> import longrec
    >>> run = longrec.load_run("runs/din")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from longrec.version import __version__

__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":  # torch loads with it: only on first use
        from longrec.run import load_run

        return load_run
    raise AttributeError(f"module 'longrec' has no attribute {name!r}")
