"""TDPE keyed by the target's category: does it recover a category-specific decay (mechanism (a)) in attention and
AUC, against one shared temporal table?

Mechanism (a) of the synthetic generator: the label rises with same-SPU ad behaviours, decayed by exp(-Δt / τ_c),
where τ_c is drawn per `cat_2` category (log-uniform in [1, 60] days). "planted" = (a) as generated; "absent" = (a)
with one τ for every category (τ_min = τ_max = 7.7 days, their geometric mean): the decay is there, the
category-specific part is not. No other mechanism is on, so (a) is the whole signal.

Rows: TIN with the time-gap encoding (`temporal = "time_gap"`: the decay is in seconds) and
- shared: one time-gap table for every target (the ablation);
- by category (cat_2): TDPE keyed by the target's `cat_2` (`tdpe_key = "category"`, `tdpe_level = 2`), the level
  (a) draws its τ at;
- by category (SPU): keyed by the finest level (`tdpe_level = 3`, the default): 5x more tables, each SPU's τ is its
  category's.
Settings: the full history (L = 100, no search) and behind category search (SIM hard search on the SPU, K = 20 of 200:
the deployed two-stage setting, where attention sees the same-SPU behaviours only).

Decay recovery, per trained model and `cat_2` (validation targets), two probes that change only the time gap:
- attention: the history is the target itself once per time-gap bucket (60 s to a year, log-spaced), so the copies
  differ only in their temporal encoding and softmax_b(<ẽ_b, ṽ_t>) is the model's relative attention by gap; its
  attention-weighted mean gap is smaller for a category whose attention decays faster;
- prediction: the history is one behaviour, the target itself at a gap; its effect on the logit over an empty
  history, and the gap at which that effect falls to half its value at <= 1 hour (the decay the model learned, by any
  path: attention, or the value ẽ_i ⊙ ṽ_t that carries the temporal encoding into the head).
Recovery = Spearman's rank correlation of each with the planted τ_c over the categories with >= 10 validation
targets (on "absent": against the τ_c the planted data draws, a placebo: 0 expected). The shared row is measured the
same way: TIN's attention logit holds <p_{f(x_i)}, v_t> and v_t holds the target's category embedding, so one shared
table can also decay differently per category. A last table says what (a) is worth: the test AUC of its own term
(the ceiling of any model) against the best single decay, the match count and the mere presence of a match.

Every run: dims 16, Adam lr 0.003, batch 512, 3 epochs, validation AUC picks the checkpoint, Protocol T on the
generator's labelled impressions (3 goals, no goal effect), head (64, 32), one head for all goals; test metrics, mean
± std over seeds.

Run:   python benchmarks/bench_tdpe_category.py --update-readme
Quick: python benchmarks/bench_tdpe_category.py --seeds 0 --users 500 --settings full --json /tmp/t.json
Re-render: python benchmarks/bench_tdpe_category.py --from-json benchmarks/results/tdpe_category.json --update-readme
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.data.batch import TARGET_FIELDS, Batch
from longrec.data.dataset import collate, make_loader
from longrec.data.store import TrajectoryStore
from longrec.eval.metrics import auc
from longrec.models.temporal import time_gap_bucket
from longrec.run import load_run

logger = logging.getLogger("bench_tdpe_category")

GOALS = ("click", "cart", "buy")
TAU_MIN, TAU_MAX = 1.0, 60.0  # (a)'s τ range in days (the generator's defaults)
DATASETS = {
    "planted": {},
    "absent": {"tau_min_days": math.sqrt(TAU_MIN * TAU_MAX), "tau_max_days": math.sqrt(TAU_MIN * TAU_MAX)},
}
ROWS: dict[str, dict[str, Any]] = {
    "shared": {"tdpe": "shared"},
    "by category (cat_2)": {"tdpe": "separate", "tdpe_key": "category", "tdpe_level": 2},
    "by category (SPU)": {"tdpe": "separate", "tdpe_key": "category", "tdpe_level": 3},
}
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"search.method": "none", "data.max_history": 100},
    "search": {"search.method": "category", "search.k": 20, "data.max_history": 200},
}
SETTING_NAMES = {"full": "full history (L = 100)", "search": "category search (K = 20 of 200)"}
TIN = {"name": "tin", "temporal": "time_gap", "head_hidden": [64, 32], "goal_heads": False}
LEVEL = 2  # (a) draws τ per cat_2: the level recovery is measured at (column 1 of target_category)
HOUR, DAY, YEAR = 3600.0, 86_400.0, 365.0 * 86_400.0


def run_name(setting: str, data: str, row: str, seed: int) -> str:
    return re.sub(r"[^\w.-]+", "", f"{setting}-{data}-{row}-{seed}")


# ------------------------------------------------------------------------------------------------- decay recovery
def bucket_gaps(num_buckets: int, min_seconds: float, max_seconds: float) -> np.ndarray:
    """A representative time gap (seconds) of each bucket 1..G-1 of `time_gap_bucket`: the geometric middle of its
    edges (half the first edge for bucket 1, twice the last for bucket G-1). -> [G-1]."""
    edges = np.logspace(math.log10(min_seconds), math.log10(max_seconds), num_buckets - 2)  # [G-2]
    middle = np.sqrt(edges[:-1] * edges[1:])  # [G-3], buckets 2..G-2
    gaps = np.concatenate([[edges[0] / 2], middle, [edges[-1] * 2]])  # [G-1]
    check = time_gap_bucket(torch.from_numpy(gaps), num_buckets, min_seconds, max_seconds).numpy()
    assert (check == np.arange(1, num_buckets)).all(), check
    return gaps


def _target_fields(batch: Batch, repeats: int) -> dict[str, torch.Tensor]:
    """The example's own target fields (not the label), each row repeated `repeats` times."""
    fields = {f: v for f in TARGET_FIELDS if f != "label" and (v := getattr(batch, f)) is not None}
    return {f: v.repeat_interleave(repeats, dim=0) for f, v in fields.items()}


def copies_batch(batch: Batch, gaps: np.ndarray) -> Batch:
    """Attention probe: each example's target repeated once per time-gap bucket as its history (same item, same
    category path, one position), so only the temporal encoding tells the copies apart. History [B, n]."""
    B, n = len(batch), len(gaps)
    assert batch.target_category is not None
    return Batch(
        history=batch.target.unsqueeze(1).expand(B, n).contiguous(),  # [B, n]
        history_mask=torch.ones(B, n, dtype=torch.bool),
        history_category=batch.target_category.unsqueeze(1).expand(B, n, -1).contiguous(),  # [B, n, M]
        history_time_delta=torch.from_numpy(gaps).float().expand(B, n).contiguous(),  # [B, n]
        history_position=torch.ones(B, n, dtype=torch.long),
        **_target_fields(batch, 1),
    )


def single_batch(batch: Batch, gaps: np.ndarray | None) -> Batch:
    """Prediction probe: each example once per time gap with a one-behaviour history, the target itself at that gap
    (rows b·n + j, [B·n, 1]); with gaps None, once with an empty history ([B, 1])."""
    n = 1 if gaps is None else len(gaps)
    assert batch.target_category is not None
    rows = len(batch) * n
    real = gaps is not None
    delta = torch.from_numpy(gaps).float().repeat(len(batch)) if gaps is not None else torch.zeros(rows)  # [B·n]
    return Batch(
        history=batch.target.repeat_interleave(n).unsqueeze(1) * real,  # [B·n, 1]
        history_mask=torch.full((rows, 1), real),
        history_category=batch.target_category.repeat_interleave(n, dim=0).unsqueeze(1) * real,  # [B·n, 1, M]
        history_time_delta=delta.unsqueeze(1) * real,  # [B·n, 1]
        history_position=torch.full((rows, 1), int(real)),
        **_target_fields(batch, n),
    )


def _first_crossing(gaps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """Days at the first gap > 1 hour where `curve` falls below `level` (interpolated in log-gap); a year if never."""
    for j in np.flatnonzero(gaps > HOUR):
        if curve[j] < level:
            x0, x1, y0, y1 = math.log(gaps[j - 1]), math.log(gaps[j]), curve[j - 1], curve[j]
            share = (level - y0) / (y1 - y0) if y1 != y0 else 1.0
            return min(math.exp(x0 + min(max(share, 0.0), 1.0) * (x1 - x0)), YEAR) / DAY
    return YEAR / DAY


def effect_half_life(gaps: np.ndarray, effect: np.ndarray) -> float:
    """Days at which a match's effect on the logit (over an empty history) falls to half its value at <= 1 hour;
    NaN when a recent match has no positive effect."""
    reference = float(effect[gaps <= HOUR].mean())
    return _first_crossing(gaps, effect, reference / 2) if reference > 0 else float("nan")


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    _, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranked)
    return sums[inverse] / np.bincount(inverse)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation over the pairs where both are finite; NaN when either side is constant."""
    keep = np.isfinite(a) & np.isfinite(b)
    ra, rb = ranks(a[keep]), ranks(b[keep])
    if keep.sum() < 3 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def planted_tau(store_folder: Path, store: TrajectoryStore) -> dict[int, float]:
    """τ (days) of each `cat_2` category, by its dense id in the store (the generator's planted parameters)."""
    planted = json.loads((store_folder / "raw" / "synthetic.json").read_text())["planted"]["tau_days_by_category"]
    offset = len(store.vocab("cat_1"))  # category ids are shared by the levels: cat_2's follow cat_1's
    return {offset + i + 1: planted[str(raw)] for i, raw in enumerate(store.vocab("cat_2").to_list())}


@torch.no_grad()
def decay_recovery(run_dir: Path, tau: dict[int, float], samples: int, least: int = 10) -> dict[str, Any]:
    """What a trained model learned of each `cat_2`'s decay, on `samples` validation targets, two ways:

    - attention: on `copies_batch`, the attention-weighted mean log time gap (as days: a smaller value = attention
      decays faster) and the range of the mean log-attention over gaps of 1 hour to a year (how strongly attention
      uses the gap at all);
    - prediction: on `single_batch`, a match's effect on the logit against an empty history, and the gap at which it
      falls to half its value at <= 1 hour (`effect_half_life`: the model's decay of the evidence, through any path).

    Per category (>= `least` targets with a planted τ): Spearman's ρ of each against τ_c, and the medians of the
    fastest and slowest quarters of categories by τ_c."""
    loaded = load_run(run_dir)
    model, store, config = loaded.model, loaded.store, loaded.config
    params = config.model.params
    gaps = bucket_gaps(params.get("time_buckets", 32), params.get("min_gap_seconds", 60.0), YEAR)
    n, later = len(gaps), (gaps > HOUR) & (gaps <= YEAR)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    taken = 0
    for batch in make_loader(store, "valid", 512, config.data.max_history):
        assert batch.target_category is not None
        w = model.attention_weights(copies_batch(batch, gaps))  # [B, n]
        log_w = torch.log(w.clamp_min(1e-30)).numpy()  # [B, n]
        mean_log_gap = (w.numpy() * np.log(gaps / DAY)).sum(1, keepdims=True)  # [B, 1]
        effect = model(single_batch(batch, gaps)).view(len(batch), n) - model(single_batch(batch, None))[:, None]
        rows = np.concatenate([log_w, mean_log_gap, effect.numpy()], axis=1)  # [B, 2n + 1]
        for c, row in zip(batch.target_category[:, LEVEL - 1].tolist(), rows, strict=True):
            sums[c] = sums.get(c, 0.0) + row
            counts[c] = counts.get(c, 0) + 1
        taken += len(batch)
        if taken >= samples:
            break
    categories = sorted(c for c in sums if counts[c] >= least and c in tau)
    means = {c: sums[c] / counts[c] for c in categories}  # [2n + 1] per category
    planted = np.array([tau[c] for c in categories])
    attention_gap = np.array([math.exp(means[c][n]) for c in categories])  # days
    log_range = np.array([np.ptp(means[c][:n][later]) for c in categories])
    effect_life = np.array([effect_half_life(gaps, means[c][n + 1 :]) for c in categories])
    order = np.argsort(planted, kind="stable")
    quarter = max(1, len(categories) // 4)
    fast, slow = order[:quarter], order[-quarter:]
    return {
        "categories": len(categories),
        "rho_attention": spearman(planted, attention_gap),
        "rho_prediction": spearman(planted, effect_life),
        "attention_log_range": float(np.median(log_range)),
        "tau_days": {"fast": float(np.median(planted[fast])), "slow": float(np.median(planted[slow]))},
        "effect_half_life_days": {
            "fast": float(np.nanmedian(effect_life[fast])),
            "slow": float(np.nanmedian(effect_life[slow])),
        },
        "effect_at_hour": float(np.median([means[c][n + 1 :][gaps <= HOUR].mean() for c in categories])),
    }


def signal_ceiling(store: TrajectoryStore, tau: dict[int, float], one_tau: float) -> dict[str, float]:
    """Test AUC of features computed from the same-SPU behaviours (all of each history, like (a)): any match, their
    count, their decayed sum with one τ, and with the planted τ_c (= (a)'s own term, the ceiling of any model)."""
    split = store.samples("test")
    batch = collate(store, split, np.arange(len(split)), 100_000)  # every behaviour before the cutoff
    assert batch.history_category is not None and batch.target_category is not None and batch.label is not None
    same = (batch.history_category[:, :, -1] == batch.target_category[:, -1:]) & batch.history_mask  # [N, L]
    same &= batch.target_category[:, -1:] > 0
    days = batch.history_time_delta.double() / DAY  # [N, L]
    tau_c = torch.tensor([tau.get(int(c), float("nan")) for c in batch.target_category[:, LEVEL - 1].tolist()])
    matches = same.sum(1).double()  # [N]
    features = {
        "any same-SPU behaviour": (matches > 0).double(),
        "count of same-SPU behaviours": torch.log1p(matches),
        f"decayed, one τ ({one_tau:.1f} d)": torch.log1p((torch.exp(-days / one_tau) * same).sum(1)),
        "decayed, planted τ_c ((a)'s term)": torch.log1p((torch.exp(-days / tau_c.double()[:, None]) * same).sum(1)),
    }
    labels = batch.label.numpy()
    return {name: auc(labels, value.numpy()) for name, value in features.items()}


# ------------------------------------------------------------------------------------------------- runs
def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (setting, data, row, seed) and measure its test metrics and decay recovery (a worker, 1 thread)."""
    logging.getLogger("longrec").setLevel(logging.WARNING)
    values = {
        **{f"model.{k}": v for k, v in (TIN | ROWS[job["row"]]).items()},
        **SETTINGS[job["setting"]],
        "model.dim": 16,
        "data.path": job["store"],
        "train.lr": job["lr"],
        "train.batch_size": job["batch_size"],
        "train.epochs": job["epochs"],
        "train.seed": job["seed"],
        "train.metric": "auc",
        "train.threads": 1,
        "train.progress": False,
    }
    result = harness.train_run(values, job["out"])
    tau = {int(c): t for c, t in job["tau"].items()}
    recovery = decay_recovery(Path(job["out"]), tau, job["probe_samples"])
    keep = ("auc", "gauc", "logloss")
    return {k: job[k] for k in ("setting", "data", "row", "seed")} | {
        "seconds": result["seconds"],
        "test": {k: result["test"][k] for k in keep},
        "recovery": recovery,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tdpe-category-"))
    cache = harness.Stores(args.cache)
    stores = {
        data: cache.synthetic(num_users=args.users, mechanisms=("a",), goals=GOALS, **knobs)
        for data, knobs in DATASETS.items()
    }
    reference = planted_tau(stores["planted"].folder, stores["planted"].open())  # τ_c of the planted world
    jobs = [
        {
            "setting": setting,
            "data": data,
            "row": row,
            "seed": seed,
            "store": str(store.path),
            "out": str(work / "runs" / run_name(setting, data, row, seed)),
            "tau": {str(c): t for c, t in reference.items()},  # "absent": the placebo reference
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "probe_samples": args.probe_samples,
        }
        for setting in args.settings
        for data, store in stores.items()
        for row in ROWS
        for seed in args.seeds
    ]
    logger.info("scratch %s", work)
    runs = harness.parallel(
        run_one,
        jobs,
        args.jobs,
        lambda r: (
            f"{r['setting']} {r['data']} {r['row']} seed {r['seed']}: AUC {r['test']['auc']:.4f}, ρ attention "
            f"{r['recovery']['rho_attention']:.2f}, ρ prediction {r['recovery']['rho_prediction']:.2f} "
            f"({r['seconds']:.0f} s)"
        ),
    )
    counts = {data: store.info["counts"] for data, store in stores.items()}
    one_tau = DATASETS["absent"]["tau_min_days"]
    ceiling = signal_ceiling(stores["planted"].open(), reference, one_tau)
    return {"runs": runs, "counts": counts, "signal_ceiling": ceiling, "machine": {"torch_threads": 1}}


# ------------------------------------------------------------------------------------------------- tables
def _mean_std(values: list[float], digits: int = 4) -> str:
    array = np.array(values, dtype=np.float64)
    return f"{np.nanmean(array):.{digits}f} ± {np.nanstd(array):.{digits}f}"


RECOVERY_HEADER = [
    "setting",
    "data",
    "row",
    "ρ attention",
    "ρ prediction",
    "seeds ρ prediction > 0",
    "attention log-range",
    "effect at <= 1 h",
    "effect half-life fast ¼ / slow ¼ (d)",
]


def _recovery_row(runs: list[dict[str, Any]]) -> list[str]:
    rec = [r["recovery"] for r in runs]
    rho = [x["rho_prediction"] for x in rec]
    fast = np.nanmedian([x["effect_half_life_days"]["fast"] for x in rec])
    slow = np.nanmedian([x["effect_half_life_days"]["slow"] for x in rec])
    return [
        _mean_std([x["rho_attention"] for x in rec], digits=2),
        _mean_std(rho, digits=2),
        f"{sum(x > 0 for x in rho)}/{len(rho)}",
        f"{np.mean([x['attention_log_range'] for x in rec]):.3f}",
        f"{np.mean([x['effect_at_hour'] for x in rec]):.2f}",
        f"{fast:.1f} / {slow:.1f}",
    ]


def render(payload: dict[str, Any]) -> str:
    config = payload["config"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in payload["runs"]:
        groups.setdefault((run["setting"], run["data"], run["row"]), []).append(run)
    metrics, recovery = [], []
    for setting in config["settings"]:
        for data in DATASETS:
            base = [r["test"]["auc"] for r in groups.get((setting, data, "shared"), [])]
            for row in ROWS:
                runs = groups.get((setting, data, row))
                if not runs:
                    continue
                auc_values = [r["test"]["auc"] for r in runs]
                delta = "—" if row == "shared" or not base else f"{np.mean(auc_values) - np.mean(base):+.4f}"
                name = [SETTING_NAMES[setting], data, row]
                metrics.append(
                    [
                        *name,
                        _mean_std(auc_values),
                        _mean_std([r["test"]["gauc"] for r in runs]),
                        _mean_std([r["test"]["logloss"] for r in runs]),
                        delta,
                        f"{np.mean([r['seconds'] for r in runs]):.0f}",
                    ]
                )
                recovery.append([*name, *_recovery_row(runs)])
    first = payload["runs"][0]["recovery"]
    counts = payload["counts"]["planted"]
    ceiling = [[name, f"{value:.4f}"] for name, value in payload["signal_ceiling"].items()]
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Synthetic: {config['users']} users × 20 labelled impressions ({counts['samples']['train']:,} train / "
        f"{counts['samples']['test']:,} test samples), 3 goals, Protocol T, only mechanism (a): 'planted' = τ_c per "
        f"cat_2 log-uniform in [{TAU_MIN:g}, {TAU_MAX:g}] days, 'absent' = one τ ({math.sqrt(TAU_MIN * TAU_MAX):.1f} "
        f"days) for every category. TIN, time-gap encoding, {config['epochs']} epochs, Adam lr {config['lr']}, batch "
        f"{config['batch_size']}; test metrics, mean ± std over seeds {config['seeds']}.\n\n"
        + harness.markdown_table(
            ["setting", "data", "row", "AUC", "GAUC (user)", "logloss", "ΔAUC vs shared", "s/run"], metrics
        )
        + "\n\nDecay recovery, per cat_2 with >= 10 of the first "
        f"{config['probe_samples']} validation targets ({first['categories']} categories): Spearman's ρ against the "
        "planted τ_c of (attention) the attention-weighted mean time gap when the history is the target itself at "
        "every gap bucket (60 s to a year), and (prediction) the gap at which a one-behaviour history's effect on the "
        "logit (over an empty history) falls to half its value at <= 1 hour; mean ± std over seeds. Attention "
        "log-range: how far the log-attention of that probe moves between 1 hour and a year (median category; "
        "0 = attention ignores the gap). Effect at <= 1 h: a recent match's logit effect (median category). Effect "
        "half-life of the categories with the fastest and slowest quarter of planted τ (median τ "
        f"{first['tau_days']['fast']:.1f} and {first['tau_days']['slow']:.1f} days, planted half-life τ·ln 2; 365 = "
        "never halves within a year). On 'absent' ρ is a placebo against the τ_c the planted data draws (0 "
        "expected).\n\n"
        + harness.markdown_table(RECOVERY_HEADER, recovery)
        + "\n\nWhat (a) is worth, on the planted data's test split: AUC of features of each history's same-SPU "
        "behaviours (every behaviour before the cutoff, as (a) counts them). The planted τ_c row is (a)'s own term, "
        "so the ceiling of any model; the one-τ row is what the best single decay reaches.\n\n"
        + harness.markdown_table(["feature", "test AUC"], ceiling)
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "tdpe_category", seeds=[0, 1, 2], scratch=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (20 labelled impressions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.003, help="Adam learning rate")
    parser.add_argument("--probe-samples", type=int, default=4096, help="validation targets the decay probe reads")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.main(parser().parse_args(), "tdpe-category", measure, render)
