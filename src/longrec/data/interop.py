"""Interop input: already-built samples (Parquet with list columns) -> an ordinary prepared store.

Other long-sequence CTR code (DIN/TIN's Amazon preprocessing, DARE's Taobao/Tmall scripts, FuxiCTR) ships samples
whose histories are already cut. To compare with it on identical files, `import_samples` turns three such files
(train, valid, test) into a normal prepared store, so collate, search, models and metrics run unchanged:

- **Columns** (one row per sample): `user`, `target_item`, `target_cat`, `label` (0/1), `hist_items` (list, oldest
  first), `hist_cats` (list, one category per behaviour); optionally `hist_ts` (list) and `target_ts`, together.
- **One pseudo-trajectory per sample.** A sample's history is stored as its own trajectory, in the file's order,
  and the sample indexes it with `end = len(history)`, so each batch holds exactly the file's history (left-padded,
  oldest first). `trajectories/owner.npy` maps every pseudo-trajectory to its real dense user, and collate puts
  that user into `Batch.user`, so GAUC groups by the file's `user` column.
- **Ids** (`ids="auto"`): integer item and category ids are kept as given (0 = padding, `num_items` = max id + 1),
  so models see the same ids as the other implementation; string ids are mapped to dense ids 1..n in sorted order.
  `ids="map"` maps integers too (nothing is padding then); `ids="keep"` rejects string ids. Users are always
  mapped (sorted, from 1). A 0 inside `hist_items` (kept ids) is padding: it is removed with its category and
  timestamp, and counted in the manifest.
- **Time.** With `hist_ts`/`target_ts`, `history_time_delta = target_ts - hist_ts`, which must be > 0 (a behaviour
  at or after its target would leak the future) and `hist_ts` must be non-decreasing. Without them, timestamps
  are synthetic: behaviour j of n gets j (1-based) and the target n + 1, so the time delta equals the relative
  position (most recent = 1).
- **Taxonomy:** one level (`cat_1`), from `target_cat` and `hist_cats`.

Every problem is a `DataError` naming the file, the row (0-based), the column, what was expected and what was found.

Why one file: reading, checking and writing one format share its column rules (which ids are kept, which lists must
align, what is padding); split, each half would restate them.
Shapes: N samples of a split, R history behaviours (flattened lists), U pseudo-trajectories (+1 for user 0).
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.store import FORMAT_VERSION, SPLITS, SampleSet, id_dtype, split_counts, vocab_sha, write_manifest
from longrec.files import STORE, check_output, output_directory
from longrec.ingest.schema import DataError, LogSchema
from longrec.version import __version__

__all__ = ["ID_MODES", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "ImportResult", "import_samples"]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user", "target_item", "target_cat", "label", "hist_items", "hist_cats")
OPTIONAL_COLUMNS = ("hist_ts", "target_ts")  # both or neither
LIST_COLUMNS = ("hist_items", "hist_cats", "hist_ts")
ID_MODES = ("auto", "keep", "map")
MAX_KEPT_ID = int(np.iinfo(np.int32).max) - 1  # the store holds ids as int32, and max id + 1 must fit too
# Id groups: each shares one id space, so every column of a group must hold one type in every file.
ID_GROUPS = {"user": ("user",), "item": ("target_item", "hist_items"), "category": ("target_cat", "hist_cats")}


@dataclass
class ImportResult:
    """What `import_samples` wrote: the manifest's counts and id decisions, for the CLI to print."""

    out: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        m, c, interop = self.manifest, self.manifest["counts"], self.manifest["interop"]
        sizes = m["sizes"]
        out = [
            f"imported {self.out}: {c['samples_total']:,} samples of {c['users']:,} users, {c['behaviours']:,} "
            "history behaviours (each sample's history is its own trajectory)",
            "samples: " + ", ".join(f"{s} {c['samples'][s]:,} (pos {c['positives'][s]:,})" for s in SPLITS),
        ]
        for group, size in (("item", "num_items"), ("category", "num_categories")):
            how = "kept as given: {} = max id + 1 =" if interop["ids"][group] == "keep" else "mapped to 1..n: {}"
            distinct = interop["distinct"][group]
            out.append(f"  {group} ids {how.format(size)} {sizes[size]:,} ({distinct:,} distinct ids)")
        out.append(f"  timestamps: {interop['timestamps']}")
        if interop["padding_removed"]:
            out.append(
                f"  removed {interop['padding_removed']:,} padding ids (0) from "
                f"{interop['histories_with_padding']:,} histories"
            )
        return out


@dataclass
class _SplitSamples:
    """One file, checked: per-sample values [N] and flattened histories [R] (row of each = `row_of`)."""

    path: Path
    user: pl.Series  # [N] raw user ids
    target_item: pl.Series  # [N] raw item ids
    target_cat: pl.Series  # [N] raw category ids
    label: np.ndarray  # [N] float32 in {0, 1}
    lengths: np.ndarray  # [N] int64 history length in the file
    hist_items: pl.Series  # [R] raw item ids
    hist_cats: pl.Series  # [R] raw category ids
    hist_ts: np.ndarray | None  # [R] int64, or None without timestamps
    target_ts: np.ndarray | None  # [N] int64, or None without timestamps

    @cached_property
    def row_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.lengths.size), self.lengths)  # [R] sample row of each history behaviour

    @cached_property
    def position_of(self) -> np.ndarray:
        starts = np.cumsum(self.lengths) - self.lengths  # [N]
        return np.arange(int(self.lengths.sum())) - np.repeat(starts, self.lengths)  # [R] index within its list

    def column(self, name: str) -> pl.Series:
        return {
            "user": self.user,
            "target_item": self.target_item,
            "target_cat": self.target_cat,
            "hist_items": self.hist_items,
            "hist_cats": self.hist_cats,
        }[name]


def _kind(dtype: Any) -> str:
    """'int', 'str', 'float', 'bool' or the dtype's name, for a scalar dtype (the inner dtype of a list)."""
    if dtype.is_integer():
        return "int"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Categorical | pl.Enum):
        return "str"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    return str(dtype)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _read(path: Path, split_name: str) -> tuple[_SplitSamples, dict[str, str | None]]:
    """Read and check one split's samples file; return it plus the id kind of each id column (None: no values)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a Parquet file of samples ({', '.join(REQUIRED_COLUMNS)})."
        )
    try:
        schema = pl.read_parquet_schema(path)
    except pl.exceptions.PolarsError as err:
        raise DataError(f"{path}: expected a Parquet file of samples, got a file polars cannot read ({err}).") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, list(schema), n=1)
            hints.append(f"'{c}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DataError(
            f"{path}: expected column(s) {', '.join(hints)}, got columns: {', '.join(schema) or 'none'}. "
            f"Samples need {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})."
        )
    present = [c for c in OPTIONAL_COLUMNS if c in schema]
    if len(present) == 1:
        absent = next(c for c in OPTIONAL_COLUMNS if c not in schema)
        raise DataError(
            f"{path}: expected columns hist_ts and target_ts together (or neither, for synthetic timestamps), "
            f"got '{present[0]}' without '{absent}'."
        )
    columns = [*REQUIRED_COLUMNS, *present]
    frame = pl.read_parquet(path, columns=columns)
    if frame.height == 0:
        raise DataError(
            f"{path}: expected at least one sample row, got an empty file (the {split_name} split); every split "
            "needs samples, or training and evaluation fail later. Nothing was written."
        )
    for c in columns:
        is_list = isinstance(schema[c], pl.List | pl.Array)
        if c in LIST_COLUMNS and not is_list:
            raise DataError(f"{path}, column '{c}': expected a list column (one list per sample), got {schema[c]}.")
        if c not in LIST_COLUMNS and is_list:
            raise DataError(f"{path}, column '{c}': expected one value per sample, got a list column {schema[c]}.")
    arrays = [pl.col(c).arr.to_list() for c in columns if isinstance(frame.schema[c], pl.Array)]
    frame = frame.with_columns(arrays)  # fixed-size arrays become lists

    # Nulls: a missing value has no meaning in any column.
    for c in columns:
        bad = frame[c].is_null()
        if c in LIST_COLUMNS:
            bad = bad | (frame[c].list.len() != frame[c].list.drop_nulls().list.len())
        row = _first(bad.to_numpy())
        if row is not None:
            value = frame[c][row]
            shown = value.to_list() if isinstance(value, pl.Series) else value  # a list cell reads as a Series
            raise DataError(f"{path} row {row} (0-based), column '{c}': expected no nulls, got {shown!r}.")

    # Types: ids are integers or strings, timestamps integers, labels 0/1.
    lengths = frame["hist_items"].list.len().to_numpy().astype(np.int64)  # [N]
    kinds: dict[str, str | None] = {}
    for c in columns:
        dtype = frame.schema[c]
        inner = dtype.inner if isinstance(dtype, pl.List) else dtype
        if c in LIST_COLUMNS and not (frame[c].list.len() > 0).any():
            kinds[c] = None  # only empty lists: no type to check
            continue
        kind = _kind(inner)
        allowed: tuple[str, ...]
        if c in OPTIONAL_COLUMNS:
            allowed, what = ("int",), "integer epoch seconds"
        elif c == "label":
            allowed, what = ("bool", "int", "float"), "a 0/1 label (integer, boolean or float)"
        else:
            allowed, what = ("int", "str"), "integer or string ids"
            kinds[c] = kind
        if kind not in allowed:
            row = _first((frame[c].list.len() > 0).to_numpy()) if c in LIST_COLUMNS else 0
            assert row is not None
            value = frame[c][row][0] if c in LIST_COLUMNS else frame[c][row]
            raise DataError(f"{path} row {row} (0-based), column '{c}': expected {what}, got {value!r} ({dtype}).")
    label = frame["label"].cast(pl.Float64).to_numpy()  # [N]
    row = _first((label != 0) & (label != 1))
    if row is not None:
        raise DataError(f"{path} row {row} (0-based), column 'label': expected 0 or 1, got {frame['label'][row]!r}.")
    for c in ("hist_cats", *(("hist_ts",) if present else ())):
        other = frame[c].list.len().to_numpy()  # [N]
        row = _first(other != lengths)
        if row is not None:
            raise DataError(
                f"{path} row {row} (0-based): expected hist_items and {c} of the same length (one value per "
                f"behaviour), got {lengths[row]} and {other[row]}."
            )

    def flat(c: str) -> pl.Series:
        return frame[c].explode(empty_as_null=False)  # [R]

    split = _SplitSamples(
        path=path,
        user=frame["user"],
        target_item=frame["target_item"],
        target_cat=frame["target_cat"],
        label=label.astype(np.float32),
        lengths=lengths,
        hist_items=flat("hist_items"),
        hist_cats=flat("hist_cats"),
        hist_ts=flat("hist_ts").cast(pl.Int64).to_numpy() if present else None,
        target_ts=frame["target_ts"].cast(pl.Int64).to_numpy() if present else None,
    )
    return split, kinds


def _id_modes(files: list[_SplitSamples], kinds: list[dict[str, str | None]], ids: str) -> dict[str, str]:
    """'keep' or 'map' for each id group, after checking that the group holds one type everywhere."""
    modes = {}
    for group, columns in ID_GROUPS.items():
        seen = {(f.path, c): k[c] for f, k in zip(files, kinds, strict=True) for c in columns if k[c] is not None}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{p} column '{c}' holds {k} ids" for (p, c), k in seen.items())
            raise DataError(
                f"{group} ids must have one type in every file and column: {listing}. Cast them to one type "
                "(integer ids are kept as given, string ids are mapped)."
            )
        kind = next(iter(seen.values()), "int")
        if group == "user" or ids == "map":
            modes[group] = "map"
        elif kind == "str" and ids == "keep":
            (path, column) = next(iter(seen))
            raise DataError(
                f"{path}, column '{column}': ids='keep' expected integer {group} ids, got strings. "
                "Pass ids='map' (--ids map) to map them to dense ids."
            )
        else:
            modes[group] = "keep" if kind == "int" else "map"
    return modes


def _check_kept(split: _SplitSamples, column: str) -> np.ndarray:
    """The ids of `column` as int64 after checking 0 <= id <= MAX_KEPT_ID; a target item must not be 0."""
    values = split.column(column).to_numpy()  # [N] or [R]
    if values.dtype != np.uint64:
        values = values.astype(np.int64, copy=False)
    rows = split.row_of if column.startswith("hist_") else np.arange(values.size)
    where = np.arange(values.size) if not column.startswith("hist_") else split.position_of
    for bad, expected in (
        (values < 0, "a non-negative integer id (0 = padding)"),
        (values > MAX_KEPT_ID, f"an id <= {MAX_KEPT_ID:,} (ids are stored as int32)"),
        (values == 0 if column == "target_item" else np.zeros(values.size, bool), "a real item id (0 is padding)"),
    ):
        i = _first(bad)
        if i is not None:
            at = f"[{where[i]}]" if column.startswith("hist_") else ""
            raise DataError(
                f"{split.path} row {rows[i]} (0-based), column '{column}'{at}: expected {expected}, got {values[i]}."
                + (" Pass ids='map' (--ids map) to map arbitrary ids to dense ids." if column != "target_item" else "")
            )
    return values.astype(np.int64, copy=False)


def _item_categories(items: np.ndarray, cats: np.ndarray, num_items: int, dtype: Any = np.int32) -> np.ndarray:
    """Each item's most frequent category (ties: the smallest id; 0 = missing is ignored), [V_item, 1] `dtype`.

    One sort of (item, category) keys, so it stays fast on tens of millions of history rows."""
    real = cats > 0
    C = int(cats.max(initial=0)) + 1
    key = np.sort(items[real].astype(np.int64) * C + cats[real])  # [P] sorted (item, category) pairs
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # [Q] first of each distinct pair
    counts = np.diff(np.r_[starts, key.size])  # [Q]
    item, cat = np.divmod(key[starts], C)  # [Q] each, sorted by (item, category)
    first = np.flatnonzero(np.r_[True, item[1:] != item[:-1]])  # [I] first pair of each item
    segment = np.repeat(np.arange(first.size), np.diff(np.r_[first, item.size]))  # [Q] item index of each pair
    top = np.flatnonzero(counts == np.maximum.reduceat(counts, first)[segment])  # pairs at their item's max count
    best = top[np.r_[True, segment[top][1:] != segment[top][:-1]]]  # [I] the first (smallest category) of each
    out = np.zeros((num_items, 1), dtype=dtype)  # [V_item, 1]
    out[item[best], 0] = cat[best]
    return out


def _map(parts: list[pl.Series]) -> tuple[list[np.ndarray], pl.Series]:
    """Dense ids 1..n in sorted order of raw values over every part, and the vocabulary (raw values in id order)."""
    whole = pl.concat([p.cast(parts[0].dtype) for p in parts]) if len(parts) > 1 else parts[0]
    vocab = whole.unique().sort().rename("raw")
    dense = whole.rank("dense").cast(pl.Int64).to_numpy()  # [sum of part sizes]
    return np.split(dense, np.cumsum([p.len() for p in parts])[:-1]), vocab


def _encode(files: list[_SplitSamples], group: str, mode: str) -> tuple[list[np.ndarray], pl.Series, int]:
    """Encode the group's columns of every file (order: file by file, columns in ID_GROUPS order)."""
    columns = ID_GROUPS[group]
    if mode == "map":
        parts = [f.column(c) for f in files for c in columns]
        string = any(p.dtype in (pl.String, pl.Categorical) or isinstance(p.dtype, pl.Categorical) for p in parts)
        parts = [p.cast(pl.String if string else pl.Int64) for p in parts]
        encoded, vocab = _map(parts)
        return encoded, vocab, vocab.len() + 1
    encoded = [_check_kept(f, c) for f in files for c in columns]
    size = max(int(e.max(initial=0)) for e in encoded) + 1
    return encoded, pl.Series("raw", np.arange(1, size, dtype=np.int64)), size


def import_samples(
    train: str | Path,
    valid: str | Path,
    test: str | Path,
    out: str | Path,
    ids: str = "auto",
    force: bool = False,
) -> ImportResult:
    """Import already-built samples (three Parquet files with list columns) as a prepared store.

    Args:
        train: Parquet file of training samples (columns: see `REQUIRED_COLUMNS`, `OPTIONAL_COLUMNS`).
        valid: Parquet file of validation samples (model selection).
        test: Parquet file of test samples.
        out: the store directory: new, empty, or a previous store (replaced atomically, only with `force`).
        ids: 'auto' keeps integer item/category ids as given and maps string ids; 'keep' requires integer ids;
            'map' maps every id to a dense id 1..n (sorted raw values). Users are always mapped.
        force: replace `out` when it holds a previous store (never a folder holding anything else).

    Returns:
        The store directory and its manifest (counts, sizes, id decisions, padding removed); `lines()` summarises.

    Raises:
        FileNotFoundError: a file does not exist.
        DataError: a file breaks the format; the message names the file, row, column, expected and got.
        ValueError: `ids` is not one of `ID_MODES`.

    Example:
        >>> result = import_samples("train.parquet", "valid.parquet", "test.parquet", "data/amazon")  # doctest: +SKIP
        >>> print("\\n".join(result.lines()))  # doctest: +SKIP
    """
    started = time.perf_counter()
    if ids not in ID_MODES:
        raise ValueError(f"ids must be one of {', '.join(ID_MODES)}. Got {ids!r} instead.")
    out = Path(out)
    check_output(out, STORE, force)  # before any work: a refused --out costs nothing
    paths = {"train": Path(train), "valid": Path(valid), "test": Path(test)}
    read = [_read(paths[s], s) for s in SPLITS]
    files, kinds = [r[0] for r in read], [r[1] for r in read]
    with_ts = [f.hist_ts is not None for f in files]
    if any(with_ts) and not all(with_ts):
        listing = ", ".join(f"{f.path} {'has' if t else 'lacks'} them" for f, t in zip(files, with_ts, strict=True))
        raise DataError(f"expected hist_ts/target_ts in every file or in none: {listing}.")
    modes = _id_modes(files, kinds, ids)
    items, item_vocab, num_items = _encode(files, "item", modes["item"])
    cats, cat_vocab, num_categories = _encode(files, "category", modes["category"])
    users, user_vocab, num_users = _encode(files, "user", "map")

    # Per file: drop padding (item 0 among kept ids), then timestamps (real ones checked, or synthetic).
    padding_removed, histories_with_padding = 0, 0
    parts: list[dict[str, np.ndarray]] = []
    for i, f in enumerate(files):
        target_item, hist_item = items[2 * i], items[2 * i + 1]  # [N], [R]
        target_cat, hist_cat = cats[2 * i], cats[2 * i + 1]  # [N], [R]
        row, position = f.row_of, f.position_of  # [R] each
        keep = hist_item != 0 if modes["item"] == "keep" else np.ones(hist_item.size, bool)  # [R]
        padding_removed += int((~keep).sum())
        histories_with_padding += int(np.count_nonzero(np.bincount(row[~keep], minlength=1)))
        lengths = np.bincount(row[keep], minlength=f.lengths.size).astype(np.int64)  # [N]
        row, position = row[keep], position[keep]
        if f.hist_ts is not None and f.target_ts is not None:
            ts, target_ts = f.hist_ts[keep], f.target_ts  # [R], [N]
            j = _first(ts >= target_ts[row])
            if j is not None:
                raise DataError(
                    f"{f.path} row {row[j]} (0-based), column 'hist_ts'[{position[j]}]: expected a time before "
                    f"target_ts = {target_ts[row[j]]}, got {ts[j]}: a behaviour at or after its target would leak "
                    "the future into the history."
                )
            j = _first((ts[1:] < ts[:-1]) & (row[1:] == row[:-1]))
            if j is not None:
                raise DataError(
                    f"{f.path} row {row[j + 1]} (0-based), column 'hist_ts'[{position[j + 1]}]: expected "
                    f"non-decreasing times (histories are oldest first), got {ts[j + 1]} after {ts[j]}."
                )
        else:
            starts = np.cumsum(lengths) - lengths  # [N]
            ts = np.arange(row.size, dtype=np.int64) - starts[row] + 1  # [R] 1..n within each history
            target_ts = lengths + 1  # [N]
        parts.append(
            {
                "user": users[i],
                "target_item": target_item,
                "target_cat": target_cat,
                "label": f.label,
                "lengths": lengths,
                "target_ts": target_ts.astype(np.int64),
                "item": hist_item[keep],
                "category": hist_cat[keep],
                "timestamp": ts.astype(np.int64),
            }
        )

    del read, files, f, items, cats, hist_item, hist_cat, row, position, keep  # parts hold what is still needed

    # Pseudo-trajectories: sample k (over train, valid, test) owns trajectory k + 1; trajectory 0 stays empty.
    lengths_all = np.concatenate([p["lengths"] for p in parts])  # [N_all]
    N_all = lengths_all.size
    offsets = np.zeros(N_all + 2, dtype=np.int64)  # [U + 1], U = N_all + 1
    np.cumsum(lengths_all, out=offsets[2:])
    owner = np.concatenate([[0], *[p["user"] for p in parts]]).astype(np.int64)  # [U] real dense user
    item_dtype, cat_dtype = id_dtype(num_items - 1, np.int32), id_dtype(num_categories - 1, np.int32)
    item = np.concatenate([p["item"] for p in parts]).astype(item_dtype)  # [R_all]
    category = np.concatenate([p["category"] for p in parts]).astype(cat_dtype)[:, None]  # [R_all, 1]
    timestamp = np.concatenate([p["timestamp"] for p in parts])  # [R_all]
    all_items = np.concatenate([item, *[p["target_item"] for p in parts]])  # [R_all + N_all] every item seen
    all_cats = np.concatenate([category[:, 0], *[p["target_cat"] for p in parts]])  # [R_all + N_all] its category
    item_category = _item_categories(all_items, all_cats, num_items, cat_dtype)  # [V_item, 1]
    # Counts over pseudo-trajectories: a real behaviour shared by k samples of a user counts k times.
    item_count = np.bincount(item, minlength=num_items).astype(np.int64)  # [V_item]
    distinct = {
        "item": int(np.count_nonzero(np.bincount(all_items, minlength=num_items))),
        "category": int(np.count_nonzero(np.bincount(all_cats, minlength=num_categories)[1:])),
        "user": user_vocab.len(),
    }
    del all_items, all_cats
    samples: dict[str, SampleSet] = {}
    first = 1
    for split, p in zip(SPLITS, parts, strict=True):
        n = p["lengths"].size
        samples[split] = SampleSet(
            user=np.arange(first, first + n, dtype=np.int64),
            end=p["lengths"],
            target_item=p["target_item"].astype(np.int64),
            target_category=p["target_cat"].astype(cat_dtype)[:, None],
            target_extra=np.zeros((n, 0), dtype=np.int32),
            target_time=p["target_ts"],
            label=p["label"],
            goal=np.zeros(n, dtype=np.int64),
            scene=np.zeros(n, dtype=np.int64),
            event_id=np.full(n, -1, dtype=np.int64),
        )
        first += n

    with output_directory(out, STORE, force) as tmp:
        (tmp / "trajectories").mkdir()
        arrays = {"offsets": offsets, "owner": owner, "item": item, "timestamp": timestamp, "category": category}
        for name, value in arrays.items():
            np.save(tmp / "trajectories" / f"{name}.npy", np.ascontiguousarray(value))
        (tmp / "items").mkdir()
        np.save(tmp / "items" / "category.npy", np.ascontiguousarray(item_category))
        np.save(tmp / "items" / "extra.npy", np.zeros((num_items, 0), dtype=np.int32))
        np.save(tmp / "items" / "count.npy", item_count)
        (tmp / "vocab").mkdir()
        for name, vocab in (("user_id", user_vocab), ("item_id", item_vocab), ("cat_1", cat_vocab)):
            pl.DataFrame({"raw": vocab}).write_parquet(tmp / "vocab" / f"{name}.parquet")
        for split, sample_set in samples.items():
            sample_set.save(tmp / "samples" / split)
        manifest = {
            "format_version": FORMAT_VERSION,
            "longrec_version": __version__,
            "source": ", ".join(str(paths[s]) for s in SPLITS),
            "schema": asdict(LogSchema(taxonomy_levels=1)),
            "fields": ["category", "item", "timestamp"],
            "extra_fields": [],
            "sizes": {
                "num_users": num_users,
                "num_items": num_items,
                "num_categories": num_categories,
                "taxonomy_levels": 1,
                "num_actions": 0,
                "num_domains": 0,
                "num_scenes": 0,
                "num_goals": 1,
                "num_extra": [],
            },
            "vocab_sha": vocab_sha(tmp / "vocab"),
            "counts": {
                "users": user_vocab.len(),
                "trajectories": N_all,
                "behaviours": int(item.size),
                "impressions": 0,
                "samples_total": N_all,
                **split_counts(samples, {s: str(paths[s]) for s in SPLITS}),
            },
            "protocol": {"name": "samples"},
            "load_report": {"rows_read": N_all, "rows_kept": N_all, "dropped": {}},
            "protocol_report": {},
            "interop": {
                "files": {s: str(paths[s]) for s in SPLITS},
                "ids": {"item": modes["item"], "category": modes["category"], "user": "map"},
                "distinct": distinct,
                "timestamps": "from hist_ts and target_ts"
                if all(with_ts)
                else "synthetic (time delta = relative position)",
                "padding_removed": padding_removed,
                "histories_with_padding": histories_with_padding,
            },
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_manifest(tmp, manifest)
    logger.info("imported %d samples into %s in %.1fs", N_all, out, time.perf_counter() - started)
    return ImportResult(out=out, manifest=manifest)
