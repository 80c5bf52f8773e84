"""`longrec` command line: synth, prepare, import-samples, train, eval, cascade, summarise, export, serve, demo,
analyze, compact, config.

Results go to stdout; progress and logs go to stderr. An error prints one line and exits 2 (the traceback only
with --debug).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from longrec import commands

__all__ = ["main"]

EXAMPLES = {
    "synth": """examples:
  longrec synth --out data/synth-raw
  longrec synth --out data/tiny --set num_users=100 --set events_per_user=50 --set mechanisms='["a", "d"]'
  longrec synth --out data/long --set num_users=4 --set events_per_user=100000""",
    "prepare": """examples:
  longrec prepare data/synth-raw --format synthetic --out data/synth
  longrec prepare ../shared/data/taobao_userbehavior/UserBehavior_927users.csv.gz --format taobao \\
      --option actions='["pv"]' --protocol A --set min_behaviours=50 --out data/taobao-A
  longrec prepare ../shared/data/movielens_latest_small/ratings.csv.gz --format movielens \\
      --option movies=../shared/data/movielens_latest_small/movies.csv --protocol B --out data/ml-B
  longrec prepare log.parquet --format parquet --out data/mine \\
      --option mapping='{user_id = "uid", item_id = "iid", timestamp = "ts"}'
  # several sources -> one trajectory per user, categories mapped onto one taxonomy (docs/unify.md):
  longrec prepare --source tests/ingest/fixtures/unify/ads.csv:csv:ad:feed \\
      --source tests/ingest/fixtures/unify/content.csv:csv:content:video \\
      --taxonomy-map tests/ingest/fixtures/unify/taxonomy_map.csv --out data/unified
  longrec prepare data/synth-raw --format synthetic --taxonomy-map data/synth-raw/taxonomy_map.csv --out data/synth
  longrec prepare --sources tests/ingest/fixtures/unify/taobao_scenes.toml --out data/taobao-scenes
  # the next day's store, continuing day 1's ids (new ids appended), train = day 2, valid = day 3:
  longrec prepare day3.csv --format csv --vocab-from data/day1 \\
      --set 'split_times=[1700092800, 1700179200, 1700265600]' --out data/day2
  # user-hash shards, each a store with the whole log's ids (docs/data.md); shards.json once all exist:
  longrec prepare log.parquet --format parquet --shards 4 --out data/sharded
  longrec prepare log.parquet --format parquet --shards 64 --shard $SLURM_ARRAY_TASK_ID --out data/sharded""",
    "import-samples": """examples:
  longrec import-samples --train train.parquet --valid valid.parquet --test test.parquet --out data/interop
  longrec train configs/din_synthetic.toml --out runs/din-interop --set data.path=data/interop
  longrec import-samples --train tr.parquet --valid va.parquet --test te.parquet --ids map --out data/mapped""",
    "train": """examples:
  longrec train configs/din_synthetic.toml --out runs/din
  longrec train configs/din_synthetic.toml --out runs/din-32 --set model.dim=32 --set train.epochs=3
  longrec train configs/din_synthetic.toml --out runs/din --resume      # continue a killed run
  longrec train configs/din_synthetic.toml --out runs/din-ddp --nproc 2  # 2 data-parallel ranks (torchrun)
  torchrun --nproc-per-node 2 -m longrec.train configs/din_synthetic.toml --out runs/din-ddp   # the same
  # train.batch_size is the global batch: each of N ranks trains on 1/N of it; --resume may change N
  # day by day: day 2's store continues day 1's ids (prepare --vocab-from), the run continues day 1's run
  longrec train configs/din_synthetic.toml --out runs/day2 --continue-from runs/day1 --set data.path=data/day2""",
    "eval": """examples:
  longrec eval runs/din --split test
  longrec eval runs/din --split valid --data data/synth
  longrec eval runs/sasrec --retrieval --n 10,50,200             # Recall@N, NDCG@N against a candidate pool
  longrec eval runs/sasrec --retrieval --pool uniform --pool-size 5000 --pool-seed 1""",
    "cascade": """examples:
  longrec cascade runs/td-sasrec runs/dare --out reports/cascade            # M = 50, 200; K = 10, 50
  longrec cascade runs/td-sasrec runs/dare --m 10,50,200,1000 --k 10 --pool-size 2000 --out reports/m-sweep
  longrec cascade runs/mean-tower runs/tin --pool uniform --pool-items train_targets --out reports/c2 --force
  # the same settings for both pre-rankers compare them on the same pool:
  longrec cascade runs/sasrec-bce runs/dare --m 50,200 --out reports/bce
  longrec cascade runs/sasrec-softmax runs/dare --m 50,200 --out reports/softmax""",
    "export": """examples:
  longrec export runs/din --out models/din                   # the serving artifact (docs/serving.md)
  longrec export runs/din-day2 --delta-from models/din --out deltas/day2   # only what changed""",
    "summarise": """examples:
  longrec summarise runs/vista --out data/vista-summaries                          # the run's window
  longrec summarise runs/vista --out data/vista-summaries --max-history 100000 --force
  longrec train configs/vista_synthetic.toml --out runs/vista-2 --set data.summaries=data/vista-summaries""",
    "demo": """examples:
  longrec demo                       # synthetic data -> prepare -> DIN vs mean pooling, into demo_out/
  longrec demo --out /tmp/demo --users 1000""",
    "analyze": """examples:
  longrec analyze runs/din                     # PNGs + analysis.json into runs/din/plots/
  longrec analyze runs/tin-tdpe --split test --samples 8192 --out /tmp/tin-plots""",
    "serve": """examples:
  longrec serve runs/din --port 8000                 # a run directory: its store is the history base
  longrec serve models/din --store data/synth --history-log serving/history.sqlite
  longrec serve models/din --store data/synth --redis redis://127.0.0.1:6379/0   # histories shared in Redis
  curl -s localhost:8000/v1/score -d '{"user": 105, "candidates": [{"item": 7}]}'""",
    "compact": """examples:
  longrec compact data/synth --log serving/history.sqlite --out data/synth-c1
  longrec compact data/synth-c1 --out data/synth-c2      # a compacted folder holds its own log""",
    "content": """examples:
  longrec content add data/ml --from item_text.parquet --modality text      # item_id + a list<float> column
  longrec content text data/ml --movielens movielens_latest_small --modality text --dim 64 --missing zero""",
    "config": """examples:
  longrec config configs/din_synthetic.toml
  longrec config configs/din_synthetic.toml --set model.dim=32 --set train.lr=0.01""",
}


def build_parser() -> argparse.ArgumentParser:
    """The `longrec` argument parser (one subcommand per stage)."""
    from longrec.version import __version__

    parser = argparse.ArgumentParser(
        prog="longrec",
        description="Long user-behaviour-sequence modeling: prepare logs, train and evaluate CTR models.",
        epilog="Run 'longrec COMMAND --help' for a command's options and examples. Start with 'longrec demo'.",
    )
    parser.add_argument("--version", action="version", version=f"longrec {__version__}")
    after = argparse.ArgumentParser(add_help=False)  # the same flags, accepted after the command too
    _add_global_flags(parser, False)
    _add_global_flags(after, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[after],
        )

    p = add("synth", "Generate a synthetic multi-domain behaviour log with planted mechanisms and ground truth.")
    p.add_argument(
        "--out", required=True, help="output folder (log.parquet, truth.parquet, ...): new, empty or a previous log"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it holds a previous synthetic log")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a SyntheticConfig field")
    p.set_defaults(func=commands.synth)

    from longrec.data.protocols import PROTOCOLS
    from longrec.ingest import LOADERS

    p = add("prepare", "Check a behaviour log, build dense ids and the trajectory store, and cut protocol samples.")
    p.add_argument(
        "input", nargs="?", default=None, help="the log file (or a 'longrec synth' directory with --format synthetic)"
    )
    p.add_argument("--format", default=None, choices=sorted(LOADERS), help="the input format (required with INPUT)")
    p.add_argument(
        "--out",
        required=True,
        help="the store folder: new, empty, or a previous store (with --force); with --shards, the shards' folder",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT (atomically) if it holds a previous store (with --shards: a shard)",
    )
    p.add_argument(
        "--protocol", default="T", choices=PROTOCOLS, help="A: DARE, B: leave-last-out, T: by time (default)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a protocol option, e.g. min_behaviours=50"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a loader option (a TOML value), e.g. actions='[\"pv\"]'",
    )
    p.add_argument("--extra-fields", default=None, help="comma-separated extra id columns to keep (default: all)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="PATH:FORMAT[:DOMAIN[:SCENE]]",
        help="one more behaviour source to merge into the users' trajectories (repeatable; docs/unify.md)",
    )
    p.add_argument("--sources", default=None, metavar="TOML", help="a file of [[source]] tables with loader options")
    p.add_argument(
        "--taxonomy-map", default=None, metavar="FILE", help="CSV/Parquet: domain, source_category, cat_1..cat_M"
    )
    p.add_argument("--taxonomy-levels", type=int, default=None, metavar="M", help="unified depth (default: the map's)")
    p.add_argument(
        "--vocab-from",
        default=None,
        metavar="STORE_OR_RUN",
        help="continue this store's (or run's store's) ids: old ids keep their numbers, new ones are appended "
        "(day-by-day training; docs/incremental.md)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="split the log into N user-hash shards, each a store OUT/shard-0000I-of-0000N; OUT/shards.json lists "
        "them, written when all are present; vocabularies (and Protocol T's split times) come from the whole log, "
        "so the shards number ids alike (docs/data.md)",
    )
    p.add_argument(
        "--shard",
        type=int,
        default=None,
        metavar="I",
        help="with --shards N: prepare only shard I (0 .. N-1), as one task of a job array; the call that finds all "
        "N shards present writes OUT/shards.json",
    )
    p.set_defaults(func=commands.prepare)

    p = add(
        "import-samples",
        "Import already-built samples (Parquet: user, target_item, target_cat, label, hist_items, hist_cats, "
        "optional hist_ts/target_ts) as a prepared store, to compare with other implementations on identical files.",
    )
    p.add_argument("--train", required=True, help="Parquet file of training samples")
    p.add_argument("--valid", required=True, help="Parquet file of validation samples")
    p.add_argument("--test", required=True, help="Parquet file of test samples")
    p.add_argument("--out", required=True, help="the store folder: new, empty, or a previous store (with --force)")
    p.add_argument("--force", action="store_true", help="replace OUT (atomically) if it holds a previous store")
    p.add_argument(
        "--ids",
        default="auto",
        choices=("auto", "keep", "map"),
        help="auto: keep integer item/category ids, map strings (default); keep: integers only; map: map every id",
    )
    p.set_defaults(func=commands.import_samples)

    p = add("train", "Train a model from a TOML experiment config; writes a run directory.")
    p.add_argument("config", help="experiment TOML (see configs/)")
    p.add_argument("--out", required=True, help="run directory: new, empty, or a previous run (--force / --resume)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override (a TOML value), e.g. train.lr=0.01"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its last.pt (config changes are checked)"
    )
    p.add_argument("--force", action="store_true", help="replace a previous run in OUT")
    p.add_argument(
        "--continue-from",
        default=None,
        metavar="RUN",
        help="start from RUN's last weights and Adam state (day-by-day training): data.path must be RUN's store or "
        "one prepared with --vocab-from it (tables grow by the new ids); scores the new train split first "
        "(progressive validation); docs/incremental.md",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel ranks on this machine, launched with torchrun over loopback (gloo on the CPU, NCCL on "
        "CUDA); train.batch_size stays the global batch (default: 1, no torchrun)",
    )
    p.set_defaults(func=commands.train)

    p = add(
        "eval",
        "Score a trained run's best checkpoint on a split (AUC, GAUC, logloss, per goal and per scene; with "
        "--retrieval, Recall@N and NDCG@N of its positives against a candidate pool); writes RUN/eval_SPLIT.json "
        "(RUN/eval_SPLIT_retrieval.json).",
    )
    p.add_argument("run", help="run directory written by 'longrec train'")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    retrieval = p.add_argument_group("pre-ranking (--retrieval): each positive ranked against a candidate pool")
    retrieval.add_argument(
        "--retrieval",
        action="store_true",
        help="Recall@N and NDCG@N instead of AUC; writes RUN/eval_SPLIT_retrieval.json",
    )
    retrieval.add_argument("--n", default="50,200", help="cut-offs N, comma-separated (default: %(default)s)")
    retrieval.add_argument(
        "--pool",
        default="popularity",
        choices=("all", "uniform", "popularity"),
        help="pool sampler (default: %(default)s)",
    )
    retrieval.add_argument("--pool-size", type=int, default=1000, help="items drawn (default: %(default)s)")
    retrieval.add_argument("--pool-seed", type=int, default=0, help="seed of the draw (default: %(default)s)")
    retrieval.add_argument(
        "--pool-items",
        default="all",
        choices=("all", "train_targets"),
        help="draw from every item or from the train split's targets (default: %(default)s)",
    )
    p.set_defaults(func=commands.eval)

    p = add(
        "cascade",
        "Pre-rank each test positive's candidate pool with one run, keep its top M, rank those with another run: "
        "end-to-end Recall@K and NDCG@K, the pre-ranker's survival rate, the ranker's quality on what reaches it, "
        "against the ranker alone on the whole pool (docs/cascade.md); writes OUT/cascade.json.",
    )
    p.add_argument("prerank", help="the pre-ranking run directory (e.g. TD-SASRec or its mean tower; any model)")
    p.add_argument("rank", help="the ranking run directory (any model), trained on the same store")
    p.add_argument("--out", required=True, help="report folder: new, empty, or a previous cascade report (--force)")
    p.add_argument("--force", action="store_true", help="replace a previous cascade report in OUT")
    p.add_argument(
        "--m", default="50,200", help="candidates passed to the ranker, comma-separated (default: %(default)s)"
    )
    p.add_argument("--k", default="10,50", help="end-to-end cut-offs K, comma-separated (default: %(default)s)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the ranker's)")
    p.add_argument(
        "--no-sample-auc",
        action="store_true",
        help="skip the ranker's AUC on the samples that survive (it pre-ranks every sample, not only the positives)",
    )
    pool = p.add_argument_group("the candidate pool (as in 'longrec eval --retrieval')")
    pool.add_argument(
        "--pool", default="popularity", choices=("all", "uniform", "popularity"), help="sampler (default: %(default)s)"
    )
    pool.add_argument("--pool-size", type=int, default=1000, help="items drawn (default: %(default)s)")
    pool.add_argument("--pool-seed", type=int, default=0, help="seed of the draw (default: %(default)s)")
    pool.add_argument(
        "--pool-items",
        default="all",
        choices=("all", "train_targets"),
        help="draw from every item or from the train split's targets (default: %(default)s)",
    )
    p.set_defaults(func=commands.cascade)

    p = add(
        "analyze",
        "Draw where a trained model attends (per goal, per field group), which fields drive its attention (DSI-TIN) "
        "and what search kept, as PNGs.",
    )
    p.add_argument("run", help="run directory written by 'longrec train'")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    p.add_argument("--samples", type=int, default=4096, help="samples to analyse (default: 4096)")
    p.add_argument("--out", default=None, help="output folder: new, empty or a previous analysis (default: RUN/plots)")
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    p.set_defaults(func=commands.analyze)

    p = add("export", "Export a run's best model as a versioned serving artifact, or as a delta on top of one.")
    p.add_argument("run", help="run directory written by 'longrec train'")
    p.add_argument("--out", required=True, help="artifact (or delta) folder: new, empty, or a previous one (--force)")
    p.add_argument("--force", action="store_true", help="replace a previous artifact (or delta) in OUT")
    p.add_argument("--delta-from", default=None, metavar="MODEL_DIR", help="write only what changed since this one")
    p.add_argument("--version", default=None, help="a version id instead of the derived LINEAGE-SHA8")
    p.add_argument("--parent", default=None, metavar="MODEL_DIR", help="the version this one follows")
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    p.set_defaults(func=commands.export)

    p = add(
        "summarise",
        "Store every sample's user state (VISTA's summaries of its history before the cutoff) computed by a run's "
        "best model, for stage-2 training with data.summaries (docs/ultra_long.md).",
    )
    p.add_argument("run", help="run directory of a VISTA or VQL model ('longrec train')")
    p.add_argument("--out", required=True, help="summary store folder: new, empty, or a previous one (--force)")
    p.add_argument("--max-history", type=int, default=None, help="history window (default: the run's max_history)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per user_state call (default: 64)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored dtype (default: float16)")
    p.add_argument("--force", action="store_true", help="replace a previous summary store in OUT")
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    p.set_defaults(func=commands.summarise)

    p = add("demo", "Synthetic data -> prepare -> train DIN and mean pooling -> comparison table + summary.json.")
    p.add_argument(
        "--out", default="demo_out", help="output folder: new, empty or a previous demo's, replaced (default: demo_out)"
    )
    p.add_argument("--users", type=int, default=None, help="synthetic users (default: the demo's size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=commands.demo)

    p = add(
        "serve",
        "Serve a model over HTTP (FastAPI): score candidates for a user from the history store, append behaviours, "
        "swap model versions without dropping requests (docs/serving.md).",
    )
    p.add_argument("model", help="a serving artifact ('longrec export') or a run directory ('longrec train')")
    p.add_argument("--store", default=None, help="the prepared store histories come from (default: the run's)")
    p.add_argument(
        "--history-log", default=None, help="SQLite append log of new behaviours (default: ./serving-history.sqlite)"
    )
    p.add_argument(
        "--redis", default=None, metavar="URL", help="append behaviours to Redis instead (shared by servers)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-candidates", type=int, default=1000, help="candidates per request at most (default: 1000)")
    p.add_argument("--max-body-mb", type=int, default=8, help="request body size limit in MiB (default: 8)")
    p.add_argument(
        "--embedding-cache",
        type=int,
        default=0,
        metavar="ROWS",
        help="serve the big embedding tables from disk with this many hot rows in memory (default: off)",
    )
    p.set_defaults(func=commands.serve)

    p = add(
        "compact",
        "Fold a serving history's append log into a new store with the same vocabulary (and a new log), then seal "
        "the old log.",
    )
    p.add_argument("history", help="the prepared store (with --log), or a folder written by 'longrec compact'")
    p.add_argument("--log", default=None, help="the SQLite append log of the store (default: the folder's own)")
    p.add_argument("--out", required=True, help="output folder: new, empty, or a previous compaction (with --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it holds a previous compaction")
    p.set_defaults(func=commands.compact)

    commands.content_arguments(add("content", "Add item content vectors (one modality) beside a prepared store."))

    p = add("config", "Print the resolved experiment config, or every problem in it.")
    p.add_argument("config", nargs="?", default=None, help="experiment TOML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=commands.config)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """--debug/--quiet before the command (default False) and after it (SUPPRESS: absent keeps the first's value)."""
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress display or info logs")


class _PlainFormatter(logging.Formatter):
    """Log lines without a terminal: the message, with 'warning:'/'error:' in front of those levels."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _log_handler(level: int) -> logging.Handler:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        return RichHandler(console=Console(stderr=True), show_path=False, show_time=False, level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    return handler


def _os_message(err: OSError) -> str:
    """One line for a file-system failure: what failed, on which file, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    what = err.strerror or str(err)
    hints = {
        errno.ENOSPC: "free some space or write to another folder",
        errno.EDQUOT: "free some space or write to another folder",
        errno.EACCES: "check the folder's permissions or write somewhere else",
        errno.EPERM: "check the folder's permissions or write somewhere else",
        errno.EROFS: "the file system is read-only: write somewhere else",
    }
    hint = hints.get(err.errno or 0)
    return f"{what}:{where}" + (f" ({hint})." if hint else ".")


def _resume_hint(args: argparse.Namespace, argv: Sequence[str]) -> str:
    if getattr(args, "command", None) != "train":
        return "interrupted. Outputs are written atomically: nothing half-written was left behind."
    again = [a for a in argv if a not in ("--resume", "--force")]
    return f"interrupted. Continue the run with: longrec {' '.join(again)} --resume"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `longrec` command.

    The error boundary: a failure the user can fix (bad config, data, files, a full disk, a locked or foreign
    folder, a diverged run) prints one `error: ...` line and exits 2; Ctrl-C exits 130 (train says how to resume);
    `--debug` shows the traceback instead. Anything else is a bug of ours and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    # Logs go to stderr (results alone on stdout). The handler filters by verbosity; the root logger passes INFO on,
    # so a run's log.txt (a file handler added by `train`) gets INFO lines even under --quiet.
    logging.basicConfig(
        level=min(level, logging.INFO), format="%(message)s", handlers=[_log_handler(level)], force=True
    )
    try:
        code: int = args.func(args)
        return code
    except BrokenPipeError:
        # `longrec eval RUN | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\n{_resume_hint(args, argv)}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, TypeError, OSError, ImportError) as err:
        if args.debug:
            raise
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | NotADirectoryError):
            message = _os_message(err)
        elif isinstance(err, KeyError):
            message = str(err.args[0]) if err.args else "KeyError"
        elif isinstance(err, ValueError | FileNotFoundError | NotADirectoryError):
            message = str(err)
        else:
            message = f"{type(err).__name__}: {err}"
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
