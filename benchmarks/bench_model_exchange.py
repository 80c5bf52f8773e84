"""Model exchange for serving: how much of a model a day's update changes (a delta against a full export, on the
Taobao slice), and what the embedding cache saves and costs on a Zipf request stream over a large item catalog.

Part 1, delta vs full export (DIN and DARE as `harness.PROTOCOL_A` trains them: dim 16; DARE with soft search, K =
20, and its auxiliary loss). Data: the Taobao slice under Protocol A (`harness.Stores.taobao`, users with >= 50
behaviours), prepared once from the whole log, so base and update share one vocabulary (and vocabulary sha: a delta
between models of two vocabularies would mean nothing). Its train samples are split by the calendar day of their
target time in the log's own time zone (`--utc-offset`, UTC+8: the Taobao days 2017-11-25 .. 12-03 are Beijing
days): the base trains on the samples of the days before the last one, the update on the last day's, each a copy of
the store whose train split keeps that window (`harness.Stores.train_window`: trajectories, vocabularies, item
tables, valid and test unchanged). A sample's history is its user's behaviours strictly before its target time, so
the base never sees a behaviour of the last day, and the update's histories reach into it.
- Base: `harness.train_run` (the package's `longrec.run.train`) for `--base-epochs` epochs (batch `--batch-size`,
  Adam lr `--lr`, max_history `--max-history`), exported with `export_run` from its last weights (last.pt).
- Update: one epoch of the last day's train batches (`make_loader`, shuffled as the loop shuffles the epoch after
  the base's), stepped by `harness.Trainer` (the loop's `train_step`, Adam from `make_optimizer`) from the base's last
  weights, twice: with Adam's state carried over (loaded from the base run's last.pt, what `longrec train --resume`
  restores) and with a fresh Adam (moments reset). The two see the same batches in the same order; only the
  optimizer's starting state differs. The carried update is checked against `longrec.run.train(..., resume=True)`
  on a copy of the base run given the day's store: the same weights, bit for bit.
- Each update is exported in full (`export_run`, parent: the base artifact) and as a delta on the base
  (`export_delta`). Reported: bytes of the weights (weights.safetensors), the full artifact folder (with vocabularies
  and item tables) and the delta folder (delta.safetensors + delta.json); per embedding table its rows changed and,
  for the item and category tables, how many distinct ids (padding excluded) the day's batches hold (history within
  max_history, and targets) and the base's and the day's together.
- `apply_delta` on the loaded base against `load_artifact` of the full export (what a server does with either),
  alternating, `--apply-repeats` each, median; then the check that the applied delta equals the full export bit for
  bit (same version id, every tensor's bytes).

Part 2, embedding cache. Data: a generated catalog log (`harness.Stores.catalog`: each of `--items` items is one
behaviour of one of 2,000 users, 9,439 categories), so that a model has a big item table; DIN (dim 16, max_history
`--length`) trained for `--catalog-steps` steps (the weights only need to be a run's) and exported. Default 4,162,024
items, the full Taobao vocabulary (a 266 MB item table at dim 16): it fits this machine's memory and preparing it takes
about 30 s. Requests: one user with L = `--length` behaviours and C = `--candidates` candidates, item ids drawn Zipf
(rank r with weight r^-a, `--zipf`) over the catalog in a seeded random order, the same stream for every capacity at
one exponent; taxonomy paths from the artifact's item table. Per exponent and cache capacity (`--capacities`, shares
of the item rows), a fresh `load_artifact(..., EmbeddingCacheConfig(capacity))` is warmed with `--warmup` requests,
then it and the in-memory artifact (`load_artifact` without the cache) score the same `--requests` requests
alternately (which goes first alternates too), search + forward without gradient on `--threads` threads; their
logits must be equal (asserted). Hit rate = the item cache's hits / (hits + misses) over the measured requests
(distinct rows per request). Memory: the bytes of the tensors and arrays that hold the table's rows in this process,
counted, not RSS: in memory, the item table [V, D]; cached, the arrays of the `RowCache` (its C cached rows, a 4-byte
slot per table row, per-slot bookkeeping), the memory map excluded. RSS would not separate the two: they share one
process, and the resident pages of a memory map do not follow the rows read (touching one row every 64 pages of a
weights file in the page cache left almost every page of its mapping resident, in a check by hand). 'Pages of the
cached rows' = the 4 KiB pages that hold the rows the cache holds at the end: what the OS page cache alone would need
to keep the same rows in memory. The weights file is in the OS page cache throughout (it was just written and read):
misses are served from RAM, no disk read is measured.

Run:       python benchmarks/bench_model_exchange.py --update-readme       (~6 min on 2 cores)
Quick:     python benchmarks/bench_model_exchange.py --quick --json /tmp/model_exchange.json       (< 2 min)
Re-render: python benchmarks/bench_model_exchange.py --from-json benchmarks/results/model_exchange.json --update-readme
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.data.batch import Batch, check_batch
from longrec.data.dataset import make_loader
from longrec.run import Run, train
from longrec.search import one_user_request, search_stage
from longrec.serve.artifact import ModelArtifact, export_run, load_artifact
from longrec.serve.delta import apply_delta, export_delta
from longrec.serve.embedding_cache import EmbeddingCacheConfig, RowCache
from longrec.train.checkpoint import load_checkpoint

logger = logging.getLogger("bench_model_exchange")

DAY_S = 86_400
PAGE = 4_096  # bytes of an OS page
UPDATES = ("carried", "fresh")  # Adam's state carried over from the base run, or a fresh Adam
UPDATE_NAMES = {"carried": "Adam state carried", "fresh": "fresh Adam"}


# ------------------------------------------------------------------------------------------------------ part 1
@dataclasses.dataclass
class Held:
    """Which item and category ids (padding excluded) a pass over batches held: histories (real behaviours) and
    targets."""

    items: np.ndarray  # [V_item] bool
    categories: np.ndarray  # [V_cat] bool

    @classmethod
    def empty(cls, sizes: dict[str, Any]) -> Held:
        return cls(np.zeros(sizes["num_items"], bool), np.zeros(sizes["num_categories"], bool))

    def record(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """Yield `batches`, marking the ids each holds."""
        for batch in batches:
            self.items[batch.history[batch.history_mask].numpy()] = True
            self.items[batch.target.numpy()] = True
            if batch.history_category is not None and batch.target_category is not None:
                self.categories[batch.history_category[batch.history_mask].reshape(-1).numpy()] = True
                self.categories[batch.target_category.reshape(-1).numpy()] = True
            yield batch

    def counts(self) -> dict[str, int]:
        return {"items": int(self.items[1:].sum()), "categories": int(self.categories[1:].sum())}

    def union(self, other: Held) -> Held:
        return Held(self.items | other.items, self.categories | other.categories)


def day_windows(store: harness.Store, utc_offset_h: float) -> dict[str, Any]:
    """The start of the last calendar day (in the log's time zone) of the store's train samples, and the range."""
    times = np.asarray(store.open().samples("train").target_time)  # [N] epoch seconds
    shift = round(utc_offset_h * 3600)
    first, last = int(times.min()), int(times.max())
    last_day = (last + shift) // DAY_S * DAY_S - shift  # epoch seconds of the last day's local midnight

    def date(t: int) -> str:
        return dt.datetime.fromtimestamp(t + shift, dt.UTC).date().isoformat()

    return {"last_day_start": last_day, "end": last + 1, "first_date": date(first), "last_date": date(last),
            "utc_offset_h": utc_offset_h}  # fmt: skip


def base_values(name: str, store: harness.Store, args: argparse.Namespace) -> dict[str, Any]:
    params, search = harness.PROTOCOL_A[name]
    values = {f"model.{k}": v for k, v in params.items()} | {f"search.{k}": v for k, v in search.items()}
    return values | {
        "data.path": str(store.path),
        "data.max_history": args.max_history,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.epochs": args.base_epochs,
        "train.threads": args.threads,
        "train.progress": False,
    }


def day_update(base_run: Path, day: harness.Store, update: str, args: argparse.Namespace, held: Held) -> Run:
    """The base run's last weights trained one epoch on the day's train batches (module docstring), as a Run whose
    model holds the result (in eval mode)."""
    run = harness.newest_run(base_run)
    trainer = harness.Trainer(run.model, run.config.search, lr=args.lr)
    if update == "carried":
        trainer.optimizer.load_state_dict(load_checkpoint(base_run / "last.pt")["optimizer"])
    batches = make_loader(day.open(), "train", args.batch_size, args.max_history, shuffle=True, seed=0,
                          epoch=args.base_epochs)  # fmt: skip
    trainer.epoch(held.record(batches))
    run.model.eval()
    return dataclasses.replace(run, step=run.step + len(trainer.losses))


def same_bits(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    """Two state dicts with the same tensors: names, dtypes, shapes and bytes."""
    return set(x) == set(y) and all(
        x[k].dtype == y[k].dtype
        and x[k].shape == y[k].shape
        and torch.equal(x[k].detach().reshape(-1).view(torch.uint8), y[k].detach().reshape(-1).view(torch.uint8))
        for k in x
    )


def resumed_weights(base_run: Path, day: harness.Store, name: str, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The weights `longrec.run.train(..., resume=True)` reaches on a copy of the base run given the day's store: one
    more epoch; the carried update must equal them."""
    run_dir = base_run.with_name(f"{base_run.name}-resumed")
    shutil.copytree(base_run, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    train(harness.config_from(base_values(name, day, args) | {"train.epochs": args.base_epochs + 1}), run_dir,
          resume=True)  # fmt: skip
    return harness.newest_run(run_dir).model.state_dict()


def alternate(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Seconds of `repeats` calls of each function, alternating them (and which goes first) after one warm-up each."""
    for fn in fns:
        fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for j in range(len(fns)) if i % 2 == 0 else reversed(range(len(fns))):
            started = time.perf_counter()
            fns[j]()
            seconds[j].append(time.perf_counter() - started)
    return seconds


def exchange(name: str, base: harness.Store, day: harness.Store, args: argparse.Namespace, work: Path) -> dict:
    """One model: the base, its two day updates, their full exports and deltas, sizes, rows, apply time, equality."""
    logger.info("%s: base run", name)
    run_dir = work / "runs" / f"{name}-base"
    trained = harness.train_run(base_values(name, base, args), run_dir)
    base_artifact = export_run(harness.newest_run(run_dir), work / "models" / f"{name}-base")
    sizes = base.open().sizes
    held_base = Held.empty(sizes)
    for _ in held_base.record(make_loader(base.open(), "train", args.batch_size, args.max_history)):
        pass
    loaded_base = load_artifact(base_artifact)
    resumed = resumed_weights(run_dir, day, name, args)
    record: dict[str, Any] = {
        "model": name,
        "base_steps": trained["steps"],
        "base_seconds": trained["seconds"],
        "weights_bytes": (base_artifact / "weights.safetensors").stat().st_size,
        "artifact_bytes": harness.folder_bytes(base_artifact),
        "held_base": held_base.counts(),
        "updates": {},
    }
    for update in UPDATES:
        logger.info("%s: day update, %s", name, UPDATE_NAMES[update])
        held_day = Held.empty(sizes)
        updated = day_update(run_dir, day, update, args, held_day)
        full = export_run(updated, work / "models" / f"{name}-{update}", parent=base_artifact)
        delta = export_delta(base_artifact, updated, work / "deltas" / f"{name}-{update}")
        meta = json.loads((delta / "delta.json").read_text())
        apply_s, load_s = alternate([functools.partial(apply_delta, loaded_base, delta),
                                     functools.partial(load_artifact, full)], args.apply_repeats)  # fmt: skip
        applied, from_full = apply_delta(loaded_base, delta), load_artifact(full)
        if update == "carried":
            record["carried_equals_resume"] = same_bits(updated.model.state_dict(), resumed)
        record["updates"][update] = {
            "steps": updated.step - trained["steps"],
            "version": meta["version"],
            "weights_bytes": (full / "weights.safetensors").stat().st_size,
            "artifact_bytes": harness.folder_bytes(full),
            "delta_bytes": harness.folder_bytes(delta),
            "payload_bytes": meta["payload_bytes"],
            "tables": meta["tables"],
            "dense_tensors": len(meta["dense"]),
            "held_day": held_day.counts(),
            "held_base_or_day": held_base.union(held_day).counts(),
            "apply_ms": 1e3 * statistics.median(apply_s),
            "load_full_ms": 1e3 * statistics.median(load_s),
            "applied_equals_full": applied.version == from_full.version
            and same_bits(applied.model.state_dict(), from_full.model.state_dict()),
        }
    record["sizes"] = {"num_items": sizes["num_items"], "num_categories": sizes["num_categories"]}
    return record


# ------------------------------------------------------------------------------------------------------ part 2
def zipf_ids(num_ids: int, a: float, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """A sampler of ids 1..num_ids: rank r drawn with weight r^-a, ranks laid over the ids in a random order."""
    cdf = np.cumsum(np.arange(1, num_ids + 1, dtype=np.float64) ** -a)  # [V - 1]
    cdf /= cdf[-1]
    ids = rng.permutation(num_ids) + 1  # rank -> dense item id: a shuffled catalog
    return lambda size: ids[np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), num_ids - 1)]


def requests(draw: Callable[[int], np.ndarray], category: torch.Tensor, count: int, L: int, C: int) -> list[Batch]:
    """`count` one-user requests: L history items and C candidates from `draw`, taxonomy paths from `category`."""
    out = []
    for _ in range(count):
        history, candidates = torch.from_numpy(draw(L)), torch.from_numpy(draw(C))  # [L], [C] int64
        row = Batch(
            history=history[None],  # [1, L]
            history_mask=torch.ones(1, L, dtype=torch.bool),  # [1, L]
            target=candidates[:1],  # [1]
            history_category=category[history][None],  # [1, L, M]
            target_category=category[candidates[:1]],  # [1, M]
        )
        out.append(one_user_request(row, {"target": candidates, "target_category": category[candidates]}))  # [C, L]
    return out


def scorer(artifact: ModelArtifact) -> Callable[[Batch], torch.Tensor]:
    model, search = artifact.model, artifact.config.search

    def score(batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return model(search_stage(batch, model, search))  # [C]

    return score


def cache_bytes(cache: RowCache) -> int:
    """Bytes of the arrays and tensors a RowCache holds (cached rows, slot map, bookkeeping), not its memory map; an
    array that is a view counts the whole array it views."""
    held = [v for v in vars(cache).values() if isinstance(v, np.ndarray | torch.Tensor) and v is not cache.table]
    return sum((v.base if isinstance(v, np.ndarray) and isinstance(v.base, np.ndarray) else v).nbytes for v in held)


def row_pages(cache: RowCache, rows: np.ndarray) -> int:
    """How many OS pages hold `rows` of the cache's memory-mapped table (a row may straddle two)."""
    table = cache.table
    assert isinstance(table, np.memmap)
    width = table.shape[1] * table.itemsize
    start = table.offset + rows.astype(np.int64) * width  # [R] byte offsets in the file
    return int(np.union1d(start // PAGE, (start + width - 1) // PAGE).size)


def cache_runs(args: argparse.Namespace, stores: harness.Stores, work: Path) -> dict[str, Any]:
    """Part 2: the catalog model, then per Zipf exponent and capacity a warmed cache against the in-memory model."""
    catalog = stores.catalog(args.items)
    logger.info("catalog model (%s items)", f"{args.items:,}")
    values = {"model.name": "din", "model.dim": 16, "data.path": str(catalog.path), "data.max_history": args.length,
              "train.batch_size": 256, "train.max_steps": args.catalog_steps, "train.epochs": 1_000,
              "train.threads": args.threads, "train.progress": False}  # fmt: skip
    harness.train_run(values, work / "runs" / "catalog")
    folder = export_run(harness.newest_run(work / "runs" / "catalog"), work / "models" / "catalog")
    weights = folder / "weights.safetensors"
    memory = load_artifact(folder)
    table = memory.model.get_parameter("embedding.item_embedding.weight")  # [V, D]
    V, D = table.shape
    category = torch.from_numpy(memory.item_category.astype(np.int64))  # [V, M]
    in_memory = scorer(memory)
    rows = []
    for a in args.zipf:
        draw = zipf_ids(V - 1, a, np.random.default_rng(args.seed))
        warm = requests(draw, category, args.warmup, args.length, args.candidates)
        timed = requests(draw, category, args.requests, args.length, args.candidates)
        check_batch(timed[0], reads=memory.model.reads)
        asked = np.unique(np.concatenate([b.history[0].numpy() for b in warm + timed] +
                                         [b.target.numpy() for b in warm + timed]))  # fmt: skip
        for share in args.capacities:
            capacity = max(1, round(share * V))
            logger.info("Zipf a = %s, capacity %s rows", a, f"{capacity:,}")
            cached = load_artifact(folder, EmbeddingCacheConfig(capacity=capacity))
            cache = cached.caches["embedding.item_embedding.weight"]
            with_cache = scorer(cached)
            for batch in warm:
                with_cache(batch)
            for batch in warm[:20]:
                in_memory(batch)
            before = (cache.hits, cache.misses, cache.evictions)
            seconds: dict[str, list[float]] = {"memory": [], "cached": []}
            equal = 0
            for i, batch in enumerate(timed):
                out = {}
                for side in ("memory", "cached") if i % 2 == 0 else ("cached", "memory"):
                    fn = in_memory if side == "memory" else with_cache
                    started = time.perf_counter()
                    out[side] = fn(batch)
                    seconds[side].append(time.perf_counter() - started)
                equal += bool(torch.equal(out["memory"], out["cached"]))
            if equal != len(timed):
                raise AssertionError(f"Zipf {a}, capacity {capacity}: {len(timed) - equal} requests' logits differ")
            hits, misses, evictions = (now - was for now, was in zip((cache.hits, cache.misses, cache.evictions),
                                                                     before, strict=True))  # fmt: skip
            held = asked[[int(i) in cache for i in asked]]
            ms = {side: [1e3 * s for s in values] for side, values in seconds.items()}
            rows.append(
                {
                    "zipf": a,
                    "share": share,
                    "capacity": capacity,
                    "hit_rate": hits / (hits + misses),
                    "hits": hits,
                    "misses": misses,
                    "evictions": evictions,
                    "distinct_ids": int(asked.size),
                    **{f"{side}_p{q}_ms": harness.percentile(ms[side], q) for side in ms for q in (50, 99)},
                    **{f"{side}_mean_ms": statistics.fmean(ms[side]) for side in ms},
                    "paired_ratio": statistics.median(c / m for c, m in zip(ms["cached"], ms["memory"], strict=True)),
                    "table_bytes": table.nbytes,
                    "cache_bytes": cache_bytes(cache),
                    "cached_rows_page_bytes": PAGE * row_pages(cache, held),
                    "cached_rows": int(held.size),
                    "logits_equal": equal,
                }
            )
            del cached, cache, with_cache
            gc.collect()
    return {"items": V - 1, "rows_total": V, "dim": D, "weights_bytes": weights.stat().st_size,
            "counts": catalog.info["counts"], "rows": rows}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ measure
def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.models, args.base_epochs, args.apply_repeats = ["DIN"], 1, 3
        args.items, args.warmup, args.requests, args.catalog_steps = 200_000, 300, 200, 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-exchange-")))
        stores = harness.Stores(args.cache)
        taobao = stores.taobao()
        days = day_windows(taobao, args.utc_offset)
        base = stores.train_window(taobao, 0, days["last_day_start"])
        day = stores.train_window(taobao, days["last_day_start"], days["end"])
        data = {"line": taobao.info["line"], "train_samples": {"base": base.info["counts"]["samples"]["train"],
                "day": day.info["counts"]["samples"]["train"]}, **days}  # fmt: skip
        models = [exchange(name, base, day, args, work) for name in args.models]
        cache = cache_runs(args, stores, work)
    return {"data": data, "models": models, "cache": cache}


# ------------------------------------------------------------------------------------------------------ render
def failures(payload: dict[str, Any]) -> list[str]:
    """What must not happen: a delta whose application differs from the full export, cached logits that differ."""
    found = [
        f"{m['model']} {UPDATE_NAMES[u]}: the applied delta differs from the full export"
        for m in payload["models"]
        for u, r in m["updates"].items()
        if not r["applied_equals_full"]
    ]
    found += [
        f"{m['model']}: the update with Adam's state carried differs from `longrec.run.train(..., resume=True)`"
        for m in payload["models"]
        if not m["carried_equals_resume"]
    ]
    return found + [
        f"cache Zipf {r['zipf']} capacity {r['capacity']}: logits differ"
        for r in payload["cache"]["rows"]
        if r["logits_equal"] != payload["config"]["requests"]
    ]


def kib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def table_kind(rows: int, sizes: dict[str, int]) -> str | None:
    return "items" if rows == sizes["num_items"] else "categories" if rows == sizes["num_categories"] else None


def render(payload: dict[str, Any]) -> str:
    config, data, cache = payload["config"], payload["data"], payload["cache"]
    head = (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)}"
    )
    epochs = config["base_epochs"]
    described = {"DIN": "DIN dim 16", "DARE": "DARE dim 16 with soft search (K = 20) and its auxiliary loss"}
    part1 = (
        f"**Delta vs full export** ({data['line']}; one vocabulary for base and update). Base: the train samples of "
        f"{data['first_date']} to the day before {data['last_date']} (UTC{data['utc_offset_h']:+g}; "
        f"{data['train_samples']['base']:,} samples), {epochs} epoch{'s' * (epochs != 1)} with `longrec.run.train`; "
        f"update: one epoch on the {data['train_samples']['day']:,} train samples of {data['last_date']} from the "
        f"base's last weights, by the loop's `train_step`, with Adam's state carried over from the base run or a "
        f"fresh Adam (same batches, same order). Batch {config['batch_size']}, Adam lr {config['lr']}, max_history "
        f"{config['max_history']}; {', '.join(described[m['model']] for m in payload['models'])}. Delta = the delta "
        f"folder (delta.safetensors + delta.json); full artifact = weights + vocabularies + item tables. "
        f"`apply_delta` on the loaded base vs `load_artifact` of the full export: alternating, median of "
        f"{config['apply_repeats']}."
    )
    sizes_rows, table_rows = [], []
    for m in payload["models"]:
        for update, r in m["updates"].items():
            sizes_rows.append(
                [
                    m["model"],
                    UPDATE_NAMES[update],
                    f"{m['base_steps']} + {r['steps']}",
                    f"{r['weights_bytes']:,}",
                    f"{r['artifact_bytes']:,}",
                    f"{r['delta_bytes']:,}",
                    f"{r['delta_bytes'] / r['weights_bytes']:.1%}",
                    f"{r['apply_ms']:.1f}",
                    f"{r['load_full_ms']:.1f}",
                    "yes" if r["applied_equals_full"] else "**no**",
                    ("yes" if m["carried_equals_resume"] else "**no**") if update == "carried" else "—",
                ]
            )
        carried, fresh = m["updates"]["carried"], m["updates"]["fresh"]
        for name, t in carried["tables"].items():
            kind = table_kind(t["rows"], m["sizes"])
            table_rows.append(
                [
                    m["model"],
                    f"`{name.removesuffix('.weight')}`",
                    f"{t['rows']:,}",
                    f"{t['changed']:,} ({t['changed'] / t['rows']:.1%})",
                    f"{fresh['tables'][name]['changed']:,} ({fresh['tables'][name]['changed'] / t['rows']:.1%})",
                    f"{fresh['held_day'][kind]:,}" if kind else "—",
                    f"{carried['held_base_or_day'][kind]:,}" if kind else "—",
                ]
            )
    sizes_table = harness.markdown_table(
        ["model", "update", "steps (base + day)", "weights (B)", "full artifact (B)", "delta (B)", "delta / weights",
         "apply_delta (ms)", "load_artifact full (ms)", "applied = full export (bits)", "= a `--resume` run (bits)"],
        sizes_rows,
    )  # fmt: skip
    rows_table = harness.markdown_table(
        ["model", "table", "rows", "changed, Adam state carried", "changed, fresh Adam", "ids in the day's batches",
         "ids in the base's or the day's batches"],
        table_rows,
    )  # fmt: skip
    part2 = (
        f"**Embedding cache** (DIN, dim 16, a catalog of {cache['items']:,} items, item table "
        f"{kib(cache['rows'][0]['table_bytes'])}; weights file {kib(cache['weights_bytes'])}). Requests: one user, L "
        f"= {config['length']} history items and C = {config['candidates']} candidates, ids Zipf over the shuffled "
        f"catalog; {config['warmup']:,} requests warm each fresh cache, then {config['requests']:,} measured, the "
        f"cached and the in-memory model alternating on the same requests (search + forward, no gradient, "
        f"{payload['machine']['torch_threads']} thread(s)); logits equal on every request. The weights file sits in "
        f"the OS page cache: misses read RAM, not disk. Memory = bytes of the tensors and arrays holding the table "
        f"(counted, not RSS): in memory the table, cached the RowCache's arrays (in brackets its cached rows; the "
        f"rest is mostly its 4-byte slot per table row). Pages of the cached rows = the 4 KiB pages that hold the "
        f"rows the cache holds at the end (what the OS page cache alone would keep for them)."
    )
    cache_rows = [
        [
            f"{r['zipf']}",
            f"{r['capacity']:,} ({r['share']:.0%})",
            f"{r['hit_rate']:.1%}",
            f"{r['memory_p50_ms']:.2f} / {r['memory_p99_ms']:.2f}",
            f"{r['cached_p50_ms']:.2f} / {r['cached_p99_ms']:.2f}",
            f"{r['cached_p50_ms'] / r['memory_p50_ms']:.2f}x ({r['paired_ratio']:.2f}x)",
            f"{kib(r['table_bytes'])} / {kib(r['cache_bytes'])} ({kib(r['capacity'] * cache['dim'] * 4)} rows)",
            kib(r["cached_rows_page_bytes"]),
            f"{r['logits_equal']:,} / {config['requests']:,}",
        ]
        for r in cache["rows"]
    ]
    cache_table = harness.markdown_table(
        ["Zipf a", "capacity (rows)", "hit rate", "in memory p50 / p99 (ms)", "cached p50 / p99 (ms)",
         "cached / in memory p50 (median per request)", "memory: in memory / cached",
         "pages of the cached rows", "logits equal"],
        cache_rows,
    )  # fmt: skip
    problems = failures(payload)
    verdict = "Checks: " + (
        "; ".join(problems) + ": FAIL."
        if problems
        else "the carried update equals a `--resume` run on the day's store, every applied delta equals its full "
        "export bit for bit, the cached logits equal the in-memory ones: PASS."
    )
    return "\n\n".join([head, part1, sizes_table, rows_table, part2, cache_table, verdict])


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "model_exchange", threads=1, scratch=True)
    part1 = parser.add_argument_group("part 1: delta vs full export")
    part1.add_argument("--models", nargs="+", default=["DIN", "DARE"], choices=["DIN", "DARE"], help="models")
    part1.add_argument("--base-epochs", type=int, default=2, help="epochs of the base run")
    part1.add_argument("--batch-size", type=int, default=512, help="training batch")
    part1.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (base and update)")
    part1.add_argument("--max-history", type=int, default=200, help="data.max_history of the Taobao runs")
    part1.add_argument("--utc-offset", type=float, default=8.0, help="hours: the time zone of the log's days")
    part1.add_argument("--apply-repeats", type=int, default=5, help="timed apply_delta / load_artifact calls each")
    part2 = parser.add_argument_group("part 2: embedding cache")
    part2.add_argument("--items", type=int, default=4_162_024, help="items of the catalog")
    part2.add_argument("--catalog-steps", type=int, default=5, help="training steps of the catalog model")
    part2.add_argument("--length", type=int, default=200, help="L: history items per request")
    part2.add_argument("--candidates", type=int, default=100, help="C: candidates per request")
    part2.add_argument("--zipf", nargs="+", type=float, default=[1.1, 1.3], help="Zipf exponents of the item ids")
    part2.add_argument("--capacities", nargs="+", type=float, default=[0.01, 0.05], help="cache rows, share of V")
    part2.add_argument("--warmup", type=int, default=6_000, help="requests that warm each cache")
    part2.add_argument("--requests", type=int, default=1_000, help="measured requests per cache")
    part2.add_argument("--seed", type=int, default=0, help="seed of the request streams")
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 2 min): DIN only, 200k items")
    return parser


if __name__ == "__main__":
    args = parser().parse_args()
    payload = harness.main(args, "model-exchange", measure, render)
    if args.from_json is None and failures(payload):
        sys.exit(1)
