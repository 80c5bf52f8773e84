"""The retrieval → pre-ranking → ranking cascade: how does end-to-end Recall@K after the ranker change with M (the
candidates the pre-ranker passes on) and with the pre-ranker's loss, against the ranker alone on the whole pool?

Grid, per seed: one ranker (DARE: soft search to K = 20 over max_history 100, the auxiliary loss, dims 16) and one
pre-ranker per loss in --losses (the TD-SASRec family, dot scoring, goal heads, dims 16, max_history 50; the
mean-pooled user tower by default (--encoder mean), the causal TD-SASRec with --encoder causal), all trained on the
same store with BCE-labelled samples for the ranker and the pre-ranker's own loss. Every run: Adam lr 0.003, batch
512, --epochs epochs, validation AUC picks the checkpoint, one torch thread.
Measurement (`longrec.eval.cascade.evaluate_cascade` through `longrec.run.cascade.cascade_runs`, i.e. `longrec
cascade`): each test positive against one candidate pool (--pool-size items drawn by popularity from the items that
are train targets, seed 0; ties count against the positive); the pre-ranker keeps its top M for each M in --m, DARE
ranks those; end-to-end Recall@K and NDCG@K (a positive the pre-ranker cut is a miss), survival (the pre-ranker's
Recall@M), DARE's Recall@K among what survives and its AUC on the test samples whose target survives; against DARE
alone on the whole pool and the pre-ranker alone. Compute: candidates DARE scores per request (M with the cascade,
the pool without it).

--losses defaults to every loss TD-SASRec accepts on this commit (`longrec.models.sasrec.LOSSES`); a loss's own
settings go in with --loss-params LOSS:KEY=VALUE (a TOML value), e.g. --loss-params croloss:temperature=0.5.

Data: synthetic, mechanisms (a) + (e) (the (a) term decays with a τ per target category, (e) multiplies τ per goal),
3 goals, --users users, Protocol T on the labelled impressions (as bench_prerank.py); with --data taobao too, the
Taobao slice, Protocol A (users >= 50 behaviours).

Run:    python benchmarks/bench_cascade.py --update-readme --cache benchmarks/.cache
Quick:  python benchmarks/bench_cascade.py --seeds 0 --users 500 --epochs 1 --json /tmp/cascade.json
After CROLoss lands: python benchmarks/bench_cascade.py --losses bce sampled_softmax croloss --update-readme
Re-render the README section from the JSON alone:
        python benchmarks/bench_cascade.py --from-json benchmarks/results/cascade.json --update-readme
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np

from longrec.eval.cascade import CascadeConfig
from longrec.eval.retrieval import PoolConfig
from longrec.models.sasrec import LOSSES
from longrec.run import load_run
from longrec.run.cascade import cascade_runs

GOALS = ("click", "cart", "buy")
PRERANKER = {"name": "td_sasrec", "dim": 16, "num_blocks": 2, "num_heads": 2, "temporal": "both"}
RANKER = {"name": "dare", "dim": 16, "aux_loss": True}
RANKER_SEARCH = {"search.method": "soft", "search.k": 20}
PRE_HISTORY, RANK_HISTORY = 50, 100
LOSS_NAMES = {"bce": "BCE", "sampled_softmax": "sampled softmax", "croloss": "CROLoss"}


def store_of(name: str, cache: harness.Stores, users: int) -> harness.Store:
    if name == "synthetic":
        return cache.synthetic(num_users=users, mechanisms=("a", "e"), goals=GOALS)
    if name == "taobao":
        return cache.taobao(50)
    raise KeyError(name)


def loss_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--loss-params LOSS:KEY=VALUE ... -> {loss: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for text in args.loss_params:
        loss, _, assignment = text.partition(":")
        key, _, value = assignment.partition("=")
        if not loss or not key or not value:
            raise SystemExit(f"--loss-params must be LOSS:KEY=VALUE, e.g. croloss:temperature=0.5. Got {text!r}.")
        out.setdefault(loss, {})[key] = tomllib.loads(f"v = {value}")["v"]
    return out


def train_one(values: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train a run quietly; its test AUC and wall seconds."""
    result = harness.train_run(values, out)
    return {"seconds": result["seconds"], "test_auc": result["test"]["auc"], "valid_auc": result["valid"]["auc"]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    log = logging.getLogger("benchmarks")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cascade-"))
    cache = harness.Stores(args.cache)
    extra = loss_params(args)
    pool = PoolConfig("popularity", size=args.pool_size, seed=0, items="train_targets")
    config = CascadeConfig(ms=tuple(args.m), ks=tuple(args.k), pool=pool)
    started = time.perf_counter()
    runs, stores = [], {}
    for data in args.data:
        store = store_of(data, cache, args.users)
        stores[data] = store.info.get("line") or f"synthetic, {args.users} users"
        for seed in args.seeds:
            base = harness.run_values(store.path, seed, args.batch_size, args.epochs, RANK_HISTORY)
            rank_dir = work / f"{data}-dare-{seed}"
            ranker = train_one(base | {f"model.{k}": v for k, v in RANKER.items()} | RANKER_SEARCH, rank_dir)
            log.info("%s seed %d: DARE AUC %.4f (%.0f s)", data, seed, ranker["test_auc"], ranker["seconds"])
            ranking = load_run(rank_dir)
            for loss in args.losses:
                params = PRERANKER | {"encoder": args.encoder, "loss": loss} | extra.get(loss, {})
                values = harness.run_values(store.path, seed, args.batch_size, args.epochs, PRE_HISTORY)
                pre_dir = work / f"{data}-{loss}-{seed}"
                pre = train_one(values | {f"model.{k}": v for k, v in params.items()}, pre_dir)
                clock = time.perf_counter()
                report = cascade_runs(load_run(pre_dir), ranking, config)
                seconds = round(time.perf_counter() - clock, 1)
                log.info(
                    "%s seed %d %s: AUC %.4f, survival@%d %.3f, R@%d end to end %.3f vs alone %.3f (%.0f + %.0f s)",
                    data, seed, loss, pre["test_auc"], args.m[-1], report["cascade"][-1]["survival"], args.k[0],
                    report["cascade"][0][f"recall@{args.k[0]}"], report["ranker_alone"][f"recall@{args.k[0]}"],
                    pre["seconds"], seconds,
                )  # fmt: skip
                keep = ("positives", "ms", "ks", "prerank_alone", "ranker_alone", "cascade", "paths")
                runs.append(
                    {"data": data, "seed": seed, "loss": loss, "params": params, "prerank": pre, "rank": ranker}
                    | {"eval_seconds": seconds, "pool": report["pool"]["line"]}
                    | {k: report[k] for k in keep}
                )
    return {
        "machine": {"torch_threads": 1},
        "seconds": round(time.perf_counter() - started, 1),
        "stores": stores,
        "runs": runs,
    }


def _ms(values: list[float], digits: int = 3) -> str:
    return harness.mean_std(values, digits) if len(values) > 1 else f"{values[0]:.{digits}f}"


def table(runs: list[dict[str, Any]], ks: list[int]) -> str:
    """One block of rows per loss: the pre-ranker alone, then each M, then DARE alone (the same for every loss)."""
    k0, k1 = ks[0], ks[-1]
    header = ["pre-ranker loss", "M", "DARE scores / request", "survival (pre Recall@M)"]
    header += [f"Recall@{k}" for k in ks] + [f"NDCG@{k1}", f"DARE Recall@{k0} on survivors", "DARE AUC on survivors"]
    header += ["pre-ranker AUC"]
    rows = []
    losses = list(dict.fromkeys(r["loss"] for r in runs))
    for loss in losses:
        group = [r for r in runs if r["loss"] == loss]
        name = LOSS_NAMES.get(loss, loss)
        rows.append(
            [name, "pre-ranker alone", "0", "—"]
            + [_ms([r["prerank_alone"][f"recall@{k}"] for r in group]) for k in ks]
            + [_ms([r["prerank_alone"][f"ndcg@{k1}"] for r in group]), "—", "—"]
            + [_ms([r["prerank"]["test_auc"] for r in group], 4)]
        )
        for j, m in enumerate(group[0]["ms"]):
            cells = [r["cascade"][j] for r in group]
            rows.append(
                [name, str(m), f"{np.mean([c['candidates'] for c in cells]):.0f}"]
                + [_ms([c["survival"] for c in cells])]
                + [_ms([c[f"recall@{k}"] for c in cells]) for k in ks]
                + [_ms([c[f"ndcg@{k1}"] for c in cells]), _ms([c[f"ranker_recall@{k0}"] for c in cells])]
                + [_ms([c["auc"] for c in cells], 4), "—"]
            )
    first = [r for r in runs if r["loss"] == losses[0]]  # DARE alone: one per seed, whatever the pre-ranker
    alone = [r["ranker_alone"] for r in first]
    rows.append(
        ["(none)", "DARE alone", f"{np.mean([a['candidates'] for a in alone]):.0f}", "1"]
        + [_ms([a[f"recall@{k}"] for a in alone]) for k in ks]
        + [_ms([a[f"ndcg@{k1}"] for a in alone]), _ms([a[f"recall@{k0}"] for a in alone])]
        + [_ms([a["auc"] for a in alone], 4), "—"]
    )
    return harness.markdown_table(header, rows)


def render(payload: dict[str, Any]) -> str:
    config, runs = payload["config"], payload["runs"]
    info = payload["machine"]
    text = (
        f"Command: `{payload['command']}`. {harness.machine_line(info)} {harness.load_line(payload)} One torch thread, "
        f"one process; the whole command took {payload['seconds'] / 60:.1f} min. Pre-rankers: the TD-SASRec family "
        f"(encoder {config['encoder']}, goal heads, dot scoring, dims 16, max_history {PRE_HISTORY}), one per loss; "
        f"ranker: DARE (soft search K = 20 over max_history {RANK_HISTORY}, auxiliary loss, dims 16). Every run: Adam "
        f"lr 0.003, batch {config['batch_size']}, {config['epochs']} epochs, validation AUC picks the checkpoint. "
        f"Synthetic: {config['users']} users, mechanisms (a) + (e), 3 goals, Protocol T"
        + (
            "; Taobao: the 927-user slice, Protocol A (users >= 50 behaviours). "
            if "taobao" in config["data"]
            else ". "
        )
        + f"Pool: {runs[0]['pool'] if runs else '-'}, per dataset; each test positive ranked against it, ties against "
        f"the positive. Test metrics, mean ± std over seeds {config['seeds']}. 'DARE scores / request' = candidates "
        "the ranker scores per test request (the cascade scores M of them; alone, the whole pool); survival = "
        "test positives the pre-ranker keeps in its top M; Recall@K and NDCG end to end (a cut positive is a miss; "
        "with M < K the list holds only M items, so Recall@K = survival); 'on survivors' = DARE's Recall among the "
        "survivors and its AUC "
        "on the test samples (positive or negative) whose target the pre-ranker keeps.\n"
    )
    for data in dict.fromkeys(r["data"] for r in runs):
        group = [r for r in runs if r["data"] == data]
        positives = group[0]["positives"]
        text += f"\n**{data}** ({positives:,} test positives)\n\n" + table(group, config["k"]) + "\n"
    return text


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "cascade", seeds=[0, 1], scratch=True)
    parser.add_argument("--data", nargs="+", default=["synthetic"], choices=["synthetic", "taobao"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), help="pre-ranker losses (default: %(default)s)")
    parser.add_argument(
        "--loss-params",
        action="append",
        default=[],
        metavar="LOSS:KEY=VALUE",
        help="a TD-SASRec setting for the pre-ranker of one loss (repeatable)",
    )
    parser.add_argument("--encoder", default="mean", choices=["mean", "causal"], help="pre-ranker user tower")
    parser.add_argument("--m", nargs="+", type=int, default=[10, 50, 200, 1000], help="candidates passed on")
    parser.add_argument("--k", nargs="+", type=int, default=[10, 50], help="end-to-end cut-offs")
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (20 labelled impressions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    return parser


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.main(parser().parse_args(), "cascade", measure, render)
