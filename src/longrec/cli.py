"""`longrec` command line: synth, prepare, import-samples, train, eval, export, demo, config.

Results go to stdout; progress and logs go to stderr. An error prints one line and exits 2 (the traceback only
with --debug).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
  longrec prepare --sources tests/ingest/fixtures/unify/taobao_scenes.toml --out data/taobao-scenes""",
    "import-samples": """examples:
  longrec import-samples --train train.parquet --valid valid.parquet --test test.parquet --out data/interop
  longrec train configs/din_synthetic.toml --out runs/din-interop --set data.path=data/interop
  longrec import-samples --train tr.parquet --valid va.parquet --test te.parquet --ids map --out data/mapped""",
    "train": """examples:
  longrec train configs/din_synthetic.toml --out runs/din
  longrec train configs/din_synthetic.toml --out runs/din-32 --set model.dim=32 --set train.epochs=3
  longrec train configs/din_synthetic.toml --out runs/din --resume      # continue a killed run""",
    "eval": """examples:
  longrec eval runs/din --split test
  longrec eval runs/din --split valid --data data/synth""",
    "export": """examples:
  longrec export runs/din --out models/din                   # the serving artifact (docs/serving.md)
  longrec export runs/din-day2 --delta-from models/din --out deltas/day2   # only what changed""",
    "demo": """examples:
  longrec demo                       # synthetic data -> prepare -> DIN vs mean pooling, into demo_out/
  longrec demo --out /tmp/demo --users 1000""",
    "analyze": """examples:
  longrec analyze runs/din                     # PNGs + analysis.json into runs/din/plots/
  longrec analyze runs/tin-tdpe --split test --samples 8192 --out /tmp/tin-plots""",
    "config": """examples:
  longrec config configs/din_synthetic.toml
  longrec config configs/din_synthetic.toml --set model.dim=32 --set train.lr=0.01""",
}


def _console() -> Any:
    from rich.console import Console

    return Console()


def _print_metrics_table(rows: list[tuple[str, dict[str, Any]]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "split", "AUC", "GAUC (user)", "GAUC (category)", "logloss", "samples"):
        table.add_column(col, justify="right" if col not in ("model", "split") else "left")
    for name, metrics in rows:
        for split in ("valid", "test"):
            m = metrics[split]
            table.add_row(
                name,
                split,
                f"{m['auc']:.4f}",
                f"{m['gauc']:.4f}",
                f"{m.get('gauc_category', float('nan')):.4f}",
                f"{m['logloss']:.4f}",
                f"{m['count']:,}",
            )
    _console().print(table)


def _cmd_config(args: argparse.Namespace) -> int:
    from longrec.config import load_config

    print(load_config(args.config, args.set).to_json(), end="")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from longrec.files import SYNTHETIC, check_output
    from longrec.ingest.synthetic import SyntheticConfig, generate
    from longrec.settings import ConfigError, fill_dataclass, parse_overrides

    problems: list[str] = []
    cfg = fill_dataclass(SyntheticConfig, parse_overrides(args.set), "", problems)
    if cfg is None:
        raise ConfigError(problems, "--set")
    check_output(args.out, SYNTHETIC, args.force)  # before the work: a refused --out costs nothing
    started = time.perf_counter()
    synthetic = generate(cfg, progress=not args.quiet)
    synthetic.write(Path(args.out), force=args.force)
    log = synthetic.log
    impressions = int(log["label"].is_not_null().sum()) if "label" in log.columns else 0
    print(
        f"wrote {args.out}: {log['user_id'].n_unique():,} users, {log.height - impressions:,} behaviours, "
        f"{impressions:,} labelled impressions in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from longrec.ingest import load_log
    from longrec.settings import parse_overrides

    options = parse_overrides(args.option) if args.option else {}
    loaded = load_log(args.input, args.format, **options)
    return loaded.frame, loaded.report, loaded.source


def _unify(args: argparse.Namespace) -> tuple[Any, Any, str, Any]:
    """INPUT (if any), the --sources file and every --source, merged by `longrec.ingest.unify`."""
    from longrec.ingest.sources import SourceSpec, parse_source, read_sources_file
    from longrec.ingest.unify import unify
    from longrec.settings import parse_overrides

    specs, taxonomy_map, levels = [], args.taxonomy_map, args.taxonomy_levels
    if args.input is not None:
        specs.append(SourceSpec(args.input, args.format, parse_overrides(args.option) if args.option else {}))
    if args.sources is not None:
        listed = read_sources_file(args.sources)
        specs += listed.sources
        taxonomy_map = taxonomy_map if taxonomy_map is not None else listed.taxonomy_map
        levels = levels if levels is not None else listed.taxonomy_levels
    specs += [parse_source(text) for text in args.source]
    unified = unify([spec.load() for spec in specs], taxonomy_map, levels)
    return unified.frame, unified.report, " + ".join(spec.path for spec in specs), unified.coverage


def _cmd_prepare(args: argparse.Namespace) -> int:
    from longrec.data.prepare import prepare
    from longrec.data.protocols import ProtocolConfig
    from longrec.files import STORE, check_output
    from longrec.settings import ConfigError, fill_dataclass, parse_overrides

    problems: list[str] = []
    protocol = fill_dataclass(ProtocolConfig, {"name": args.protocol}, "protocol.", problems)
    if protocol is not None:
        overrides = parse_overrides(args.set)
        base = ProtocolConfig.for_protocol(args.protocol)
        import dataclasses

        protocol = fill_dataclass(ProtocolConfig, {**dataclasses.asdict(base), **overrides}, "protocol.", problems)
    if protocol is None:
        raise ConfigError(problems, "prepare options")
    check_output(args.out, STORE, args.force)  # before loading: a refused --out costs nothing
    if args.input is not None and args.format is None:
        raise ValueError("prepare INPUT needs --format (one of the loader formats, e.g. --format taobao).")
    if args.option and args.input is None:
        raise ValueError("--option sets INPUT's loader options; give per-source options in a --sources file.")
    coverage = None
    if args.source or args.sources is not None or args.taxonomy_map is not None or args.taxonomy_levels is not None:
        frame, report, source, coverage = _unify(args)
    elif args.input is None:
        raise ValueError("prepare needs a log: INPUT --format FORMAT, or --source PATH:FORMAT[:DOMAIN[:SCENE]].")
    else:
        frame, report, source = _load(args)
    extra = tuple(args.extra_fields.split(",")) if args.extra_fields is not None else None
    sections = {"taxonomy_coverage": coverage.to_dict()} if coverage is not None else None
    result = prepare(
        frame,
        args.out,
        protocol,
        source=source,
        load_report=report,
        extra_fields=extra,
        extra_manifest=sections,
        force=args.force,
    )
    print("\n".join(result.lines() + (coverage.lines() if coverage is not None else [])))
    return 0


def _cmd_import_samples(args: argparse.Namespace) -> int:
    from longrec.data.interop import import_samples

    result = import_samples(args.train, args.valid, args.test, args.out, ids=args.ids, force=args.force)
    print("\n".join(result.lines()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from longrec.config import load_config
    from longrec.run import train

    overrides = list(args.set)
    if args.quiet:
        overrides.append("train.progress=false")
    if args.debug:
        overrides.append("data.check_batches=true")
    config = load_config(args.config, overrides)
    result = train(config, args.out, resume=args.resume, force=args.force)
    _print_metrics_table([(config.model.name, result)], f"{config.model.name}: best step {result['best_step']}")
    print(f"run directory: {args.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from longrec.files import dumps_json, lock_directory, write_json
    from longrec.run import load_run

    run = load_run(args.run, args.data)
    with lock_directory(run.path, "run directory"):
        metrics = run.evaluate(args.split, progress=not args.quiet)
        write_json(run.path / f"eval_{args.split}.json", metrics)
    print(dumps_json(metrics), end="")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from longrec.run import analyze_run

    result = analyze_run(args.run, args.out, split=args.split, samples=args.samples, data=args.data)
    for path in result["files"]:
        print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from longrec.run import load_run
    from longrec.serve.delta import export

    print(export(load_run(args.run, args.data), args.out, args.force, args.version, args.parent, args.delta_from))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from longrec.demo import run_demo

    summary = run_demo(Path(args.out), users=args.users, seed=args.seed, progress=not args.quiet)
    rows = [(name, summary["runs"][name]) for name in summary["runs"]]
    _print_metrics_table(rows, f"longrec demo: synthetic data ({summary['data']['samples']})")
    print(summary["verdict"])
    print(f"summary: {Path(args.out) / 'summary.json'} ({summary['seconds']:.0f}s)")
    return 0


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
    p.set_defaults(func=_cmd_synth)

    from longrec.data.protocols import PROTOCOLS
    from longrec.ingest import LOADERS

    p = add("prepare", "Check a behaviour log, build dense ids and the trajectory store, and cut protocol samples.")
    p.add_argument(
        "input", nargs="?", default=None, help="the log file (or a 'longrec synth' directory with --format synthetic)"
    )
    p.add_argument("--format", default=None, choices=sorted(LOADERS), help="the input format (required with INPUT)")
    p.add_argument("--out", required=True, help="the store folder: new, empty, or a previous store (with --force)")
    p.add_argument("--force", action="store_true", help="replace OUT (atomically) if it holds a previous store")
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
    p.set_defaults(func=_cmd_prepare)

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
    p.set_defaults(func=_cmd_import_samples)

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
    p.set_defaults(func=_cmd_train)

    p = add("eval", "Score a trained run's best checkpoint on a split; writes RUN/eval_SPLIT.json.")
    p.add_argument("run", help="run directory written by 'longrec train'")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    p.set_defaults(func=_cmd_eval)

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
    p.set_defaults(func=_cmd_analyze)

    p = add("export", "Export a run's best model as a versioned serving artifact, or as a delta on top of one.")
    p.add_argument("run", help="run directory written by 'longrec train'")
    p.add_argument("--out", required=True, help="artifact (or delta) folder: new, empty, or a previous one (--force)")
    p.add_argument("--force", action="store_true", help="replace a previous artifact (or delta) in OUT")
    p.add_argument("--delta-from", default=None, metavar="MODEL_DIR", help="write only what changed since this one")
    p.add_argument("--version", default=None, help="a version id instead of the derived LINEAGE-SHA8")
    p.add_argument("--parent", default=None, metavar="MODEL_DIR", help="the version this one follows")
    p.add_argument("--data", default=None, help="a prepared store with the same vocabulary (default: the run's)")
    p.set_defaults(func=_cmd_export)

    p = add("demo", "Synthetic data -> prepare -> train DIN and mean pooling -> comparison table + summary.json.")
    p.add_argument(
        "--out", default="demo_out", help="output folder: new, empty or a previous demo's, replaced (default: demo_out)"
    )
    p.add_argument("--users", type=int, default=None, help="synthetic users (default: the demo's size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = add("config", "Print the resolved experiment config, or every problem in it.")
    p.add_argument("config", nargs="?", default=None, help="experiment TOML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_config)
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
