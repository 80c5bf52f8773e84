"""Incremental exchange: ship only what changed between two versions of a model (the Tencent paper's "incremental
exchange", HugeCTR HPS's incremental model updates).

Training moves a small part of a big embedding table between two exports (the rows of the items, categories and
time buckets its batches touched), while every dense tensor (MLPs, attention, norms) changes. A delta therefore
holds, per `nn.Embedding` table, the ids and new values of the rows that differ from the base (bit for bit), plus
every dense tensor whole:

    delta.json          format_version, base_version, version, lineage, parent (= base_version), created, source
                        (run name, step), content_sha256 (of the new version, as `longrec.serve.artifact` defines
                        it), payload_sha256 and payload_bytes (of delta.safetensors), tables ({name: {rows,
                        changed}}), dense (names)
    delta.safetensors   ids/<table> int64 [R], rows/<table> [R, D] for each table; dense/<name> for the others

    longrec export runs/din-day2 --delta-from models/din --out deltas/day2     # export_delta(...)
    new = apply_delta(versions.current(), "deltas/day2")                        # then versions.publish(new)

`apply_delta` builds the new model aside (the base, which requests are using, is never changed), after checking
that the delta was made for this base (its version) and that the payload is intact (its sha256); the model it
builds must then have exactly the content the delta promises (`content_sha256`, so also the version id), which
makes it equal to a full export of the new weights, tensor for tensor. Any failure is a `ValueError` saying what
went wrong; the caller logs it and keeps serving the base. The model, search settings and max_history must be the
base's. Sizes, vocabularies and item tables too, unless the run continued on a store whose vocabularies grew from
the base's by appending (docs/incremental.md): then the delta (format 2) adds `growth` to delta.json (new sizes and
vocab_sha, the appended raw values per vocabulary, file digests) and `item_ids/<t>`, `item_rows/<t>` to the payload,
table rows include the appended ones, and `apply_delta` grows everything to the full export of the run, bit for bit.
`export_delta` refuses a renumbered vocabulary or shrunk sizes: export a full artifact then.

Why one file: writing and applying a delta are two halves of one format (payload names, growth record, checks);
keeping them together keeps the writer and the reader from drifting apart.

**Training side**: `DeltaExporter` is a training callback (`longrec.run.train(config, out, callbacks=[...])`) that
writes a delta every `every_steps` steps and/or at each validation that makes a new best checkpoint, each on top
of the previous one (a chain starting at the base artifact, listed in order in `deltas.json`).

**What changes under Adam.** Adam keeps a running mean of every row's gradient, so a row that was trained once keeps
moving after its gradient is zero, and a delta taken after a continued run counts every row the optimizer state
ever touched, not only the rows the new data touched. Continuing with a fresh optimizer makes deltas smaller;
docs/serving.md reports both on the Taobao slice.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from longrec.data.store import TrajectoryStore, read_vocab
from longrec.data.vocab import Vocabulary
from longrec.files import DELTA, DELTAS, check_output, dumps_json, output_directory, read_json_object, write_json
from longrec.models import build_model_for_sizes
from longrec.run import Run, load_run
from longrec.run.directory import read_run_config
from longrec.serve.artifact import (
    CONTENT_KEYS,
    ITEM_TABLES,
    ModelArtifact,
    content_sha256,
    export_run,
    file_sha256,
    load_weights,
    read_model_json,
    run_meta,
    serving_meta,
    state_of,
    version_id,
)
from longrec.version import __version__

__all__ = ["DELTA_FORMAT", "PLAIN_FORMAT", "DeltaExporter", "apply_delta", "embedding_names", "export", "export_delta"]

DELTA_FORMAT = 2  # 2: a delta may grow the tables, vocabularies and item tables (`growth`); 1: same sizes
PLAIN_FORMAT = 1  # what a delta without growth is written as (older longrec reads it)
_VOCAB_DTYPES = {str(d): d for d in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                                     pl.UInt64, pl.String)}  # fmt: skip
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def embedding_names(model: nn.Module) -> set[str]:
    """State-dict names of the model's `nn.Embedding` tables ("embedding.item_embedding.weight", ...)."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding)}


def _changed_rows(base: Tensor, new: Tensor) -> Tensor:
    """Ids [R] of the rows of new [V, D] whose bits differ from base's (so -0.0 vs 0.0 and NaNs count exactly)."""
    bits = _INT_OF_SIZE[new.element_size()]
    return (new.view(bits) != base.view(bits)).any(dim=1).nonzero().squeeze(1)  # [R] int64


def _payload(
    base: Mapping[str, Tensor], new: Mapping[str, Tensor], tables: set[str]
) -> tuple[dict[str, Tensor], dict[str, dict[str, int]], list[str]]:
    """The delta.safetensors tensors, the per-table counts and the dense names between two state dicts.

    A table may have grown by appending rows (a continued run on a grown vocabulary): its delta rows are the changed
    old rows and every appended one, and its counts add `base_rows`. A dense tensor is sent whole anyway."""
    if set(base) != set(new):
        raise ValueError(
            f"the two models have different tensors (only in the base: {sorted(set(base) - set(new))[:5]}, only in "
            f"the new one: {sorted(set(new) - set(base))[:5]}): a delta needs the same model. Export a full artifact."
        )
    payload: dict[str, Tensor] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in sorted(new):
        b, n = base[name], new[name]
        grown = b.dim() > 0 and b.shape[1:] == n.shape[1:] and n.shape[0] > b.shape[0]
        if (b.shape != n.shape and not grown) or b.dtype != n.dtype:
            raise ValueError(
                f"tensor {name} is {n.dtype} {list(n.shape)} in the new model but {b.dtype} {list(b.shape)} in the "
                "base: a delta needs the same model shape (only appended rows may differ). Export a full artifact."
            )
        if name in tables:
            old = b.shape[0]
            ids = torch.cat([_changed_rows(b, n[:old]), torch.arange(old, n.shape[0])])  # [R]
            payload[f"ids/{name}"] = ids
            payload[f"rows/{name}"] = n[ids].contiguous()  # [R, D]
            counts[name] = {"rows": int(n.shape[0]), "changed": int(ids.numel())}
            if grown:
                counts[name]["base_rows"] = int(old)
        else:
            payload[f"dense/{name}"] = n
    return payload, counts, sorted(set(new) - tables)


def _check_same_model(
    base: Mapping[str, Any], other: Mapping[str, Any], what: str, keys: tuple[str, ...] = (*CONTENT_KEYS, "items")
) -> None:
    """Refuse a delta between models that differ in more than their weights (every difference listed)."""
    normal = {key: dumps_json(other[key]) for key in keys}
    expected = {key: dumps_json(base[key]) for key in keys if key != "items"}
    if "items" in keys:
        expected["items"] = dumps_json({k: v for k, v in base["files"].items() if k.startswith("items/")})
    differs = [key for key in keys if expected[key] != normal[key]]
    if differs:
        raise ValueError(
            f"{what} differs from the base artifact {base['version']} in {', '.join(differs)}: a delta carries "
            "weights, and appended rows when the vocabularies grew. Export a full artifact instead "
            "(longrec export RUN --out DIR)."
        )


def _grown_ids(base: np.ndarray | Tensor, new: np.ndarray | Tensor) -> Tensor:
    """Ids [R] of the rows of `new` that differ from `base`'s or were appended after them."""
    b, n = torch.as_tensor(base), torch.as_tensor(new)
    old = b.shape[0]
    return torch.cat([_changed_rows(b.reshape(old, -1), n[:old].reshape(old, -1)), torch.arange(old, n.shape[0])])


def _grew_from(old: Any, new: Any) -> bool:
    """Whether a size (an int, or a list of ints such as the extra fields' vocabulary sizes) kept or grew."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_grew_from(a, b) for a, b in zip(old, new, strict=True))
    if isinstance(old, int) and isinstance(new, int):
        return new >= old
    return bool(old == new)


def _growth(base_dir: Path, base_meta: Mapping[str, Any], store: TrajectoryStore, what: str) -> dict[str, Any]:
    """What a delta must carry besides weights when the run's vocabularies grew from the base's by appending: the
    delta.json `growth` record, the item-table payload and the new model.json fields. Refuses a shrunk, renumbered
    or unrelated vocabulary (ValueError)."""
    sizes, base_sizes = dict(store.sizes), dict(base_meta["sizes"])
    shrunk = {k: [v, sizes.get(k)] for k, v in base_sizes.items() if not _grew_from(v, sizes.get(k))}
    if shrunk or set(sizes) != set(base_sizes):
        raise ValueError(
            f"{what} has sizes {sizes}, the base artifact {base_meta['version']} {base_sizes}: a delta can only grow "
            f"tables (shrunk or missing, as [base, run]: {shrunk}). Export a full artifact instead "
            "(longrec export RUN --out DIR)."
        )
    base_sha, sha = str(base_meta["vocab_sha"]), str(store.manifest["vocab_sha"])
    ancestors = [str(a.get("vocab_sha")) for a in store.manifest.get("vocab_growth", {}).get("ancestors", [])]
    if base_sha not in ancestors:
        raise ValueError(
            f"{what} has vocabulary sha {sha}, which did not grow from the base artifact's {base_sha} (expected it "
            f"among the store's vocab_growth ancestors, got {ancestors or 'none'}): its ids may be renumbered, so a "
            "delta cannot carry it. Export a full artifact instead (longrec export RUN --out DIR)."
        )
    names = sorted(k[len("vocab/") : -len(".parquet")] for k in base_meta["files"] if k.startswith("vocab/"))
    found = sorted(p.stem for p in (store.root / "vocab").glob("*.parquet"))
    if names != found:
        raise ValueError(f"{what} has vocabularies {found}, the base artifact {names}: export a full artifact.")
    vocab: dict[str, Any] = {}
    for name in names:
        old, raw = read_vocab(base_dir, name), read_vocab(store.root, name)
        if raw.dtype != old.dtype or raw.len() < old.len() or not raw.head(old.len()).equals(old):
            raise ValueError(
                f"{what}: vocabulary {name} does not start with the base artifact's ({old.len():,} {old.dtype} values; "
                f"got {raw.len():,} {raw.dtype} values, another order): ids were renumbered, not appended. Export a "
                "full artifact instead (longrec export RUN --out DIR)."
            )
        vocab[name] = {"base_rows": old.len(), "dtype": str(raw.dtype), "added": raw.slice(old.len()).to_list()}
    payload: dict[str, Tensor] = {}
    items: dict[str, Any] = {}
    for name in ITEM_TABLES:
        old_items = np.load(base_dir / "items" / f"{name}.npy", allow_pickle=False)
        new_items = np.load(store.root / "items" / f"{name}.npy", allow_pickle=False)
        if (
            old_items.dtype != new_items.dtype
            or old_items.shape[1:] != new_items.shape[1:]
            or (new_items.shape[0] < old_items.shape[0])
        ):
            raise ValueError(
                f"{what}: item table {name} is {new_items.dtype} {list(new_items.shape)}, the base artifact's "
                f"{old_items.dtype} {list(old_items.shape)}: only appended rows may differ. Export a full artifact."
            )
        ids = _grown_ids(old_items, new_items)
        payload[f"item_ids/{name}"] = ids
        payload[f"item_rows/{name}"] = torch.from_numpy(np.ascontiguousarray(new_items[ids.numpy()]))
        items[name] = {"rows": int(new_items.shape[0]), "base_rows": int(old_items.shape[0]), "changed": ids.numel()}
    files = {f"vocab/{p.name}": file_sha256(p) for p in sorted((store.root / "vocab").glob("*.parquet"))}
    files.update(_items_sha(store.root))
    record = {"base_sizes": base_sizes, "sizes": sizes, "base_vocab_sha": base_sha, "vocab_sha": sha}
    record.update(vocab=vocab, items=items, files=files)
    return {"record": record, "payload": payload, "meta": {"sizes": sizes, "vocab_sha": sha, "files": files}}


def _items_sha(store_root: Path) -> dict[str, str]:
    return {f"items/{name}.npy": file_sha256(store_root / "items" / f"{name}.npy") for name in ITEM_TABLES}


def _write_delta(
    out: Path,
    base_meta: Mapping[str, Any],
    base_state: Mapping[str, Tensor],
    new_state: Mapping[str, Tensor],
    tables: set[str],
    source: dict[str, Any],
    force: bool = False,
    growth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the delta from (base_meta, base_state) to new_state (and `growth`, `_growth`'s) into `out`; return its
    delta.json. A delta without growth keeps format 1, which older longrec reads."""
    payload, counts, dense = _payload(base_state, new_state, tables)
    content = content_sha256({**base_meta, **(growth["meta"] if growth else {})}, new_state)
    lineage = int(base_meta["lineage"]) + 1
    meta: dict[str, Any] = {
        "format_version": DELTA_FORMAT if growth else PLAIN_FORMAT,
        "longrec_version": __version__,
        "base_version": base_meta["version"],
        "version": version_id(lineage, content),
        "lineage": lineage,
        "parent": base_meta["version"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "content_sha256": content,
        "tables": counts,
        "dense": dense,
    }
    if growth:
        payload.update(growth["payload"])
        meta["growth"] = growth["record"]
    with output_directory(out, DELTA, force) as tmp:
        save_file(payload, tmp / "delta.safetensors", metadata={"format": "pt"})
        meta["payload_sha256"] = file_sha256(tmp / "delta.safetensors")
        meta["payload_bytes"] = (tmp / "delta.safetensors").stat().st_size
        (tmp / "delta.json").write_text(dumps_json(meta))
    return meta


def export_delta(
    base_artifact_dir: str | Path, run_or_path: Run | str | Path, out: str | Path, force: bool = False
) -> Path:
    """Write the delta that turns the artifact in `base_artifact_dir` into a run's best model (module docstring).

    The run may have continued on a store whose vocabularies grew from the base's by appending (`vocab_growth`):
    the delta then also carries the appended rows, vocabulary entries and item-table rows (format 2).

    Raises:
        OutputError: `out` holds something else, or a previous delta without `force`.
        ValueError: the run's model differs from the base in more than its weights and appended rows (its
            vocabulary renumbered, not grown from the base's; sizes that shrank), or a damaged base.
    """
    out = Path(out)
    check_output(out, DELTA, force)  # before the work: a refused --out costs nothing
    base_dir = Path(base_artifact_dir)
    base_meta = read_model_json(base_dir)
    base_state = load_weights(base_dir / "weights.safetensors")
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    candidate = run_meta(run)
    what = f"run {run.path}"
    growth = None
    if candidate["vocab_sha"] == base_meta["vocab_sha"]:
        _check_same_model(base_meta, {**candidate, "items": _items_sha(run.store.root)}, what)
    else:
        _check_same_model(base_meta, candidate, what, ("model", "search", "max_history"))
        growth = _growth(base_dir, base_meta, run.store, what)
    _write_delta(
        out,
        base_meta,
        base_state,
        state_of(run.model),
        embedding_names(run.model),
        candidate["source"],
        force,
        growth,
    )
    return out


def export(
    run: Run,
    out: str | Path,
    force: bool = False,
    version: str | None = None,
    parent: str | Path | None = None,
    delta_from: str | Path | None = None,
) -> str:
    """`longrec export`: the run's artifact (`export_run`), or with `delta_from` its delta on top of that artifact
    (`export_delta`); returns the line the command prints."""
    if delta_from is None:
        meta = read_model_json(export_run(run, out, version, force, parent), check_files=False)
        return f"wrote {out}: version {meta['version']} (parent {meta['parent']})"
    if version is not None or parent is not None:
        raise ValueError("--delta-from makes the next version of its base: --version and --parent do not apply.")
    delta = read_json_object(export_delta(delta_from, run, out, force) / "delta.json", "model delta")
    rows = ", ".join(f"{name} {t['changed']:,}/{t['rows']:,} rows" for name, t in delta["tables"].items())
    return f"wrote {out}: {delta['base_version']} -> {delta['version']}, {delta['payload_bytes']:,} bytes ({rows})"


def apply_delta(base: ModelArtifact, delta_dir: str | Path) -> ModelArtifact:
    """The next version: `base` with the delta in `delta_dir` applied, built aside (`base` is not changed).

    Raises:
        FileNotFoundError: no delta.json / delta.safetensors.
        ValueError: the delta was made for another base version, its payload is damaged (sha256), it does not fit
            the base's tensors, or the result is not the content it promises. Keep serving `base`.
    """
    folder = Path(delta_dir)
    meta = read_json_object(folder / "delta.json", "model delta folder written by 'longrec export --delta-from'")
    if meta.get("format_version") not in (PLAIN_FORMAT, DELTA_FORMAT):
        raise ValueError(
            f"{folder / 'delta.json'} has format_version {meta.get('format_version')!r}; this longrec "
            f"reads {PLAIN_FORMAT} and {DELTA_FORMAT}. Upgrade longrec, or load a full export."
        )
    growth = meta.get("growth") if meta["format_version"] == DELTA_FORMAT else None
    if meta.get("base_version") != base.version:
        raise ValueError(
            f"delta {folder} turns version {meta.get('base_version')!r} into {meta.get('version')!r}, but the model "
            f"given is version {base.version!r}. Apply the deltas in order, or load a full export."
        )
    if base.caches:
        raise ValueError(
            f"version {base.version} serves {', '.join(base.caches)} from disk (the embedding cache), and deltas "
            "apply to in-memory tables only: load the base without the cache to apply delta "
            f"{folder}, or load a full export of version {meta.get('version')!r}."
        )
    path = folder / "delta.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the delta {folder} is incomplete.")
    got = file_sha256(path)
    if got != meta.get("payload_sha256"):
        raise ValueError(
            f"{path} is damaged or was changed: its sha256 is {got[:16]}…, delta.json records "
            f"{str(meta.get('payload_sha256'))[:16]}…. Refusing to apply it."
        )
    payload = load_weights(path)
    state = _applied(base.model.state_dict(), payload, path, meta.get("tables", {}) if growth else None)
    sizes, vocabulary, category, extra = base.sizes, base.vocabulary, base.item_category, base.item_extra
    grown: dict[str, Any] = {}
    if growth:
        vocabulary = _grown_vocabulary(base, growth, folder)
        items = {
            name: _grown_items(name, table, payload, growth, folder)
            for name, table in (("category", base.item_category), ("extra", base.item_extra))
        }
        category, extra, sizes = items["category"], items["extra"], dict(growth["sizes"])
        grown = {"sizes": sizes, "vocab_sha": vocabulary.sha, "files": dict(growth["files"])}
    content = content_sha256({**base.meta, **grown}, state)
    if content != meta.get("content_sha256"):
        raise ValueError(
            f"applying {folder} to version {base.version} gives content {content[:16]}…, not the "
            f"{str(meta.get('content_sha256'))[:16]}… the delta promises: the base in memory is not the one the "
            "delta was made from. Load a full export."
        )
    model = build_model_for_sizes(base.meta["model"]["name"], base.meta["model"]["params"], sizes)
    model.load_state_dict(state, assign=True)
    model.eval()
    version, lineage = str(meta["version"]), int(meta["lineage"])
    files = {k: v for k, v in {**base.meta["files"], **grown.get("files", {})}.items() if k != "weights.safetensors"}
    new_meta = {
        **base.meta,
        **grown,
        **{k: meta[k] for k in ("version", "lineage", "parent", "created", "source", "content_sha256")},
        "files": files,  # no weights file of its own
        "delta": folder.name,
    }
    return ModelArtifact(
        path=base.path,
        version=version,
        config=base.config,
        model=model,
        vocabulary=vocabulary,
        item_category=category,
        item_extra=extra,
        sizes=sizes,
        parent=base.version,
        lineage=lineage,
        meta=new_meta,
    )


def _grown_vocabulary(base: ModelArtifact, growth: Mapping[str, Any], folder: Path) -> Vocabulary:
    """The base's vocabularies with the delta's appended values; their sha must be the one the delta promises."""
    entries = growth.get("vocab", {})
    if sorted(entries) != base.vocabulary.names():
        raise ValueError(
            f"delta {folder} grows vocabularies {sorted(entries)}, the base has {base.vocabulary.names()}: it was "
            "made for another model. Load a full export."
        )
    raws: dict[str, pl.Series] = {}
    for name, entry in entries.items():
        old = base.vocabulary.raw(name)
        dtype = _VOCAB_DTYPES.get(str(entry.get("dtype")))
        if dtype is None or old.len() != entry.get("base_rows") or old.dtype != dtype:
            raise ValueError(
                f"delta {folder} appends {entry.get('dtype')!r} values to vocabulary {name} after "
                f"{entry.get('base_rows')!r} rows, but the base's holds {old.len():,} {old.dtype} values. Load a "
                "full export."
            )
        raws[name] = pl.concat([old, pl.Series(name="raw", values=entry.get("added", []), dtype=dtype)])
    vocabulary = Vocabulary.in_memory(base.path, raws)
    if vocabulary.sha != growth.get("vocab_sha"):
        raise ValueError(
            f"the vocabularies grown by {folder} have sha {vocabulary.sha}, not the {growth.get('vocab_sha')!r} "
            "the delta promises. Load a full export."
        )
    return vocabulary


def _grown_items(
    name: str, table: np.ndarray, payload: Mapping[str, Tensor], growth: Mapping[str, Any], folder: Path
) -> np.ndarray:
    """An item table grown by the delta's rows; its .npy bytes must have the sha256 the delta records."""
    ids, rows = payload.get(f"item_ids/{name}"), payload.get(f"item_rows/{name}")
    size = growth.get("items", {}).get(name, {}).get("rows")
    if ids is None or rows is None or not isinstance(size, int):
        raise ValueError(f"delta {folder} lacks the rows of item table {name}: it is incomplete. Load a full export.")
    new = _grow(torch.from_numpy(table), ids, rows, size, f"{folder}: item table {name}").numpy()
    buffer = io.BytesIO()
    np.save(buffer, new)
    expected = growth.get("files", {}).get(f"items/{name}.npy")
    if hashlib.sha256(buffer.getvalue()).hexdigest() != expected:
        raise ValueError(
            f"item table {name} grown by {folder} is not the one the delta promises (sha256 "
            f"{str(expected)[:16]}…). Load a full export."
        )
    return new


def _grow(table: Tensor, ids: Tensor, rows: Tensor, size: int, what: str) -> Tensor:
    """A copy of `table` [V, ...] grown to `size` rows, rows `ids` set to `rows` (every appended row among them)."""
    old = table.shape[0]
    inside = ids.numel() == 0 or (int(ids.min()) >= 0 and int(ids.max()) < size)
    if size < old or rows.shape != (ids.numel(), *table.shape[1:]) or not inside:
        raise ValueError(
            f"{what}: rows {list(rows.shape)} with ids {list(ids.shape)} do not fit the base's "
            f"{list(table.shape)} grown to {size} rows (ids must be in [0, {size}))."
        )
    covered = torch.zeros(size - old, dtype=torch.bool)
    covered[ids[ids >= old] - old] = True
    if not bool(covered.all()):
        raise ValueError(f"{what}: the delta lacks {int((~covered).sum())} of the {size - old} appended rows.")
    new = table.new_empty((size, *table.shape[1:]))
    new[:old] = table
    new[ids] = rows.to(new.dtype)
    return new


def _applied(
    base: Mapping[str, Tensor],
    payload: Mapping[str, Tensor],
    path: Path,
    tables: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Tensor]:
    """The new state dict: base tables with the delta's rows written into copies (grown to `tables`' rows when the
    delta grows them), the delta's dense tensors."""
    state: dict[str, Tensor] = {}
    used = {k for k in payload if k.startswith(("item_ids/", "item_rows/"))} if tables is not None else set()
    for name, tensor in base.items():
        expected = tensor.shape
        if f"dense/{name}" in payload:
            new = payload[f"dense/{name}"]
            used.add(f"dense/{name}")
            if tables is not None and new.dim() > 0 and new.shape[1:] == tensor.shape[1:]:
                expected = torch.Size([max(new.shape[0], tensor.shape[0]), *tensor.shape[1:]])  # grown: sent whole
        elif f"ids/{name}" in payload and f"rows/{name}" in payload:
            ids, rows = payload[f"ids/{name}"], payload[f"rows/{name}"]  # [R], [R, D]
            used |= {f"ids/{name}", f"rows/{name}"}
            size = int(tables.get(name, {}).get("rows", tensor.shape[0])) if tables is not None else tensor.shape[0]
            new = _grow(tensor.detach(), ids, rows, size, f"{path}: rows/{name}")
            expected = new.shape
        else:
            raise ValueError(f"{path} holds nothing for tensor {name} of the base: it was made for another model.")
        if new.shape != expected or new.dtype != tensor.dtype:
            raise ValueError(
                f"{path}: {name} is {new.dtype} {list(new.shape)}, the base's is {tensor.dtype} {list(tensor.shape)}."
            )
        state[name] = new
    extra = sorted(set(payload) - used)
    if extra:
        raise ValueError(f"{path} holds tensors the base does not have ({', '.join(extra[:5])}): another model.")
    return state


class DeltaExporter:
    """A training callback that writes deltas of the model being trained, each on top of the previous one.

    Pass it to `longrec.run.train(config, run_dir, callbacks=[DeltaExporter(base, out, every_steps=500)])`. The
    run must train the base artifact's model (same model, sizes, search, max_history, vocabularies and item
    tables; checked when training starts). `out` receives `step-<step>/` delta folders and `deltas.json`, which
    lists them in the order to apply: `{"base": version, "deltas": [{"folder", "step", "base_version",
    "version"}, ...]}`. A step at which nothing changed writes nothing.

    Args:
        base: the artifact folder the first delta applies to (usually the one being served).
        out: the delta series folder: new, empty, or a previous series (replaced with `force`).
        every_steps: write a delta every this many optimizer steps; None = never on a step count.
        at_validation: write a delta at each validation that makes a new best checkpoint.
        force: replace a previous delta series in `out`.
    """

    def __init__(
        self,
        base: str | Path,
        out: str | Path,
        every_steps: int | None = None,
        at_validation: bool = True,
        force: bool = False,
    ) -> None:
        if every_steps is not None and (
            isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1
        ):
            raise ValueError(f"DeltaExporter.every_steps must be a positive int or None. Got {every_steps!r} instead.")
        if every_steps is None and not at_validation:
            raise ValueError("DeltaExporter needs a trigger: every_steps=N, at_validation=True, or both.")
        self.base, self.out = Path(base), Path(out)
        self.every_steps, self.at_validation, self.force = every_steps, at_validation, force
        check_output(self.out, DELTAS, force)  # refused before training starts
        self.written: list[Path] = []
        self._model: nn.Module | None = None
        self._meta: dict[str, Any] = {}
        self._state: dict[str, Tensor] = {}
        self._tables: set[str] = set()
        self._run = ""
        self._last_step = -1

    def on_train_start(self, info: dict[str, Any]) -> None:
        self._model = info["model"]
        self._meta = read_model_json(self.base)
        self._state = load_weights(self.base / "weights.safetensors")
        config, run_info = read_run_config(info["out"])
        store = run_info.get("store", {})
        candidate = serving_meta(config, store.get("sizes", {}), str(store.get("vocab_sha")))
        candidate["items"] = _items_sha(Path(config.data.path))
        _check_same_model(self._meta, candidate, f"the run in {info['out']}")
        self._tables = embedding_names(self._model)
        self._run = Path(info["out"]).resolve().name
        if check_output(self.out, DELTAS, self.force):
            shutil.rmtree(self.out)  # a previous series (checked: nothing else is in it)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "deltas.json", {"base": self._meta["version"], "deltas": []})

    def on_step(self, step: int, epoch: int, loss: Tensor, samples: int) -> None:
        if self.every_steps is not None and step % self.every_steps == 0:
            self._emit(step)

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        if self.at_validation and best:
            self._emit(step)

    def on_train_end(self, result: dict[str, Any]) -> None:
        self._model = None  # let the trained model go with the loop

    def _emit(self, step: int) -> None:
        if self._model is None or step == self._last_step:
            return
        self._last_step = step
        live = self._model.state_dict()
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in live.items()}  # copies
        if content_sha256(self._meta, state) == self._meta["content_sha256"]:
            return  # nothing changed since the previous version
        folder = self.out / f"step-{step:08d}"
        meta = _write_delta(folder, self._meta, self._state, state, self._tables, {"run": self._run, "step": step})
        series = read_json_object(self.out / "deltas.json", "delta series")
        series["deltas"].append(
            {"folder": folder.name, "step": step, "base_version": meta["base_version"], "version": meta["version"]}
        )
        write_json(self.out / "deltas.json", series)
        self.written.append(folder)
        self._state = state
        self._meta = {**self._meta, **{k: meta[k] for k in ("version", "lineage", "content_sha256")}}
