"""What each `longrec` command does, once `longrec.cli` has parsed its arguments: one function per command.

Each takes the parsed `argparse.Namespace` and returns the exit code; errors are raised, and the CLI's error boundary
(`longrec.cli.main`) turns the ones a user can fix into one line. Imports stay inside the functions, so `longrec --help`
does not load torch.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

__all__ = [
    "analyze",
    "cascade",
    "compact",
    "config",
    "content",
    "demo",
    "eval",
    "export",
    "import_samples",
    "prepare",
    "print_metrics_table",
    "serve",
    "summarise",
    "synth",
    "train",
]


def console() -> Any:
    from rich.console import Console

    return Console()


def print_metrics_table(rows: list[tuple[str, dict[str, Any]]], title: str) -> None:
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
    console().print(table)


def print_before_training(result: dict[str, Any]) -> None:
    """The progressive validation of a continued run: the incoming model on the new window, before training."""
    before, start = result["before_training"], result["continued_from"]
    grown = ", ".join(f"{name} +{b - a:,} rows" for name, (a, b) in start["grown"].items()) or "no table grew"
    print(
        f"continued from {start['path']} (step {start['step']}; {grown}); on the new {before['split']} split before "
        f"training: AUC {before['auc']:.4f}, logloss {before['logloss']:.4f} ({before['count']:,} samples)"
    )


def config(args: argparse.Namespace) -> int:
    from longrec.config import load_config

    print(load_config(args.config, args.set).to_json(), end="")
    return 0


def synth(args: argparse.Namespace) -> int:
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


def prepare(args: argparse.Namespace) -> int:
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
    if args.shard is not None and args.shards is None:
        raise ValueError(f"--shard {args.shard} needs --shards N, the number of shards the log is split into.")
    if args.shards is not None:
        from longrec.data.shards import check_out, check_shard_args

        check_shard_args(args.shards, args.shard)
        check_out(args.out, args.shards, args.shard, args.force)  # before loading: a refused --out costs nothing
    else:
        check_output(args.out, STORE, args.force)
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
    if args.shards is not None:
        from longrec.data.shards import prepare_shards

        sharded = prepare_shards(
            frame,
            args.out,
            protocol,
            args.shards,
            shard=args.shard,
            source=source,
            load_report=report,
            extra_fields=extra,
            extra_manifest=sections,
            force=args.force,
            vocab_from=_store_of(args.vocab_from) if args.vocab_from is not None else None,
        )
        print("\n".join(sharded.lines()))
        return 0
    result = prepare(
        frame,
        args.out,
        protocol,
        source=source,
        load_report=report,
        extra_fields=extra,
        extra_manifest=sections,
        force=args.force,
        vocab_from=_store_of(args.vocab_from) if args.vocab_from is not None else None,
    )
    print("\n".join(result.lines() + (coverage.lines() if coverage is not None else [])))
    return 0


def _store_of(path: str) -> Path:
    """The store folder of `path`: a prepared store, or a run directory (the store it was trained on)."""
    from longrec.run.directory import locate_store, read_run_config

    folder = Path(path)
    if (folder / "manifest.json").is_file():
        return folder
    if (folder / "config.json").is_file():
        config, info = read_run_config(folder)
        return locate_store(folder, config, info).root
    raise FileNotFoundError(
        f"--vocab-from {path}: expected a prepared store (with manifest.json) or a run directory (with config.json), "
        "found neither."
    )


def import_samples(args: argparse.Namespace) -> int:
    from longrec.data.interop import import_samples

    result = import_samples(args.train, args.valid, args.test, args.out, ids=args.ids, force=args.force)
    print("\n".join(result.lines()))
    return 0


def train(args: argparse.Namespace) -> int:
    from longrec.config import load_config
    from longrec.run import train
    from longrec.train.distributed import check_nproc, current_ranks, launch

    overrides = list(args.set)
    if args.quiet:
        overrides.append("train.progress=false")
    if args.debug:
        overrides.append("data.check_batches=true")
    check_nproc(args.nproc)
    config = load_config(args.config, overrides)  # every config problem shows here, before any process starts
    if args.nproc > 1:
        # the same command, without --nproc, on N ranks: `torchrun ... -m longrec.train CONFIG --out OUT ...`
        again = [args.config, "--out", args.out, *[x for s in args.set for x in ("--set", s)]]
        flags = ("resume", "force", "debug", "quiet")
        again += ["--continue-from", args.continue_from] if args.continue_from is not None else []
        return launch([*again, *[f"--{flag}" for flag in flags if getattr(args, flag)]], args.nproc)
    ranks = current_ranks()
    if ranks.world > 1 and not ranks.main:
        logging.getLogger("longrec").setLevel(logging.WARNING)  # rank 0 logs; the others only warn
        config = load_config(args.config, [*overrides, "train.progress=false"])
    result = train(config, args.out, resume=args.resume, force=args.force, continue_from=args.continue_from)
    if ranks.main:
        if "before_training" in result:
            print_before_training(result)
        print_metrics_table([(config.model.name, result)], f"{config.model.name}: best step {result['best_step']}")
        print(f"run directory: {args.out}")
    return 0


def eval(args: argparse.Namespace) -> int:
    from longrec.files import dumps_json, lock_directory, write_json
    from longrec.run import load_run

    run = load_run(args.run, args.data)
    if args.retrieval:
        from longrec.eval.retrieval import PoolConfig

        ns = _cutoffs(args.n)
        pool = PoolConfig(args.pool, args.pool_size, args.pool_seed, args.pool_items)
        with lock_directory(run.path, "run directory"):
            metrics = run.evaluate_retrieval(args.split, ns, pool, progress=not args.quiet)
            write_json(run.path / f"eval_{args.split}_retrieval.json", metrics)
    else:
        with lock_directory(run.path, "run directory"):
            metrics = run.evaluate(args.split, progress=not args.quiet)
            write_json(run.path / f"eval_{args.split}.json", metrics)
    print(dumps_json(metrics), end="")
    return 0


def _cutoffs(text: str) -> list[int]:
    """--n "50,200" -> [50, 200]."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or not all(w.isdigit() and int(w) > 0 for w in words):
        raise ValueError(f"--n must be comma-separated positive ints, e.g. --n 50,200. Got {text!r} instead.")
    return [int(w) for w in words]


def cascade(args: argparse.Namespace) -> int:
    from longrec.eval.cascade import CascadeConfig, parse_cutoffs
    from longrec.eval.retrieval import PoolConfig
    from longrec.files import CASCADE, check_output
    from longrec.run.cascade import cascade_runs, write_cascade

    config = CascadeConfig(
        ms=tuple(parse_cutoffs(args.m, "--m")),
        ks=tuple(parse_cutoffs(args.k, "--k")),
        pool=PoolConfig(args.pool, args.pool_size, args.pool_seed, args.pool_items),
        split=args.split,
        sample_auc=not args.no_sample_auc,
    )
    check_output(args.out, CASCADE, args.force)  # before the work: a refused --out costs nothing
    report = cascade_runs(args.prerank, args.rank, config, args.data, progress=not args.quiet)
    path = write_cascade(report, args.out, args.force)
    print_cascade_table(report)
    print(f"report: {path}")
    return 0


def print_cascade_table(report: dict[str, Any]) -> None:
    """The cascade report as a rich table: the two references, then one row per M (docs/cascade.md reads it)."""
    from rich.console import Console
    from rich.table import Table

    ks, auc = report["ks"], "auc" in report["ranker_alone"]

    def cell(value: Any) -> str:
        return "-" if value is None or value != value else f"{value:.3f}"

    pre, rank = report["prerank_run"], report["rank_run"]
    lines = [
        f"pre-ranker: {pre['model']} ({pre['path']}); ranker: {rank['model']} ({rank['path']})",
        f"{report['split']}: {report['positives']:,} positives, each against a pool of {report['pool']['line']}",
        "scored = candidates the ranker scores per request; survival = positives the pre-ranker keeps (its Recall@M);",
        "R@K, NDCG end to end (a cut positive is a miss); '| kept' = the ranker on what the pre-ranker kept (AUC over "
        "the samples whose target survives). Ties count against the positive.",
    ]
    table = Table()
    headers = ["", "M", "scored", "survival", *[f"R@{k}" for k in ks], f"NDCG@{ks[-1]}"]
    headers += [f"R@{k} | kept" for k in ks] + (["AUC | kept", "GAUC | kept", "samples kept"] if auc else [])
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    alone, prerank = report["ranker_alone"], report["prerank_alone"]
    table.add_row(
        "pre-ranker only", "-", "0", "-", *[cell(prerank[f"recall@{k}"]) for k in ks], cell(prerank[f"ndcg@{ks[-1]}"]),
        *["-"] * (len(ks) + (3 if auc else 0)),
    )  # fmt: skip
    table.add_row(
        "ranker only", "all", f"{alone['candidates']:.0f}", "1", *[cell(alone[f"recall@{k}"]) for k in ks],
        cell(alone[f"ndcg@{ks[-1]}"]), *[cell(alone[f"recall@{k}"]) for k in ks],
        *([cell(alone["auc"]), cell(alone["gauc"]), f"{alone['samples']:,}"] if auc else []),
    )  # fmt: skip
    for row in report["cascade"]:
        table.add_row(
            "cascade", str(row["m"]), f"{row['candidates']:.0f}", cell(row["survival"]),
            *[cell(row[f"recall@{k}"]) for k in ks], cell(row[f"ndcg@{ks[-1]}"]),
            *[cell(row[f"ranker_recall@{k}"]) for k in ks],
            *([cell(row["auc"]), cell(row["gauc"]), f"{row['samples']:,}"] if auc else []),
        )  # fmt: skip
    out = console()
    if not out.is_terminal:  # a pipe or a file: wide enough that no header is cut
        out = Console(width=160)
    out.print("\n".join(lines), highlight=False, soft_wrap=True)
    out.print(table)


def analyze(args: argparse.Namespace) -> int:
    from longrec.run import analyze_run

    result = analyze_run(args.run, args.out, split=args.split, samples=args.samples, data=args.data)
    for path in result["files"]:
        print(path)
    return 0


def export(args: argparse.Namespace) -> int:
    from longrec.run import load_run
    from longrec.serve.delta import export

    print(export(load_run(args.run, args.data), args.out, args.force, args.version, args.parent, args.delta_from))
    return 0


def summarise(args: argparse.Namespace) -> int:
    from longrec.run import summarise

    meta = summarise(
        args.run, args.out, args.max_history, args.batch_size, args.dtype, args.force, args.data, not args.quiet
    )
    counts = ", ".join(f"{split} {n:,}" for split, n in meta["splits"].items())
    seconds = sum(meta["seconds"].values())
    print(
        f"wrote {args.out}: {meta['shape']} states ({meta['dtype']}) of {counts} samples, window "
        f"{meta['max_history']:,}, in {seconds:.1f}s"
    )
    return 0


def demo(args: argparse.Namespace) -> int:
    from longrec.demo import run_demo

    summary = run_demo(Path(args.out), users=args.users, seed=args.seed, progress=not args.quiet)
    rows = [(name, summary["runs"][name]) for name in summary["runs"]]
    print_metrics_table(rows, f"longrec demo: synthetic data ({summary['data']['samples']})")
    print(summary["verdict"])
    print(f"summary: {Path(args.out) / 'summary.json'} ({summary['seconds']:.0f}s)")
    return 0


def serve(args: argparse.Namespace) -> int:
    from longrec.serve.embedding_cache import EmbeddingCacheConfig
    from longrec.serve.schema import Limits
    from longrec.serve.server import open_service, run_server

    limits = Limits(max_candidates=args.max_candidates, max_body_bytes=args.max_body_mb * 2**20)
    cache = EmbeddingCacheConfig(capacity=args.embedding_cache) if args.embedding_cache else None
    service = open_service(args.model, args.store, args.history_log, args.redis, limits, cache)
    run_server(service, args.host, args.port, quiet=args.quiet)
    return 0


def compact(args: argparse.Namespace) -> int:
    from longrec.serve.history_compact import compact
    from longrec.serve.history_sqlite import open_embedded

    with open_embedded(args.history, log=args.log, create=False) as history:
        result = compact(history, args.out, force=args.force)
    print("\n".join(result.lines()))
    return 0


def content_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `longrec content` (kept here so that cli.py stays one readable page)."""
    p.add_argument(
        "action",
        choices=["add", "text"],
        help="add: vectors from a file keyed by raw item id; text: TF-IDF + SVD vectors of item text (scikit-learn)",
    )
    p.add_argument("store", help="the prepared store")
    p.add_argument("--modality", required=True, metavar="NAME", help="the modality's name, e.g. text, image")
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="FILE",
        help="add: .parquet (id + vector column(s)) or .npy; text: a .csv/.csv.gz/.parquet table of item text",
    )
    p.add_argument("--ids", default=None, metavar="FILE", help="add, with a .npy: the raw ids (.npy, or one a line)")
    p.add_argument("--id-column", default="item_id", help="the file's id column (default: item_id)")
    p.add_argument(
        "--columns",
        default=None,
        help="comma-separated columns: add: the vector column(s) (default: every other); text: the text columns",
    )
    p.add_argument("--movielens", default=None, metavar="DIR", help="text: movies.csv titles + genres (+ tags.csv)")
    p.add_argument("--dim", type=int, default=64, help="text: the vector width (SVD components; default 64)")
    p.add_argument("--seed", type=int, default=0, help="text: the SVD's seed (default 0)")
    p.add_argument(
        "--analyzer", default="word", choices=["word", "char"], help="text: word tokens, or char 1-2-grams (Chinese)"
    )
    p.add_argument(
        "--unknown", default="error", choices=["error", "skip"], help="add: ids the store does not know (skip: counted)"
    )
    p.add_argument(
        "--missing", default="error", choices=["error", "zero"], help="store items without a vector (zero: counted)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype")
    p.add_argument("--force", action="store_true", help="replace the modality if the store already has it")
    p.set_defaults(func=content)


def content(args: argparse.Namespace) -> int:
    from longrec.data.content import content_from_pairs, read_vector_file, write_content
    from longrec.data.store import TrajectoryStore

    store = TrajectoryStore.open(args.store)
    columns = [c for c in (args.columns or "").split(",") if c]
    extra: dict[str, Any] = {}
    if args.action == "add":
        if args.source is None:
            raise ValueError("longrec content add needs --from FILE (a .parquet or .npy of vectors).")
        raw, vectors = read_vector_file(args.source, id_column=args.id_column, vector_columns=columns, ids=args.ids)
        table, counts = content_from_pairs(store, raw, vectors, args.unknown, args.missing, args.dtype)
        source, method = Path(args.source).name, "file"
    else:
        from longrec.data.content_text import text_content_from

        options = (args.id_column, columns, args.dim, args.seed, args.analyzer, args.missing)
        table, counts, source = text_content_from(store, args.movielens, args.source, *options)
        table, method = table.astype(args.dtype), "tfidf+truncated_svd"
        extra = {"seed": args.seed, "analyzer": args.analyzer}
    folder = write_content(store, args.modality, table, source, method, counts, args.missing, args.force, extra)
    print(
        f"wrote modality '{args.modality}' to {folder}: {table.shape[0]:,} rows x {table.shape[1]} {table.dtype}; "
        f"items given {counts['items_given']:,}, missing (zero rows) {counts['items_missing']:,}, unknown ids "
        f"skipped {counts['ids_unknown']:,}"
    )
    return 0
