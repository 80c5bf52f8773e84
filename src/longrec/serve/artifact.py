"""The serving model artifact: one self-contained, versioned folder holding everything a server needs to map raw
request ids and score them, without the run directory or the training store.

    longrec export runs/din --out models/din            # export_run("runs/din", "models/din")
    artifact = load_artifact("models/din")              # checked: format version, every file's sha256
    artifact.model(batch)                               # logits [B]; artifact.vocabulary.dense("item_id", raw_ids)

**Layout** (written atomically, `longrec.files.output_directory`; `--out` is new, empty, or a previous artifact
replaced with `--force`, the `ARTIFACT` output kind):

    model.json              format_version, version, lineage, parent, created, source (run folder name, step), model
                            (name, params), sizes (data-derived vocabulary sizes), search (the flat [search] table),
                            max_history, train (the run's [train] table, for the record), vocab_sha, files (sha256 of
                            every other file, the weights included), content_sha256
    weights.safetensors     the model's state dict: tensors only, so loading it runs no code
    vocab/<name>.parquet    the store's vocabularies, copied (raw -> dense ids: `longrec.data.vocab.Vocabulary`)
    items/category.npy      int [V_item, M] each item's taxonomy path; items/extra.npy int [V_item, E] its extra ids

**Version rule.** `version = f"{lineage}-{content_sha256[:8]}"`. `content_sha256` digests what the server computes
with, and nothing else: the model name and params, the sizes, the search table, max_history, the vocabulary sha,
the item tables' sha256 and every tensor (name, dtype, shape, bytes). Not the creation time, the run's name or its
training settings: the same weights and settings give the same id, wherever and whenever exported. `lineage` counts
versions along one line of updates: 1 for an artifact without a parent, the parent's lineage + 1 otherwise. The
parent is the `parent` argument, else the artifact that `--force` replaces at `--out` (re-exporting the same content
over it keeps its id). A delta (`longrec.serve.delta`) makes the next version of its base by the same rule, so a
delta applied to version `n-…` and a full export of the same weights with that parent have the same id. `version`
may instead name a version explicitly (then the id is that label; lineage still counts).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from longrec.config import Config
from longrec.data.content import with_content_dim
from longrec.data.sharded import ShardedStore
from longrec.data.store import TrajectoryStore
from longrec.data.vocab import Vocabulary
from longrec.files import ARTIFACT, check_output, dumps_json, output_directory, read_json_object
from longrec.models import build_model_for_sizes
from longrec.run import Run, load_run
from longrec.serve.embedding_cache import EmbeddingCacheConfig, RowCache, cache_embeddings
from longrec.version import __version__

__all__ = [
    "ARTIFACT_FORMAT",
    "CONTENT_KEYS",
    "ITEM_TABLES",
    "ModelArtifact",
    "config_of",
    "content_sha256",
    "export_run",
    "file_sha256",
    "lineage_of",
    "load_artifact",
    "load_weights",
    "read_model_json",
    "run_meta",
    "serving_meta",
    "state_of",
    "version_id",
]

ARTIFACT_FORMAT = 1
ITEM_TABLES = ("category", "extra")  # items/<name>.npy: the side information a candidate brings
CONTENT_KEYS = ("model", "sizes", "search", "max_history", "vocab_sha")  # model.json fields the version digests
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded serving artifact: the model (eval mode), the raw -> dense vocabularies, the item side tables."""

    path: Path  # the folder its vocabularies and item tables are read from
    version: str
    config: Config  # model, search, data.max_history (data.path is empty: the artifact needs no store), train
    model: nn.Module
    vocabulary: Vocabulary
    item_category: np.ndarray  # [V_item, M] int taxonomy path of each item
    item_extra: np.ndarray  # [V_item, E] int extra ids of each item
    sizes: dict[str, Any]  # data-derived vocabulary sizes (num_items, num_categories, ...)
    parent: str | None = None
    lineage: int = 1
    meta: dict[str, Any] = field(default_factory=dict)  # model.json as read (for a delta's result: as it would be)
    caches: dict[str, RowCache] = field(default_factory=dict)  # state-dict name -> its row cache (embedding cache)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_sha256(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """The digest a version id is made of: `CONTENT_KEYS` of `meta`, its item tables' sha256 and every tensor."""
    digest = hashlib.sha256()
    described = {key: meta[key] for key in CONTENT_KEYS}
    described["items"] = {k: v for k, v in meta["files"].items() if k.startswith("items/")}
    digest.update(dumps_json(described, indent=None).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name}|{t.dtype}|{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, no copy
    return digest.hexdigest()


def read_model_json(folder: str | Path, check_files: bool = True) -> dict[str, Any]:
    """The model.json of an artifact folder, its format checked and (by default) every file's sha256.

    Raises:
        FileNotFoundError: no model.json (not an artifact), or a file it lists is missing.
        ValueError: a damaged model.json, a newer format, or a file whose sha256 differs (tampered, truncated).
    """
    folder = Path(folder)
    meta = read_json_object(folder / "model.json", "serving model folder written by 'longrec export'")
    found = meta.get("format_version")
    if found != ARTIFACT_FORMAT:
        newer = isinstance(found, int) and found > ARTIFACT_FORMAT
        raise ValueError(
            f"{folder / 'model.json'} has format_version {found!r}; this longrec reads {ARTIFACT_FORMAT}. "
            + ("Upgrade longrec to load it." if newer else "Export the run again with 'longrec export'.")
        )
    missing = [k for k in ("version", "lineage", "model", "sizes", "search", "max_history", "files") if k not in meta]
    if missing:
        raise ValueError(f"{folder / 'model.json'} is damaged: it lacks {', '.join(missing)}.")
    if check_files:
        for name, expected in sorted(meta["files"].items()):
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing from the artifact {folder}. Export it again.")
            got = file_sha256(path)
            if got != expected:
                raise ValueError(
                    f"{path} is damaged or was changed: its sha256 is {got[:16]}…, model.json records "
                    f"{expected[:16]}…. Refusing to serve it; export the run again."
                )
    return meta


def lineage_of(parent: str | Path | ModelArtifact | None) -> tuple[str | None, int]:
    """(parent version, lineage of the next version) for a parent artifact (a folder or a loaded one), or none."""
    if parent is None:
        return None, 1
    if isinstance(parent, ModelArtifact):
        return parent.version, parent.lineage + 1
    meta = read_model_json(parent, check_files=False)
    return str(meta["version"]), int(meta["lineage"]) + 1


def version_id(lineage: int, content: str, label: str | None = None) -> str:
    """The version rule (module docstring): `<lineage>-<content sha, 8 hex>`, or an explicit label."""
    if label is None:
        return f"{lineage}-{content[:8]}"
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"version must be 1-64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit. "
            f"Got {label!r} instead."
        )
    return label


def serving_meta(config: Config, sizes: Mapping[str, Any], vocab_sha: str) -> dict[str, Any]:
    """What model.json says about a model trained with `config` on a store with these sizes and vocabularies."""
    table = config.to_dict()
    return {
        "model": {"name": config.model.name, "params": {k: v for k, v in table["model"].items() if k != "name"}},
        "sizes": dict(sizes),
        "search": table["search"],
        "max_history": config.data.max_history,
        "train": table["train"],
        "vocab_sha": vocab_sha,
    }


def run_meta(run: Run) -> dict[str, Any]:
    """`serving_meta` of a loaded run, plus its source (the run folder's name and the checkpoint's step)."""
    sizes = with_content_dim(run.store.sizes, run.store, run.config.data.content)
    meta = serving_meta(run.config, sizes, str(run.store.manifest["vocab_sha"]))
    meta["source"] = {"run": run.path.resolve().name, "step": run.step}
    return meta


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as CPU tensors, detached and contiguous (what weights.safetensors holds)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def export_run(
    run_or_path: Run | str | Path,
    out: str | Path,
    version: str | None = None,
    force: bool = False,
    parent: str | Path | ModelArtifact | None = None,
) -> Path:
    """Write the serving artifact of a run's best model into `out` (layout and version rule: module docstring).

    Args:
        run_or_path: a loaded run, or a run directory (its store is found as `load_run` finds it).
        out: the artifact folder: new, empty, or a previous artifact (with `force`).
        version: an explicit version id instead of the derived `<lineage>-<sha8>`.
        force: replace a previous artifact in `out`.
        parent: the artifact this version follows (a folder or a loaded one); default the one `force` replaces.

    Returns:
        `out`, as a Path.

    Raises:
        OutputError: `out` holds something else, or a previous artifact without `force`.
        FileNotFoundError / ValueError: from `load_run`, or a damaged parent.
    """
    out = Path(out)
    replaces = check_output(out, ARTIFACT, force)  # before the work: a refused --out costs nothing
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    previous = read_model_json(out, check_files=False) if replaces else None
    parent_version, lineage = lineage_of(parent if parent is not None else (out if replaces else None))
    state = state_of(run.model)
    meta = run_meta(run)
    with output_directory(out, ARTIFACT, force) as tmp:
        for source, name in _files_of(run.store):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, tmp / name)
            else:  # a sharded store's merged item table (longrec.data.sharded)
                np.save(tmp / name, np.ascontiguousarray(source))
        save_file(state, tmp / "weights.safetensors", metadata={"format": "pt"})
        meta["files"] = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        content = content_sha256(meta, state)
        if previous is not None and previous.get("content_sha256") == content and parent is None and version is None:
            parent_version, lineage = previous.get("parent"), int(previous["lineage"])  # the same version again
        meta.update(
            format_version=ARTIFACT_FORMAT,
            longrec_version=__version__,
            version=version_id(lineage, content, version),
            lineage=lineage,
            parent=parent_version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            content_sha256=content,
        )
        (tmp / "model.json").write_text(dumps_json(meta))
    return out


def _files_of(store: TrajectoryStore) -> list[tuple[Path | np.ndarray, str]]:
    """(source file, or a sharded store's merged table; path in the artifact) of the vocabularies and item tables
    of a store."""
    files: list[tuple[Path | np.ndarray, str]]
    files = [(p, f"vocab/{p.name}") for p in sorted((store.vocab_root / "vocab").glob("*.parquet"))]
    if isinstance(store, ShardedStore):
        return [*files, *((getattr(store, f"item_{name}"), f"items/{name}.npy") for name in ITEM_TABLES)]
    store_root = store.root
    for name in ITEM_TABLES:
        path = store_root / "items" / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the store is incomplete. Re-run 'longrec prepare'.")
        files.append((path, f"items/{name}.npy"))
    return files


def config_of(meta: Mapping[str, Any], source: str) -> Config:
    """The experiment config an artifact's model.json describes (data.path empty: no store is needed)."""
    return Config.from_dict(
        {
            "model": {"name": meta["model"]["name"], **meta["model"]["params"]},
            "data": {"max_history": meta["max_history"]},
            "search": meta["search"],
            "train": meta.get("train", {}),
        },
        source,
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with a `ValueError` naming it when it cannot be parsed."""
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is damaged ({err}). Export the run again.") from err


def load_artifact(path: str | Path, embedding_cache: EmbeddingCacheConfig | None = None) -> ModelArtifact:
    """Load an artifact written by `export_run`, after checking its format and every file's sha256.

    Args:
        path: the artifact folder.
        embedding_cache: serve the item table (and any table of at least `min_rows` rows) from the memory-mapped
            weights file through an LRU row cache (`longrec.serve.embedding_cache`); None (the default): every
            table in memory.

    Raises:
        FileNotFoundError: not an artifact folder, or one of its files is missing.
        ValueError: a tampered, truncated or otherwise damaged file (named), or a format this longrec cannot read.
    """
    folder = Path(path)
    meta = read_model_json(folder)
    config = config_of(meta, str(folder / "model.json"))
    model = build_model_for_sizes(meta["model"]["name"], meta["model"]["params"], meta["sizes"])
    state = load_weights(folder / "weights.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{folder / 'weights.safetensors'} does not fit the model model.json describes: {err}"
        ) from err
    del state
    model.eval()
    caches = {}
    if embedding_cache is not None:
        caches = cache_embeddings(model, folder / "weights.safetensors", embedding_cache, meta["sizes"]["num_items"])
    items = {name: np.load(folder / "items" / f"{name}.npy", allow_pickle=False) for name in ITEM_TABLES}
    return ModelArtifact(
        path=folder,
        version=str(meta["version"]),
        config=config,
        model=model,
        vocabulary=Vocabulary(folder, sha=meta["vocab_sha"]),
        item_category=items["category"],
        item_extra=items["extra"],
        sizes=dict(meta["sizes"]),
        parent=meta.get("parent"),
        lineage=int(meta["lineage"]),
        meta=meta,
        caches=caches,
    )
