"""Day-by-day incremental training on the Taobao slice: a model continued day after day (`longrec train
--continue-from`) against one retrained from scratch on every day so far, both scored on the next day's samples.

Data: the Taobao slice (page views; `harness.TAOBAO_SLICE`), its 9 days 2017-11-25 .. 12-03 (Beijing days, UTC+8, the
loader's default window). Protocol T, every behaviour a positive target with one frequency-sampled negative, split by
`split_times`: the store of day d holds the log up to the end of day d + 1, its train split the samples of day d, its
valid split those of day d + 1, its test split nothing (no log after it). Day 1's store has its own vocabulary; the
store of day d > 1 is prepared with `vocab_from` the store of day d - 1 (`longrec prepare --vocab-from`: old ids keep
their numbers, the new ones of the two added days are appended).
- **Continued**: day 1 trains a fresh model; each later day continues the previous day's run (`longrec.run.train(...,
  continue_from=...)`: its last weights and Adam state, the tables grown by the new ids) for `--epochs` epochs of the
  day's train samples.
- **From scratch**: for each day d > 1, a fresh model (same seed) trained `--epochs` epochs on the samples of days 1 ..
  d, from a store of the same log and vocabulary (`vocab_from` the same parent, so the same vocabulary sha) whose train
  split starts at the first day.
- Both are scored on the **valid split of day d's store** (the samples of day d + 1, the same rows for both: the
  scratch model is loaded with that store, `load_run(..., data=...)`), with the weights training ended at: one
  validation per run, at its end, so the best checkpoint is the last one and no checkpoint is picked on the scored
  day. Also reported: the continued run's own progressive validation (`before_training`: the model trained through
  day d on the train split of day d + 1's store, before it trains on it; the same positives as day d's valid split,
  negatives drawn again) and the train seconds of each run on this machine (ratios within this run only).
DIN dim 16 (`harness.PROTOCOL_A`'s), batch `--batch-size`, Adam lr `--lr`, max_history `--max-history`, `--threads`
torch threads, seeds `--seeds` (one chain and one set of scratch runs per seed).

Run:       python benchmarks/bench_incremental.py --update-readme       (23 min on 2 cores at load average 6-8)
Re-render: python benchmarks/bench_incremental.py --from-json benchmarks/results/incremental.json --update-readme
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness as harness
import polars as pl

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.ingest import load_log
from longrec.ingest.alibaba import TAOBAO_WINDOW
from longrec.run import load_run, train

logger = logging.getLogger("bench_incremental")

DAY_S = 86_400


def day_starts() -> list[int]:
    """Epoch seconds of the 10 day boundaries of the slice's 9 days (the loader's window: Beijing midnights)."""
    start, end = TAOBAO_WINDOW
    return list(range(start, end + 1, DAY_S))


def date(t: int) -> str:
    return dt.datetime.fromtimestamp(t + 8 * 3600, dt.UTC).date().isoformat()


def day_store(
    stores: harness.Stores, log: pl.DataFrame, d: int, parent: harness.Store | None, cumulative: bool
) -> harness.Store:
    """The store of day d (1-based): the log up to the end of day d + 1; train = day d (days 1 .. d when
    `cumulative`), valid = day d + 1; ids continued from `parent` (the store of day d - 1)."""
    S = day_starts()
    train_from = S[0] if cumulative else S[d - 1]

    def build(folder: Path) -> dict[str, Any]:
        protocol = ProtocolConfig.for_protocol("T", split_times=(train_from, S[d], S[d + 1]))
        frame = log.filter(pl.col("timestamp") < S[d + 1])
        result = prepare(frame, folder / "store", protocol, source=harness.TAOBAO_SLICE.name, force=True,
                         vocab_from=parent.path if parent else None)  # fmt: skip
        m = result.manifest
        return {"counts": m["counts"], "sizes": m["sizes"], "vocab_sha": m["vocab_sha"],
                "added": m.get("vocab_growth", {}).get("added", {})}  # fmt: skip

    key = {"day": d, "cumulative": cumulative, "parent": parent.info["vocab_sha"] if parent else None}
    return stores.get(f"taobao-day{d}{'-cumulative' if cumulative else ''}", key, build)


def values(store: harness.Store, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    params, search = harness.PROTOCOL_A["DIN"]
    return (
        {f"model.{k}": v for k, v in params.items()}
        | {f"search.{k}": v for k, v in search.items()}
        | {
            "data.path": str(store.path),
            "data.max_history": args.max_history,
            "train.batch_size": args.batch_size,
            "train.lr": args.lr,
            "train.epochs": args.epochs,
            "train.seed": seed,
            "train.threads": args.threads,
            "train.progress": False,
        }
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("longrec").setLevel(logging.WARNING)
    S = day_starts()
    days = len(S) - 1
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-incremental-")))
        stores = harness.Stores(args.cache)
        log = load_log(harness.TAOBAO_SLICE, "taobao", actions=("pv",)).frame.collect()
        chain: list[harness.Store] = []
        scratch: dict[int, harness.Store] = {}
        for d in range(1, days):  # the last day is only scored
            parent = chain[-1] if chain else None
            chain.append(day_store(stores, log, d, parent, cumulative=False))
            if d > 1:
                scratch[d] = day_store(stores, log, d, parent, cumulative=True)
                if scratch[d].info["vocab_sha"] != chain[-1].info["vocab_sha"]:
                    raise AssertionError(f"day {d}: the scratch store's vocabulary differs from the day's")
        rows = []
        for seed in args.seeds:
            previous: Path | None = None
            for d, store in enumerate(chain, start=1):
                logger.info("seed %d day %d: continued", seed, d)
                out = work / f"seed{seed}" / f"day{d}"
                result = train(harness.config_from(values(store, args, seed)), out, force=True,
                               continue_from=previous)  # fmt: skip
                row: dict[str, Any] = {
                    "seed": seed,
                    "day": d,
                    "train_date": date(S[d - 1]),
                    "scored_date": date(S[d]),
                    "train_samples": store.info["counts"]["samples"]["train"],
                    "scored_samples": store.info["counts"]["samples"]["valid"],
                    "new_items": store.info["added"].get("item_id", store.info["sizes"]["num_items"] - 1),
                    "item_rows": store.info["sizes"]["num_items"],
                    "continued": {
                        "auc": result["valid"]["auc"],
                        "logloss": result["valid"]["logloss"],
                        "gauc": result["valid"]["gauc"],
                        "seconds": result["train_seconds"],
                    },
                }
                if "before_training" in result:
                    rows[-1]["progressive_next"] = {
                        k: result["before_training"][k] for k in ("auc", "logloss", "gauc", "count")
                    }
                if d == 1:
                    row["scratch"] = dict(row["continued"])  # day 1: both are one fresh model on day 1
                else:
                    logger.info("seed %d day %d: from scratch", seed, d)
                    scratch_out = work / f"seed{seed}" / f"scratch{d}"
                    trained = harness.train_run(values(scratch[d], args, seed), scratch_out)
                    scored = load_run(scratch_out, data=store.path).evaluate("valid")
                    row["scratch"] = {"auc": scored["auc"], "logloss": scored["logloss"], "gauc": scored["gauc"],
                                      "seconds": trained["train_seconds"],
                                      "train_samples": scratch[d].info["counts"]["samples"]["train"]}  # fmt: skip
                rows.append(row)
                previous = out
    return {"days": days, "rows": rows}


def render(payload: dict[str, Any]) -> str:
    config, rows = payload["config"], payload["rows"]
    seeds = config["seeds"]
    head = (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)}"
    )
    setup = (
        f"Taobao slice (page views), Protocol T by day (Beijing days); DIN dim 16, batch {config['batch_size']}, Adam "
        f"lr {config['lr']}, max_history {config['max_history']}, {config['epochs']} epoch(s) per run, seed(s) "
        f"{', '.join(map(str, seeds))} (mean over seeds where several). Each row: the models trained through the "
        "train day, scored on the next day's samples (the same rows for both). Continued = day 1's run continued "
        "day by day (`--continue-from`, Adam state carried, tables grown by the new ids); from scratch = a fresh "
        "model trained on every day so far. Progressive = the continued model's own `before_training` AUC on the "
        "next day's train split (same positives, negatives drawn again). Seconds = train time of the run."
    )
    by_day: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(row["day"], []).append(row)

    def mean(rs: list[dict[str, Any]], *path: str) -> float:
        out = []
        for r in rs:
            value: Any = r
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                out.append(float(value))
        return statistics.fmean(out) if out else float("nan")

    table = []
    for day, rs in sorted(by_day.items()):
        r0 = rs[0]
        cont, scr = mean(rs, "continued", "auc"), mean(rs, "scratch", "auc")
        prog = mean(rs, "progressive_next", "auc")
        table.append(
            [
                f"{r0['train_date']} ({day})",
                r0["scored_date"],
                f"{r0['train_samples']:,} / {r0['scratch'].get('train_samples', r0['train_samples']):,}",
                f"{r0['scored_samples']:,}",
                f"{r0['new_items']:,} ({r0['item_rows']:,})",
                f"{cont:.4f}",
                f"{scr:.4f}",
                f"{cont - scr:+.4f}",
                "—" if prog != prog else f"{prog:.4f}",
                f"{mean(rs, 'continued', 'logloss'):.4f} / {mean(rs, 'scratch', 'logloss'):.4f}",
                f"{mean(rs, 'continued', 'seconds'):.1f} / {mean(rs, 'scratch', 'seconds'):.1f}",
            ]
        )
    later = [r for r in rows if r["day"] > 1]
    summary = (
        f"Days 2 .. {payload['days'] - 1} (scored on days 3 .. {payload['days']}): mean AUC continued "
        f"{mean(later, 'continued', 'auc'):.4f}, from scratch {mean(later, 'scratch', 'auc'):.4f}; train time "
        f"continued / from scratch, summed: "
        f"{sum(r['continued']['seconds'] for r in later) / sum(r['scratch']['seconds'] for r in later):.2f}x."
    )
    markdown = harness.markdown_table(
        ["train day", "scored day", "train samples (continued / scratch)", "scored samples",
         "new item ids (item rows)", "AUC continued", "AUC from scratch", "continued - scratch",
         "progressive AUC (continued)", "logloss continued / scratch", "train s continued / scratch"],
        table,
    )  # fmt: skip
    return "\n\n".join([head, setup, markdown, summary])


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "incremental", seeds=[0], threads=2, scratch=True)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (continued: of the day; scratch: of all)")
    parser.add_argument("--batch-size", type=int, default=512, help="training batch")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--max-history", type=int, default=100, help="data.max_history")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "incremental", measure, render)
