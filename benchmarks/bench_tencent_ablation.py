"""The Tencent sequence-modeling stage, module by module: does each module beat its ablation where its mechanism is
planted, and only there?

Each study pairs a module with its ablation on two synthetic datasets that differ in one planted mechanism (the
generator's mechanisms, `longrec.ingest.synthetic`): "planted" = the base mechanism (a) plus the study's mechanism;
"absent" = (a) alone (the same base for every study, so the absent runs are comparable across studies). A module that
helps on "planted" and not on "absent" has found its mechanism; one that does not help where its mechanism is planted
is a finding.

| study      | module                          | ablation                          | mechanism                       |
|------------|---------------------------------|-----------------------------------|---------------------------------|
| search     | TIN on hierarchical hard search | TIN on category (SPU) hard search | (b) cross-domain coarse matches |
| (search)   | hierarchical, min_depth = 2     | (same)                            | (stops the fallback at cat_2)   |
| search_din | DIN on hierarchical hard search | DIN on category (SPU) hard search | (b), unnormalised attention     |
| dsi        | DSI-TIN, 4 field groups         | one TIN over all fields           | (c) a noise field on every row  |
| tdpe       | TIN + TDPE (separate tables)    | TIN + one shared temporal table   | (e) goal-specific decay of (a)  |
| tdpe_search| tdpe, behind category search    | tdpe's ablation, same search      | (e), in the two-stage setting   |
| stacked    | Stacked TIN, L_s = 2, 3, 4      | L_s = 1                           | (d) an ordered category pair    |
| sasrec     | TD-SASRec (causal, TDPE)        | mean-pooled user tower            | (e) goal-specific decay of (a)  |
| (sasrec)   | both, 3x the epochs             | (same)                            | (is TD-SASRec undertrained?)    |

Every row: dims 16, Adam lr 0.003, batch 512, 3 epochs, validation AUC picks the checkpoint, Protocol T on the
generator's labelled impressions (3 goals: click, cart, buy); metrics on the test split, overall and per goal,
mean ± std over seeds. The TIN-family rows use both temporal encodings and per-goal heads (the configs in configs/
that name the module), except tdpe_search: TIN behind category search (K = 20 of 200) with one head, so the goal
reaches the model only through TDPE. Real data: the stacked and sasrec studies on the Taobao slice (Protocol A, one
goal, one category level and no side fields, so search/dsi/tdpe have nothing to separate there).

Run:   python benchmarks/bench_tencent_ablation.py --update-readme          (all studies, 3 seeds, + Taobao)
Quick: python benchmarks/bench_tencent_ablation.py --studies stacked --seeds 0 --no-taobao --users 800
One study again, keeping the others (each labelled with its commit, date and CPU in the README line):
       python benchmarks/bench_tencent_ablation.py --studies dsi --merge --update-readme
Re-render the README section from the JSON alone:
       python benchmarks/bench_tencent_ablation.py --from-json benchmarks/results/tencent_ablation.json --update-readme
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import polars as pl
import torch

from longrec.data.dataset import collate, make_loader
from longrec.eval.analyze import attention_profile, field_shares
from longrec.eval.metrics import recall_at_k
from longrec.models import build_model_for_sizes
from longrec.run import load_run
from longrec.search import SEARCHERS, search_stage
from longrec.search.config import SearchConfig
from longrec.search.hierarchical import match_depth

logger = logging.getLogger("bench_tencent_ablation")

BASE = ("a",)  # every dataset plants (a); a study adds its own mechanism to make "planted"
GOALS = ("click", "cart", "buy")
TIN = {"name": "tin", "temporal": "both", "goal_heads": True, "head_hidden": [64, 32]}
# DSI-TIN's field groups (configs/dsi_tin_synthetic.toml); the last group holds the extra fields of the data.
DSI_GROUPS = [["item", "category"], ["category", "action"], ["scene", "action"]]


@dataclass(frozen=True)
class Study:
    """A module, its ablation (the first row) and the mechanism that should separate them."""

    mechanism: str
    question: str
    rows: tuple[str, ...]  # row names; rows[0] is the ablation


# Search rows: the hard searcher and its knobs. "depth >= 2" stops hierarchical's fallback at cat_2, the level (b)'s
# content behaviours reach, so cat_1-only matches no longer fill K.
SEARCH_ROWS: dict[str, dict[str, Any]] = {
    "category": {"search.method": "category"},
    "hierarchical": {"search.method": "hierarchical"},
    "hierarchical, depth >= 2": {"search.method": "hierarchical", "search.min_depth": 2},
}

STUDIES = {
    "search": Study("b", "TIN on hierarchical vs category hard search (K = 20 of 200)", tuple(SEARCH_ROWS)),
    "search_din": Study("b", "DIN on hierarchical vs category hard search (K = 20 of 200)", tuple(SEARCH_ROWS)),
    "dsi": Study("c", "DSI-TIN vs one TIN over all fields", ("single TIN", "DSI-TIN")),
    "tdpe": Study("e", "TDPE (per-goal temporal tables) vs one shared table", ("shared", "TDPE separate")),
    "tdpe_search": Study(
        "e",
        "TDPE vs one shared table, TIN behind category search (K = 20 of 200) without per-goal heads",
        ("shared", "TDPE separate"),
    ),
    "stacked": Study("d", "Stacked TIN depth L_s", ("L_s = 1", "L_s = 2", "L_s = 3", "L_s = 4")),
    "sasrec": Study(
        "e",
        "TD-SASRec vs a mean-pooled user tower (', 3x epochs': trained three times as long)",
        ("mean tower", "TD-SASRec", "mean tower, 3x epochs", "TD-SASRec, 3x epochs"),
    ),
}


def row_overrides(study: str, row: str, planted: bool) -> dict[str, Any]:
    """Config overrides (`section.field` -> value) of one row of a study on the planted or absent data."""
    data: dict[str, Any] = {"data.max_history": 100}
    if study in ("search", "search_din"):
        model = TIN if study == "search" else {"name": "din"}
        return _model(model) | SEARCH_ROWS[row] | {"search.k": 20, "data.max_history": 200}
    if study == "dsi":
        extra = ["brand", "noise_tag"] if planted else ["brand"]
        fields = ["item", "category", "action", "scene", *extra]
        groups = [*DSI_GROUPS, extra] if row == "DSI-TIN" else [fields]
        dsi = {"name": "dsi_tin", "temporal": "both", "head_hidden": [64, 32], "groups": groups, "extra_fields": extra}
        return _model(dsi) | data
    if study == "tdpe":
        return _model(TIN | {"tdpe": "separate" if row == "TDPE separate" else "shared"}) | data
    if study == "tdpe_search":  # the deployed two-stage setting; the goal reaches the model only through TDPE
        tin = TIN | {"tdpe": "separate" if row == "TDPE separate" else "shared", "goal_heads": False}
        return _model(tin) | {"search.method": "category", "search.k": 20, "data.max_history": 200}
    if study == "stacked":
        layers = int(row.split("=")[1])
        return _model({"name": "stacked_tin", "temporal": "both", "head_hidden": [64, 32], "num_layers": layers}) | data
    if study == "sasrec":
        encoder = "causal" if row.startswith("TD-SASRec") else "mean"
        sasrec = {"name": "td_sasrec", "num_blocks": 2, "num_heads": 2, "temporal": "both", "encoder": encoder}
        return _model(sasrec) | {"data.max_history": 50}
    raise KeyError(study)


def _model(params: dict[str, Any]) -> dict[str, Any]:
    return {f"model.{k}": v for k, v in params.items()}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (study, row, dataset, seed) and return its test metrics (run in a worker process, 1 thread)."""
    logging.getLogger("longrec").setLevel(logging.WARNING)
    values = {
        **job["overrides"],
        "model.dim": 16,
        "data.path": job["store"],
        "train.lr": 0.003,
        "train.batch_size": job["batch_size"],
        "train.epochs": job["epochs"],
        "train.seed": job["seed"],
        "train.metric": "auc",
        "train.threads": 1,
        "train.progress": False,
    }
    result = harness.train_run(values, job["out"])
    test = result["test"]
    keep = ("auc", "gauc", "logloss")
    return {
        "study": job["study"],
        "row": job["row"],
        "data": job["data"],
        "seed": job["seed"],
        "seconds": result["seconds"],
        "test": {k: test[k] for k in keep},
        "per_goal": {goal: {k: m[k] for k in keep} for goal, m in test.get("per_goal", {}).items()},
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=np.float64)
    return float(np.nanmean(array)), float(np.nanstd(array))


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(study, data, row) -> mean and std of every metric over seeds, overall and per goal."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["study"], run["data"], run["row"]), []).append(run)
    table = {}
    for key, group in groups.items():
        entry: dict[str, Any] = {"seeds": len(group), "seconds": float(np.mean([r["seconds"] for r in group]))}
        for metric in ("auc", "gauc", "logloss"):
            entry[metric] = _mean_std([r["test"][metric] for r in group])
        goals = sorted(
            {g for r in group for g in r["per_goal"]},
            key=lambda g: (g not in GOALS, GOALS.index(g) if g in GOALS else 0, g),
        )
        entry["per_goal"] = {
            goal: {
                m: _mean_std([r["per_goal"][goal][m] for r in group if goal in r["per_goal"]])
                for m in ("auc", "gauc", "logloss")
            }
            for goal in goals
        }
        table[key] = entry
    return table


LONGER = ", 3x epochs"  # a row trained three times as long; compared with the ablation trained as long


def ablation_of(spec: Study, row: str) -> str:
    """The row `row` is compared with: the ablation (rows[0]), or its 3x-epochs variant for a 3x-epochs row."""
    longer = spec.rows[0] + LONGER
    return longer if row.endswith(LONGER) and longer in spec.rows else spec.rows[0]


def module_rows(spec: Study) -> list[str]:
    """The rows that are the module (not the ablation, in either length)."""
    return [r for r in spec.rows[1:] if r not in (spec.rows[0], spec.rows[0] + LONGER)]


def _fmt(value: tuple[float, float]) -> str:
    return f"{value[0]:.4f} ± {value[1]:.4f}"


def render_study(study: str, table: dict[tuple[str, str, str], dict[str, Any]], datasets: list[str]) -> str:
    spec = STUDIES[study]
    goals = [g for g in GOALS if any(g in table[k]["per_goal"] for k in table if k[0] == study)]
    header = ["data", "row", "AUC", "GAUC (user)", "logloss", *[f"AUC {g}" for g in goals], "ΔAUC vs ablation", "s/run"]
    rows = []
    for data in datasets:
        for row in spec.rows:
            entry = table.get((study, data, row))
            if entry is None:
                continue
            base = table.get((study, data, ablation_of(spec, row)))
            delta = "—" if row not in module_rows(spec) or base is None else f"{entry['auc'][0] - base['auc'][0]:+.4f}"
            per_goal = [f"{entry['per_goal'][g]['auc'][0]:.4f}" if g in entry["per_goal"] else "—" for g in goals]
            rows.append(
                [
                    data,
                    row,
                    _fmt(entry["auc"]),
                    _fmt(entry["gauc"]),
                    _fmt(entry["logloss"]),
                    *per_goal,
                    delta,
                    f"{entry['seconds']:.0f}",
                ]
            )
    return f"**{study}**: {spec.question}; mechanism ({spec.mechanism}).\n\n" + harness.markdown_table(header, rows)


def verdicts(table: dict[tuple[str, str, str], dict[str, Any]], studies: list[str]) -> list[list[str]]:
    """One line per study: the best module row's ΔAUC over the ablation (planted, absent, Taobao, with the larger
    seed std), its mean per-goal ΔAUC on the planted data (a gain in the overall AUC that is not also inside the goals
    comes from separating the goals' base rates), and a verdict: a gain counts when it exceeds twice the seed std."""
    out = []
    for study in studies:
        spec = STUDIES[study]
        cells = [study, "?"]  # the ablation column is filled once the best row is known
        best_row = None
        gains: dict[str, bool] = {}
        per_goal, within = "—", float("nan")
        for data in ("planted", "absent", "taobao"):
            candidates = [
                (table[(study, data, r)]["auc"][0], r) for r in module_rows(spec) if (study, data, r) in table
            ]
            if not candidates:
                cells.append("—")
                continue
            if data == "planted" or best_row is None:
                best_row = max(candidates)[1]
            entry = table.get((study, data, best_row))
            base = table.get((study, data, ablation_of(spec, best_row)))
            if entry is None or base is None:
                cells.append("—")
                continue
            noise = max(base["auc"][1], entry["auc"][1])
            delta = entry["auc"][0] - base["auc"][0]
            gains[data] = delta > 2 * noise
            cells.append(f"{delta:+.4f} (std {noise:.4f})")
            goals = [g for g in entry["per_goal"] if g in base["per_goal"]]
            if data == "planted" and goals:
                deltas = [entry["per_goal"][g]["auc"][0] - base["per_goal"][g]["auc"][0] for g in goals]
                within = float(np.mean(deltas))
                per_goal = f"{within:+.4f}"
        cells[1] = ablation_of(spec, best_row) if best_row else spec.rows[0]
        cells.insert(1, best_row or "—")
        cells.insert(5, per_goal)
        if not gains.get("planted", False):
            verdict = "no gain where planted"
        elif within <= 0:
            verdict = "gains across goals only (their base rates), not within a goal"
        elif gains.get("absent", False):
            verdict = "gains with and without its mechanism"
        else:
            verdict = "gains only where planted"
        out.append([*cells, verdict])
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (study, data, row, seed) of --studies; with --merge, keep the other studies' runs (and their extra
    tables) from the --json file, each labelled with the commit, date and CPU that produced it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    kept = kept_runs(args.json, args.studies) if args.merge else None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tencent-"))
    started = time.perf_counter()
    info = harness.machine()
    stores = harness.Stores(args.cache)
    origin = {"commit": info["commit"], "date": info["date"], "cpu": info["cpu"]}
    runs = [run | origin for run in run_all(args, work, stores)]
    seconds = round(time.perf_counter() - started, 1)
    recovery = decay_recovery(runs, work)
    recall = (
        search_recall(stores.synthetic(num_users=args.users, mechanisms=(*BASE, "b"), goals=GOALS))
        if any(s in args.studies for s in SEARCH_STUDIES)
        else None
    )
    shares = dsi_field_shares(runs, work) if "dsi" in args.studies else None
    if kept is not None:
        recovery = kept["decay_recovery"] | recovery
        recall = recall if recall is not None else kept["search_recall"]
        shares = shares if shares is not None else kept["field_shares"]
    return {
        "machine": {"torch_threads": 1, "jobs": args.jobs},
        "seconds": seconds,
        "fresh_runs": len(runs),
        "runs": (kept["runs"] if kept is not None else []) + runs,
        "decay_recovery": recovery,
        "search_recall": recall,
        "field_shares": shares,
    }


def render(payload: dict[str, Any]) -> str:
    config, runs, fresh = payload["config"], payload["runs"], payload["fresh_runs"]
    studies = [study for study in STUDIES if any(run["study"] == study for run in runs)]
    table = summarise(runs)
    datasets = ["planted", "absent"] + ([] if config["no_taobao"] else ["taobao"])
    sections = {study: [render_study(study, table, datasets)] for study in studies}  # + what follows each
    if payload["search_recall"] is not None:
        sections[[s for s in studies if s in SEARCH_STUDIES][-1]].append(render_search_recall(payload["search_recall"]))
    if payload["decay_recovery"]:
        sections[[s for s in studies if s in TDPE_STUDIES][-1]].append(render_recovery(payload["decay_recovery"]))
    if payload["field_shares"]:
        sections["dsi"].append(render_field_shares(payload["field_shares"]))
    header = ["study", "best module row", "ablation", "ΔAUC planted", "ΔAUC absent", "per-goal ΔAUC planted"]
    summary = harness.markdown_table([*header, "ΔAUC Taobao", "verdict (2 std)"], verdicts(table, studies))
    timing = f"; this command's {fresh} runs took {payload['seconds'] / 60:.0f} min, {config['jobs']} in parallel. "
    return (
        f"Command: `{payload['command']}`. {provenance(runs)} Torch {payload['machine']['torch']}, one thread per run"
        + (timing if fresh else ". ")
        + f"Synthetic: {config['users']} users × 20 labelled impressions, 3 goals, Protocol T; 'planted' = (a) + the "
        "study's mechanism, 'absent' = (a) only. Taobao: the 927-user slice under Protocol A (user filter "
        f"{config['min_behaviours']}). Test metrics, mean ± std over seeds {config['seeds']}; ΔAUC of the best module "
        "row (chosen on the planted data) over the ablation.\n\n"
        + summary
        + "\n\n"
        + "\n\n".join(part for study in studies for part in sections[study])
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "tencent_ablation", seeds=[0, 1, 2], scratch=True)
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (20 labelled impressions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--no-taobao", action="store_true", help="skip the real-data run on the Taobao slice")
    parser.add_argument("--min-behaviours", type=int, default=50, help="Protocol A user filter on the Taobao slice")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="rerun only --studies and keep every other study's runs (and decay recovery) from the --json file, "
        "each labelled with the commit that produced it",
    )
    return parser


def _key_order(key: str) -> tuple[int, int, int]:
    """Sort "study/data/row" keys as the studies, datasets and rows are listed."""
    study, data, row = key.split("/")
    rows = STUDIES[study].rows
    return list(STUDIES).index(study), ["planted", "absent", "taobao"].index(data), rows.index(row)


def kept_runs(path: Path, rerun: list[str]) -> dict[str, Any]:
    """--merge: the runs of an earlier JSON whose study is not rerun, each labelled with the commit, date and CPU that
    produced it (a run without labels gets that JSON's), and its extra tables for those studies."""
    previous = harness.read_results(path)
    machine_info = previous["machine"]
    origin = {"commit": machine_info["commit"], "date": machine_info["date"], "cpu": machine_info["cpu"]}
    runs = [origin | run for run in previous["runs"] if run["study"] not in rerun]
    recovery = {k: v for k, v in previous.get("decay_recovery", {}).items() if k.split("/")[0] not in rerun}
    recall = None if any(s in rerun for s in SEARCH_STUDIES) else previous.get("search_recall")
    shares = None if "dsi" in rerun else previous.get("field_shares")
    return {"runs": runs, "decay_recovery": recovery, "search_recall": recall, "field_shares": shares}


def run_all(args: argparse.Namespace, work: Path, cache: harness.Stores) -> list[dict[str, Any]]:
    """Prepare every dataset the studies need and train every (study, data, row, seed), `args.jobs` at a time."""
    stores: dict[tuple[str, str], Path] = {}
    for study in args.studies:
        mechanism = STUDIES[study].mechanism
        for data, mechanisms in (("planted", (*BASE, mechanism)), ("absent", BASE)):
            stores[(study, data)] = cache.synthetic(num_users=args.users, mechanisms=mechanisms, goals=GOALS).path
        if not args.no_taobao and study in ("stacked", "sasrec"):
            stores[(study, "taobao")] = cache.taobao(args.min_behaviours).path
    jobs = []
    for (study, data), store in stores.items():
        for row in STUDIES[study].rows:
            for seed in args.seeds:
                overrides = row_overrides(study, row, planted=data == "planted")
                if data == "taobao":  # one goal, one category level: the TIN-family goal options do not apply
                    overrides = {k: v for k, v in overrides.items() if k != "model.goal_heads"}
                job = {"study": study, "row": row, "data": data, "seed": seed, "overrides": overrides}
                job |= {
                    "store": str(store),
                    "out": str(work / "runs" / run_name(study, data, row, seed)),
                    "epochs": args.epochs * (3 if row.endswith(", 3x epochs") else 1),
                }
                jobs.append(job | {"batch_size": args.batch_size})
    logger.info("scratch %s", work)
    runs = harness.parallel(
        run_one,
        jobs,
        args.jobs,
        lambda r: (
            f"{r['study']} {r['data']} {r['row']} seed {r['seed']}: AUC {r['test']['auc']:.4f} ({r['seconds']:.0f} s)"
        ),
    )

    return runs


TDPE_STUDIES = ("tdpe", "tdpe_search")


def provenance(runs: list[dict[str, Any]]) -> str:
    """Which studies ran on which commit, date and CPU (runs of several invocations meet under --merge)."""
    studies: dict[tuple[str, str, str], list[str]] = {}
    for run in runs:
        key = (run.get("commit", "unknown"), run.get("date", "unknown"), run.get("cpu", "unknown"))
        if run["study"] not in studies.setdefault(key, []):
            studies[key].append(run["study"])
    parts = [
        f"{', '.join(sorted(names, key=list(STUDIES).index))} at commit {c} ({d}, {cpu})"
        for (c, d, cpu), names in sorted(studies.items())
    ]
    return f"Runs: {'; '.join(parts)}."


def dsi_field_shares(runs: list[dict[str, Any]], work: Path, samples: int = 2048) -> dict[str, list[dict[str, Any]]]:
    """dsi study: what drives each module's attention, field by field (`longrec.eval.analyze.field_shares`, the
    numbers `longrec analyze` plots), for the trained model and for a freshly initialised one of the same config
    and seed, on the validation split. "study/data/row" -> one entry per seed: {"init" | "trained": [one
    {field: share} per module]}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        path = work / "runs" / run_name(run["study"], run["data"], run["row"], run["seed"])
        if run["study"] != "dsi" or not (path / "checkpoint.pt").is_file():
            continue
        loaded = load_run(path)
        config, store, trained = loaded.config, loaded.store, loaded.model
        torch.manual_seed(run["seed"])
        fresh = build_model_for_sizes(config.model.name, config.model.params, store.sizes).eval()
        batches, taken = [], 0
        for batch in make_loader(store, "valid", 512, config.data.max_history):
            batches.append(batch)
            taken += len(batch)
            if taken >= samples:
                break
        entry = {"init": field_shares(fresh, batches), "trained": field_shares(trained, batches)}
        out.setdefault(f"{run['study']}/{run['data']}/{run['row']}", []).append(entry)
    return out


def render_field_shares(shares: dict[str, list[dict[str, Any]]]) -> str:
    fields = sorted({f for per_seed in shares.values() for e in per_seed for m in e["init"] for f in m})
    known = ("item", "category", "action", "domain", "scene", "brand", "noise_tag", "temporal")
    order = [f for f in known if f in fields]
    order += [f for f in fields if f not in order]
    rows = []
    for key, per_seed in sorted(shares.items(), key=lambda item: _key_order(item[0])):  # the JSON sorts keys
        for g in range(len(per_seed[0]["trained"])):
            group = [f for f in order if f in per_seed[0]["trained"][g] and f != "temporal"]
            cells = [key, str(g), "+".join(group)]
            for field in order:
                init = [e["init"][g].get(field) for e in per_seed]
                trained = [e["trained"][g].get(field) for e in per_seed]
                if init[0] is None:
                    cells.append("—")
                else:
                    cells.append(f"{np.mean(init):.2f} → {np.mean(trained):.2f}")
            rows.append(cells)
    return (
        "What drives attention (dsi study): each field's share of how much a module's attention logit varies over a "
        "history (mean absolute deviation of the field's term over the real behaviours, summed over histories, over "
        "the same sum for all fields' and the temporal encoding's), at initialisation → after training, mean over "
        "seeds, validation split (`longrec.eval.analyze.field_shares`; `longrec analyze` plots it).\n\n"
        + harness.markdown_table(["study/data/row", "module", "fields", *order], rows)
    )


def decay_recovery(runs: list[dict[str, Any]], work: Path, samples: int = 4096) -> dict[str, list[dict[str, float]]]:
    """TDPE studies: each trained model's attention-weighted mean time gap per goal (`analyze.attention_profile`,
    over the behaviours the model attends to, i.e. after its search stage) on the validation split,
    "study/data/row" -> one {goal: days} per seed. (e) plants a faster decay for click (τ × 0.2) and a slower one for
    buy (τ × 5), so a model that recovered it attends to more recent behaviours for click."""
    out: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        path = work / "runs" / run_name(run["study"], run["data"], run["row"], run["seed"])
        if run["study"] not in TDPE_STUDIES or not (path / "checkpoint.pt").is_file():
            continue
        loaded = load_run(path)
        config, store, model = loaded.config, loaded.store, loaded.model
        batches, taken = [], 0
        for batch in make_loader(store, "valid", 512, config.data.max_history):
            with torch.no_grad():
                batches.append(search_stage(batch, model, config.search))
            taken += len(batch)
            if taken >= samples:
                break
        names = ["unknown", *map(str, store.vocab("goal").to_list())]
        profile = attention_profile(model, batches, int(store.sizes["num_goals"]))
        assert profile is not None  # TIN exposes attention_weights
        gaps = {names[g]: days for g, days in enumerate(profile["mean_gap_days"]) if names[g] in GOALS}
        out.setdefault(f"{run['study']}/{run['data']}/{run['row']}", []).append(gaps)
    return out


def render_recovery(recovery: dict[str, list[dict[str, float]]]) -> str:
    header = ["study/data/row", *[f"mean gap {g} (days)" for g in GOALS], "seeds with click < cart < buy"]
    rows = []
    for key, per_seed in sorted(recovery.items(), key=lambda item: _key_order(item[0])):
        cells = [key]
        for goal in GOALS:
            cells.append(_fmt(_mean_std([gaps[goal] for gaps in per_seed])))
        ordered = sum(gaps["click"] < gaps["cart"] < gaps["buy"] for gaps in per_seed)
        rows.append([*cells, f"{ordered}/{len(per_seed)}"])
    return (
        "Decay recovery (TDPE studies): the attention-weighted mean time gap per goal on the validation split "
        "(`longrec analyze` reports the same number). Planted: click decays fastest (τ × 0.2), buy slowest (τ × 5).\n\n"
        + harness.markdown_table(header, rows)
    )


SEARCH_STUDIES = ("search", "search_din")


def search_recall(planted: harness.Store, k: int = 20, max_history: int = 200, samples: int = 4000) -> list[list[str]]:
    """Search study, planted data: what each hard searcher keeps for the first `samples` test samples. Recall of the
    planted relevant behaviours of (a) (same-SPU ad behaviours) and (b) (content behaviours matching at cat_2) that
    lie in the history window, the mean number kept, and the share of kept behaviours by taxonomy match depth."""
    store, truth = planted.open(), planted.truth()
    split = store.samples("test")
    index = np.arange(min(samples, len(split)))
    batch = collate(store, split, index, max_history)
    assert batch.history_category is not None and batch.target_category is not None
    L = batch.history.shape[1]
    end = np.asarray(split.end[index])
    n = np.minimum(end, L)  # [N] real behaviours in the window
    rows = (store.offsets[split.user[index]] + end - n)[:, None] + np.arange(L)[None, :] - (L - n)[:, None]  # [N, L]
    events = np.where(batch.history_mask.numpy(), store.arrays["event_id"][np.clip(rows, 0, None)], -1)  # [N, L]
    truth = truth.filter(pl.col("event_id").is_in(split.event_id[index].tolist()))
    by_event = {int(e): (set(a), set(b)) for e, a, b in truth.select("event_id", "relevant_a", "relevant_b").rows()}
    window = [set(row.tolist()) for row in events]
    relevant = {
        m: [by_event.get(int(e), (set(), set()))[i] & w for e, w in zip(split.event_id[index], window, strict=True)]
        for i, m in enumerate("ab")
    }
    depth = match_depth(batch.history_category, batch.target_category).numpy()  # [N, L]
    out = []
    for row, overrides in SEARCH_ROWS.items():
        config = SearchConfig.from_table({"k": k, **{key.split(".")[1]: value for key, value in overrides.items()}})
        positions, kept = SEARCHERS[config.method].search(batch, k, None, None, config.options)
        positions, kept = positions.numpy(), kept.numpy()  # [N, K] each
        retrieved = np.where(kept, np.take_along_axis(events, positions, axis=1), -1)  # [N, K] event ids
        kept_depth = np.take_along_axis(depth, positions, axis=1)[kept]  # [R]
        share = np.bincount(kept_depth, minlength=depth.max() + 1)[1:] / max(len(kept_depth), 1)
        out.append(
            [
                row,
                f"{recall_at_k(retrieved, relevant['a']):.3f}",
                f"{recall_at_k(retrieved, relevant['b']):.3f}",
                f"{kept.sum(1).mean():.1f}",
                " / ".join(f"{x:.2f}" for x in share),
            ]
        )
    return out


def render_search_recall(rows: list[list[str]]) -> str:
    return (
        "Search stage on the planted (b) data (test split, K = 20 of 200): recall of the planted relevant behaviours "
        "in the window (of (a): same-SPU ad behaviours; of (b): content behaviours matching the target at cat_2), "
        "behaviours kept per sample, and the share of kept behaviours matching the target down to cat_1 / cat_2 / "
        "cat_3 (the SPU).\n\n"
        + harness.markdown_table(["searcher", "recall (a)", "recall (b)", "kept", "kept by depth 1 / 2 / 3"], rows)
    )


def run_name(study: str, data: str, row: str, seed: int) -> str:
    return re.sub(r"[^\w.-]+", "", f"{study}-{data}-{row}-{seed}")  # "L_s = 2" -> "L_s2"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.main(parser().parse_args(), "tencent-ablation", measure, render)
