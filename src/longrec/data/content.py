"""Item content features: per-item dense vectors (text, image, any modality) stored beside a prepared store.

Layout, one folder per modality inside the store (written by `longrec content add`, `write_content`):

    content/<modality>/vectors.npy    float32 or float16 [V_item, D]: row i = dense item id i (`vocab/item_id`),
                                      row 0 (padding / unknown item) = zeros; opened memory-mapped
    content/<modality>/content.json   modality, dim, dtype, rows, vocab_sha (of the store it belongs to), source,
                                      method, items_given / items_missing / ids_unknown, missing mode, created_by

A modality is written atomically as a whole folder (`longrec.files.output_directory` with the `CONTENT` kind): into a
temporary sibling, then renamed into place, so a reader sees the old or the new vectors, never half of either, nor a
manifest that describes another file. An existing modality is replaced only with `force=True` (the CLI's `--force`).
`longrec prepare --force` over a store replaces its content folder with the rest (new ids, so old vectors are void).

Validation (on write and on open, `ContentError` says what, where, expected, got): the array is 2-D with one row per
item id of the store's vocabulary (`sizes.num_items`, id 0 included), its dtype is float32 or float16, every value is
finite, row 0 is zeros, and the manifest's `vocab_sha` equals the store's (a store re-prepared with other ids voids
its vectors). On open the finite check scans the memory-mapped file in chunks of rows, once.

Vectors come keyed by the RAW item id (`content_from_pairs`): the store's item vocabulary maps raw -> dense. A raw id
the store does not know is an error, or (`unknown="skip"`) dropped and counted; a store item without a vector is an
error, or (`missing="zero"`) a zero row, counted. Both counts go into the manifest and the command's report.

How models read it (docs/multimodal.md): `Batch` keeps carrying item ids only; a model that reads content holds the
[V_item, D] table as a frozen buffer and gathers rows by `Batch.target_item` / `Batch.item`, on the device, per batch.
Nothing is copied per sample in collate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.store import SAFE_NAME_RULE, TrajectoryStore, is_safe_name
from longrec.files import CONTENT, output_directory, read_json_object, write_json

__all__ = [
    "CONTENT_DIR",
    "CONTENT_DTYPES",
    "MISSING_MODES",
    "UNKNOWN_MODES",
    "ContentError",
    "ContentTable",
    "content_from_pairs",
    "content_matrix",
    "list_modalities",
    "open_content",
    "read_vector_file",
    "with_content_dim",
    "write_content",
]

CONTENT_DIR = "content"
CONTENT_DTYPES = ("float32", "float16")
UNKNOWN_MODES = ("error", "skip")  # a raw id the store does not know
MISSING_MODES = ("error", "zero")  # a store item without a vector
ITEM_VOCAB = "item_id"
_CHUNK_ROWS = 1 << 16


class ContentError(ValueError):
    """Content vectors that do not fit the store (rows, dtype, values, vocabulary) or a damaged modality folder."""


@dataclass(frozen=True)
class ContentTable:
    """One modality of a store: `vectors` [V_item, D] (memory-mapped), row i = dense item id i, row 0 = zeros."""

    modality: str
    vectors: np.ndarray
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, items: np.ndarray) -> np.ndarray:
        """Rows of dense item ids `items` [...] -> [..., D] (a copy; id 0 gives zeros)."""
        return np.asarray(self.vectors[np.asarray(items, dtype=np.int64)])


def _modality_dir(store_root: Path, modality: str) -> Path:
    if not is_safe_name(modality):
        raise ContentError(
            f"modality name {modality!r} cannot name a folder in {store_root}: expected {SAFE_NAME_RULE}."
        )
    return Path(store_root) / CONTENT_DIR / modality


def _check_vectors(vectors: np.ndarray, rows: int, where: str) -> None:
    """Raise `ContentError` unless `vectors` is [rows, D>0] float32/float16, finite, with row 0 zeros."""
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise ContentError(f"{where}: expected a 2-D array [items, dim] with dim >= 1, got shape {vectors.shape}.")
    if vectors.dtype.name not in CONTENT_DTYPES:
        raise ContentError(f"{where}: expected dtype {' or '.join(CONTENT_DTYPES)}, got {vectors.dtype}.")
    if vectors.shape[0] != rows:
        raise ContentError(
            f"{where}: expected one row per item id of the store's vocabulary ({rows:,} rows, id 0 included), "
            f"got {vectors.shape[0]:,}."
        )
    for start in range(0, rows, _CHUNK_ROWS):
        chunk = np.asarray(vectors[start : start + _CHUNK_ROWS])
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = start + int(np.argwhere(~finite)[0][0])
            raise ContentError(f"{where}: expected finite values, got NaN or inf in row {bad} (dense item id {bad}).")
    if np.any(np.asarray(vectors[0]) != 0):
        raise ContentError(f"{where}: expected row 0 (the padding / unknown item) to be zeros, got non-zero values.")


def _num_items(store: TrajectoryStore) -> int:
    return int(store.sizes["num_items"])


def content_from_pairs(
    store: TrajectoryStore,
    raw_ids: pl.Series | Sequence[Any],
    vectors: np.ndarray,
    unknown: str = "error",
    missing: str = "error",
    dtype: str = "float32",
) -> tuple[np.ndarray, dict[str, int]]:
    """The [V_item, D] table of vectors given per RAW item id, and its counts.

    Args:
        store: the store whose item vocabulary maps raw -> dense ids.
        raw_ids: [N] raw item ids, one per row of `vectors`; each at most once.
        vectors: [N, D] float values.
        unknown: "error" (a raw id the store does not know) or "skip" (drop and count it).
        missing: "error" (a store item without a vector) or "zero" (a zero row, counted).
        dtype: the stored dtype, float32 or float16.

    Returns:
        (table [V_item, D] of `dtype`, row 0 zeros; counts {items_given, items_missing, ids_unknown}).

    Raises:
        ContentError: mismatched lengths, duplicate ids, unknown ids / missing items in "error" mode, values that
            are not finite (after the cast to `dtype`: float16 overflows beyond 65504).
    """
    from longrec.data.vocab import Vocabulary

    if unknown not in UNKNOWN_MODES or missing not in MISSING_MODES or dtype not in CONTENT_DTYPES:
        raise ContentError(
            f"expected unknown in {UNKNOWN_MODES}, missing in {MISSING_MODES}, dtype in {CONTENT_DTYPES}; "
            f"got {unknown!r}, {missing!r}, {dtype!r}."
        )
    vectors = np.asarray(vectors)
    series = raw_ids if isinstance(raw_ids, pl.Series) else pl.Series("raw", list(raw_ids))
    if vectors.ndim != 2 or vectors.shape[0] != series.len():
        raise ContentError(
            f"expected one vector [N, D] per item id ({series.len():,} ids), got an array of shape {vectors.shape}."
        )
    if not np.issubdtype(vectors.dtype, np.number):
        raise ContentError(f"expected numeric vectors, got dtype {vectors.dtype}.")
    duplicated = series.is_duplicated()
    if duplicated.any():
        shown = ", ".join(repr(v) for v in series.filter(duplicated).unique(maintain_order=True).head(5))
        raise ContentError(
            f"expected each item id at most once, got {int(duplicated.sum()):,} repeated rows (e.g. {shown})."
        )
    dense = Vocabulary(store).dense(ITEM_VOCAB, series, unknown="zero", what="content item ids")
    unknown_rows = dense == 0
    if unknown_rows.any() and unknown == "error":
        shown = ", ".join(repr(v) for v in series.filter(pl.Series(unknown_rows)).head(5))
        raise ContentError(
            f"{int(unknown_rows.sum()):,} of {series.len():,} item ids are not in the store's item vocabulary "
            f"(e.g. {shown}). Pass --unknown skip to drop and count them."
        )
    rows = _num_items(store)
    table = np.zeros((rows, vectors.shape[1]), dtype=dtype)
    keep = ~unknown_rows
    with np.errstate(over="ignore", invalid="ignore"):
        table[dense[keep]] = vectors[keep].astype(dtype)
    given = np.zeros(rows, dtype=bool)
    given[dense[keep]] = True
    absent = int(rows - 1 - given[1:].sum())
    if absent and missing == "error":
        lacking = np.flatnonzero(~given[1:])[:5] + 1
        raw = store.vocab(ITEM_VOCAB)
        shown = ", ".join(repr(raw[int(i) - 1]) for i in lacking)
        raise ContentError(
            f"{absent:,} of {rows - 1:,} store items have no vector (e.g. raw ids {shown}). Pass --missing zero to "
            "give them a zero row (counted in the manifest)."
        )
    _check_vectors(table, rows, f"content vectors (after the cast to {dtype})")
    counts = {"items_given": int(given.sum()), "items_missing": absent, "ids_unknown": int(unknown_rows.sum())}
    return table, counts


def write_content(
    store: TrajectoryStore,
    modality: str,
    table: np.ndarray,
    source: str,
    method: str,
    counts: dict[str, int] | None = None,
    missing: str = "error",
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Validate `table` [V_item, D] against `store` and write it as modality `modality`; returns its folder.

    Raises:
        ContentError: the table does not fit the store (`_check_vectors`).
        OutputError: the modality exists and `force` is False (or its folder holds files we did not write).
    """
    folder = _modality_dir(store.root, modality)
    _check_vectors(table, _num_items(store), f"modality '{modality}' for {store.root}")
    manifest = {
        "modality": modality,
        "dim": int(table.shape[1]),
        "dtype": table.dtype.name,
        "rows": int(table.shape[0]),
        "vocab_sha": str(store.manifest["vocab_sha"]),
        "source": source,
        "method": method,
        "missing": missing,
        **(counts or {}),
        **(extra or {}),
    }
    with output_directory(folder, CONTENT, force=force) as tmp:
        np.save(tmp / "vectors.npy", np.ascontiguousarray(table), allow_pickle=False)
        write_json(tmp / CONTENT.marker, manifest)
    return folder


def list_modalities(store_root: str | Path) -> list[str]:
    """Modalities written in a store (folders holding a content.json), sorted."""
    root = Path(store_root) / CONTENT_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONTENT.marker).is_file() and not p.name.startswith("."))


def open_content(store: TrajectoryStore, modality: str, mmap: bool = True) -> ContentTable:
    """Open modality `modality` of `store`, validated (rows, dtype, finite, row 0 zeros, vocabulary sha, manifest).

    Raises:
        FileNotFoundError: the store has no such modality (the message lists those it has).
        ContentError: the files do not fit the store or each other.
    """
    folder = _modality_dir(store.root, modality)
    marker = folder / CONTENT.marker
    if not marker.is_file():
        have = ", ".join(list_modalities(store.root)) or "none"
        raise FileNotFoundError(
            f"{marker} not found: store {store.root} has no content modality '{modality}' (it has: {have}). "
            "Write one with 'longrec content add'."
        )
    manifest = read_json_object(marker, "content manifest")
    expected_sha = str(store.manifest["vocab_sha"])
    if manifest.get("vocab_sha") != expected_sha:
        raise ContentError(
            f"{marker}: the vectors belong to vocabulary sha {manifest.get('vocab_sha')!r}, the store has "
            f"{expected_sha!r} (it was re-prepared with other ids). Rebuild the modality with --force."
        )
    try:
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ContentError(f"{folder / 'vectors.npy'} cannot be read as a .npy array: {err}") from err
    where = str(folder / "vectors.npy")
    _check_vectors(vectors, _num_items(store), where)
    for key, got in (("dim", vectors.shape[1]), ("dtype", vectors.dtype.name), ("rows", vectors.shape[0])):
        if manifest.get(key) != got:
            raise ContentError(f"{marker}: says {key} = {manifest.get(key)!r}, {where} has {got!r}.")
    return ContentTable(modality=modality, vectors=vectors, manifest=manifest)


def content_matrix(store: TrajectoryStore, modalities: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The modalities a run reads (`data.content`), validated and concatenated: [V_item, Σ D_m] float32, and their
    manifests {modality: content.json} (a run records them). Raises as `open_content`."""
    tables = [open_content(store, m) for m in modalities]
    matrix = np.concatenate([np.asarray(t.vectors, dtype=np.float32) for t in tables], axis=1)
    return matrix, {t.modality: t.manifest for t in tables}


def with_content_dim(sizes: dict[str, Any], store: TrajectoryStore, modalities: Sequence[str]) -> dict[str, Any]:
    """`sizes` plus `content_dim` = Σ D_m of the modalities (0 when none): the data-derived width of a model's
    content table. Reads only the manifests (the vectors are validated when the run loads them)."""
    dim = 0
    for modality in modalities:
        marker = _modality_dir(store.root, modality) / CONTENT.marker
        if not marker.is_file():
            open_content(store, modality)  # raises FileNotFoundError naming the modalities the store has
        dim += int(read_json_object(marker, "content manifest")["dim"])
    return {**sizes, "content_dim": dim} if modalities else dict(sizes)


def read_vector_file(
    path: str | Path, id_column: str = "item_id", vector_columns: Sequence[str] = (), ids: str | Path | None = None
) -> tuple[pl.Series, np.ndarray]:
    """Raw item ids [N] and vectors [N, D] from a user's file.

    Formats:
        Parquet: column `id_column` and either one list / fixed-size-list column of floats (`vector_columns` empty:
            the only other column; or one name) or several float columns (`vector_columns` = their names, in order).
        .npy: a float [N, D] array (`allow_pickle=False`) and `ids`: a .npy of N ids (numbers or strings) or a text
            file of N lines, one raw id per line, in the array's row order.

    Raises:
        ContentError: a missing column, a ragged list column, a length mismatch, nulls.
    """
    path = Path(path)
    if path.suffix == ".npy":
        if ids is None:
            raise ContentError(f"{path}: a .npy of vectors needs --ids FILE (one raw item id per row).")
        vectors = np.load(path, allow_pickle=False)
        ids_path = Path(ids)
        if ids_path.suffix == ".npy":
            raw = pl.Series("raw", np.load(ids_path, allow_pickle=False).tolist())
        else:
            raw = pl.Series("raw", [line for line in ids_path.read_text().splitlines() if line != ""])
        if vectors.ndim != 2 or vectors.shape[0] != raw.len():
            raise ContentError(
                f"{path}: expected [N, D] vectors with N = {raw.len():,} ids of {ids_path}, got shape {vectors.shape}."
            )
        return raw, vectors
    if path.suffix != ".parquet":
        raise ContentError(f"{path}: expected a .parquet or .npy file, got '{path.suffix or 'no suffix'}'.")
    frame = pl.read_parquet(path)
    if id_column not in frame.columns:
        raise ContentError(f"{path}: expected an id column '{id_column}', got columns {frame.columns}.")
    columns = list(vector_columns) or [c for c in frame.columns if c != id_column]
    absent = [c for c in columns if c not in frame.columns]
    if absent or not columns:
        raise ContentError(f"{path}: expected vector column(s) {columns or '(any)'}, got columns {frame.columns}.")
    raw = frame[id_column]
    if raw.null_count():
        raise ContentError(f"{path}: column '{id_column}' holds {raw.null_count():,} null id(s).")
    if len(columns) == 1 and isinstance(frame.schema[columns[0]], pl.List | pl.Array):
        column = frame[columns[0]]
        lengths = column.list.len() if isinstance(column.dtype, pl.List) else None
        if column.null_count() or (lengths is not None and lengths.n_unique() != 1):
            seen = sorted(set(lengths.to_list()))[:5] if lengths is not None else "-"
            raise ContentError(
                f"{path}: column '{columns[0]}' must hold one vector of the same length per row (no nulls), got "
                f"{column.null_count():,} null(s) and lengths {seen}."
            )
        vectors = np.asarray(column.to_list(), dtype=np.float64)
        if vectors.ndim != 2:
            raise ContentError(f"{path}: column '{columns[0]}' must hold numeric vectors, got shape {vectors.shape}.")
        return raw, vectors
    floats = frame.select(columns)
    if any(not dt.is_numeric() for dt in floats.dtypes) or any(floats.null_count().row(0)):
        raise ContentError(f"{path}: vector columns {columns} must be numeric without nulls, got {floats.schema}.")
    return raw, floats.to_numpy().astype(np.float64)
