"""Interop parity: longrec against the DARE reference code on identical sample files (Taobao, Protocol A).

Question: trained on the same three sample files with the reference's settings, how close do longrec's DARE, TWIN,
TWIN (hard) and both DIN variants come to the public DARE implementation (thuml/DARE, commit c72e087), and which of
longrec's fidelity options closes which gap?

Data: ../shared/data/taobao_protocol_a_samples (train/valid/test Parquet built by the reference's own preprocessing,
Protocol A, users with >= 50 behaviours), imported once with `import_samples(..., ids="keep")`, so that longrec sees
the reference's ids, histories and row order.

Settings (the reference's scripts/taobao.sh rows, with batch 191 and validation every 19 steps): dims 16 (item,
category, time), time = relative position (max 200), K = 20, auxiliary loss (TWIN, DARE, DIN top-K), Adam lr 0.01,
L2 1e-6 on non-embedding weights, batch 191, 2 epochs (152 steps each, the last batch 22 rows), validation AUC every
19 steps (16 validations), best-validation checkpoint scored on test. 191 divides the 1,719 valid and test rows, so
the reference's evaluation, which drops a last partial batch, scores every row too.

Settings compared, per variant:
- as before: longrec's defaults (no normalisation at the head inputs, PyTorch's init with N(0, 0.05²) embeddings,
  hard search leaves unmatched slots empty, training samples reshuffled every epoch);
- as the reference: `model.head_norm = "batch"` (BatchNorm at the input of the main and auxiliary heads, evaluated
  in eval mode with its running statistics, not the reference's train mode), `model.init = "normal"` with
  `init_std = 0.01` (every weight but the biases, embeddings included, from N(0, 0.01²)), `search.fill = "latest"`
  (hard search only: slots without a same-category behaviour take the most recent other ones) and
  `train.shuffle = false` (the reference reads its once-shuffled training file in the same order every epoch);
- one row per option: that option alone on top of "as before", and "as the reference" with LayerNorm heads
  (`head_norm = "layer"`, no batch dependence) in place of BatchNorm.

The reference's numbers (`REFERENCE`) were measured by running the reference code on the same files (see its "how"
entry); this script does not run it, and they go into the results JSON as the `reference` block.

Run:       python benchmarks/bench_interop_parity.py --update-readme       (5 variants, 3 seeds; ~20 min, 1 thread)
Quick:     python benchmarks/bench_interop_parity.py --quick               (1 seed, 1 epoch, TWIN and TWIN (hard))
Re-render: python benchmarks/bench_interop_parity.py --from-json benchmarks/results/interop_parity.json --update-readme
"""

from __future__ import annotations

import argparse
import atexit
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np

from longrec.data.interop import import_samples

SAMPLES = harness.SHARED_DATA / "taobao_protocol_a_samples"
SPLITS = ("train", "valid", "test")
# The reference's settings on these files (its taobao.sh rows; batch and validation interval from the issue).
STEPS_PER_EPOCH, EVAL_EVERY, BATCH = 152, 19, 191
COMMON: dict[str, Any] = {
    "model.dim": 16,
    "data.max_history": 200,
    "train.lr": 0.01,
    "train.l2": 1e-6,
    "train.batch_size": BATCH,
    "train.eval_every": EVAL_EVERY,
    "train.metric": "auc",
    "train.progress": False,
}
# name -> (model table, search table, the reference row it is compared with).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "DARE": ({"name": "dare", "aux_loss": True}, {"method": "soft", "k": 20}, "DARE"),
    "TWIN": ({"name": "twin", "aux_loss": True}, {"method": "soft", "k": 20}, "TWIN"),
    "TWIN (hard)": ({"name": "twin", "aux_loss": True}, {"method": "category", "k": 20}, "TWIN (hard)"),
    "DIN": ({"name": "din"}, {"method": "none"}, "DIN"),
    "DIN top-K": ({"name": "din_topk", "aux_loss": True, "k": 20}, {"method": "none"}, "DIN"),
}
QUICK_VARIANTS = ["TWIN", "TWIN (hard)"]
# The options that make longrec train as the reference does: name -> (dotted values, for hard search only).
OPTIONS: dict[str, tuple[dict[str, Any], bool]] = {
    "BN heads": ({"model.head_norm": "batch"}, False),
    "N(0, 0.01) init": ({"model.init": "normal", "model.init_std": 0.01}, False),
    "fill latest": ({"search.fill": "latest"}, True),
    "file order": ({"train.shuffle": False}, False),
}
REFERENCE_ROWS = list(dict.fromkeys(row for _, _, row in VARIANTS.values()))  # DARE, TWIN, TWIN (hard), DIN
BEFORE, AFTER, LAYER = "as before", "as the reference", "as the reference, LayerNorm heads"

# The reference code run on the same files (seeds 1, 2, 3; measured, not run by this script): test metrics of the
# best-validation checkpoint per seed. "auc" is the rank AUC (ties 1/2, as longrec computes it); "auc_own" is what the
# reference prints: its trapezoid (utils.calc_auc) averages each negative's column with the previous one, which reads
# (positives above the lowest negative) / (2 · negatives) lower, 0.00042-0.00044 in the runs here. GAUC groups by user;
# logloss is the main head's BCE alone (the reference's own "loss" adds the auxiliary loss). "diagnostics": the
# reference with one change each (the eval-mode question and two experiments on the TWIN gap).
REFERENCE: dict[str, Any] = {
    "code": "thuml/DARE (train_pytorch.py)",
    "commit": "c72e087",
    "seeds": [1, 2, 3],
    "how": (
        "Its train_pytorch.py, unchanged, on the three Parquet files converted to its .npy sample format "
        "(histories left-padded with 0 to 200, labels [1, 0] / [0, 1], the training file as one "
        "train_0001_28863.npy read in file order, valid and test as val.npy and test.npy), with each row's "
        "scripts/taobao.sh arguments except the data paths, -item_n, -cate_n, -batch_size 191 and -test_interval "
        "19; CPU, 1 torch thread, the three seeds in one process as its -seed list runs them. Its test predictions "
        "were recorded to compute the rank AUC, GAUC by user and the main head's logloss as longrec does. As "
        "shipped, its BatchNorm stays in training mode at evaluation, and -use_time (a store_false flag) turns the "
        "time embedding off in the DIN row."
    ),
    "arguments": (
        "-max_length 200 -item_n 57566 -cate_n 2979 -long_seq_split 0:200 -short_model_type DIN "
        "-long_model_type DIN -use_aux_loss True -use_time_mode concat -time_embedding_dim 16 "
        "-category_embedding_dim 16 -top_k 20 -epoch 2 -batch_size 191 -learning_rate 0.01 -weight_decay "
        "0.000001 -test_interval 19 -log_interval 50 -seed 1 2 3"
    ),
    "row_arguments": {
        "DARE": "-use_cross_feature True -attn_func scaled_dot_product -hard_or_soft soft -model_name DARE",
        "TWIN": "-use_cross_feature True -attn_func scaled_dot_product -hard_or_soft soft -model_name twin",
        "TWIN (hard)": "-use_cross_feature True -attn_func scaled_dot_product -hard_or_soft hard -model_name twin",
        "DIN": "-use_cross_feature True -attn_func learnable -hard_or_soft soft -model_name DIN -use_time",
    },
    "diagnostics_how": (
        "Each diagnostic row is a copy of the reference with one change, run like the rows above: eval "
        "mode = model.eval() before its evaluate() and model.train() after; no padding = the "
        "soft-search mask multiplied by the history mask after its top-K (model/din_pytorch.py); init "
        "= after its N(0, 0.01²) loop, BatchNorm weights set to 1 and PReLU slopes to 0.25 "
        "(train_pytorch.py)."
    ),
    "rows": {
        "DARE": {
            "auc": [0.809804, 0.826648, 0.816747],
            "gauc": [0.819372, 0.82548, 0.815009],
            "logloss": [0.588029, 0.567285, 0.916659],
            "auc_own": [0.809367, 0.826212, 0.816331],
        },
        "TWIN": {
            "auc": [0.805136, 0.817884, 0.83091],
            "gauc": [0.810646, 0.795812, 0.826353],
            "logloss": [0.57854, 0.60945, 0.546574],
            "auc_own": [0.8047, 0.817448, 0.830474],
        },
        "TWIN (hard)": {
            "auc": [0.815074, 0.821993, 0.817549],
            "gauc": [0.833333, 0.817627, 0.816754],
            "logloss": [0.561315, 0.609946, 0.527597],
            "auc_own": [0.814639, 0.821556, 0.817113],
        },
        "DIN": {
            "auc": [0.820485, 0.809347, 0.781472],
            "gauc": [0.826353, 0.815881, 0.780105],
            "logloss": [0.610362, 0.57624, 1.281781],
            "auc_own": [0.820049, 0.80891, 0.781036],
        },
    },
    "diagnostics": [
        {
            "row": "DARE",
            "change": "BatchNorm in eval mode at evaluation (validation and test)",
            "auc": [0.805919, 0.82682, 0.832771],
            "gauc": [0.806283, 0.828098, 0.831588],
            "logloss": [0.635166, 0.63054, 0.621533],
            "auc_own": [0.805482, 0.826384, 0.832335],
        },
        {
            "row": "TWIN",
            "change": "BatchNorm in eval mode at evaluation (validation and test)",
            "auc": [0.809738, 0.818965, 0.826232],
            "gauc": [0.808901, 0.815009, 0.820244],
            "logloss": [0.707763, 0.687471, 0.616658],
            "auc_own": [0.809302, 0.818529, 0.825796],
        },
        {
            "row": "TWIN (hard)",
            "change": "BatchNorm in eval mode at evaluation (validation and test)",
            "auc": [0.808358, 0.825102, 0.823346],
            "gauc": [0.80541, 0.817627, 0.827225],
            "logloss": [0.778307, 0.793358, 0.507787],
            "auc_own": [0.807923, 0.824666, 0.82291],
        },
        {
            "row": "DIN",
            "change": "BatchNorm in eval mode at evaluation (validation and test)",
            "auc": [0.822667, 0.807434, 0.810297],
            "gauc": [0.822862, 0.80541, 0.808901],
            "logloss": [0.630847, 0.609688, 0.618895],
            "auc_own": [0.822231, 0.806998, 0.809861],
        },
        {
            "row": "TWIN",
            "change": "top-K never keeps padding (histories shorter than K attend only their real behaviours)",
            "auc": [0.80566, 0.833856, 0.827052],
            "gauc": [0.799302, 0.840314, 0.818499],
            "logloss": [0.610069, 0.532154, 0.737603],
            "auc_own": [0.805224, 0.833419, 0.826615],
        },
        {
            "row": "TWIN",
            "change": (
                "BatchNorm weights 1 and PReLU slopes 0.25 at init (N(0, 0.01²) only for Linear weights and embeddings)"
            ),
            "auc": [0.761859, 0.781308, 0.753217],
            "gauc": [0.755672, 0.763525, 0.753927],
            "logloss": [0.570853, 0.525056, 0.579581],
            "auc_own": [0.761423, 0.780871, 0.752781],
        },
    ],
}


def settings_of(variant: str, options: list[str]) -> dict[str, Any]:
    """The dotted config of `variant` with `options` (names of OPTIONS) applied, data and seed left out."""
    model, search, _ = VARIANTS[variant]
    values = COMMON | {f"model.{k}": v for k, v in model.items()} | {f"search.{k}": v for k, v in search.items()}
    for name in options:
        values |= OPTIONS[name][0]
    return values


def rows_of(variant: str) -> dict[str, dict[str, Any]]:
    """The settings trained for `variant`: as before, as the reference, each applicable option alone, LayerNorm."""
    hard = VARIANTS[variant][1]["method"] == "category"
    applicable = [name for name, (_, hard_only) in OPTIONS.items() if hard or not hard_only]
    rows = {BEFORE: settings_of(variant, []), AFTER: settings_of(variant, applicable)}
    rows |= {f"+ {name}": settings_of(variant, [name]) for name in applicable}
    rows[LAYER] = rows[AFTER] | {"model.head_norm": "layer"}
    return rows


def samples_store(stores: harness.Stores) -> harness.Store:
    """The three sample files imported once (ids kept as given), cached like the harness's other stores."""
    files = [SAMPLES / f"{split}.parquet" for split in SPLITS]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{harness.relative(path)} not found: the interop sample files live in ../shared/data beside the "
                "repository."
            )

    def build(folder: Path) -> dict[str, Any]:
        result = import_samples(*files, folder / "store", ids="keep", force=True)
        first, *rest = result.lines()  # "imported <the store's path>: N samples of ...", then the details
        return {"lines": [first.split(": ", 1)[1], *(line.strip() for line in rest)]}

    return stores.get("taobao-samples", {"ids": "keep", "bytes": [p.stat().st_size for p in files]}, build)


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    row: dict[str, float] = {}
    for metric in ("auc", "gauc", "logloss"):
        values = np.array([r[metric] for r in runs], dtype=np.float64)
        row[metric], row[f"{metric}_std"] = float(values.mean()), float(values.std())
    row["best_step"] = float(np.mean([r["best_step"] for r in runs]))
    row["seconds"] = float(np.mean([r["seconds"] for r in runs]))
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    work = args.work
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="bench-parity-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    store = samples_store(harness.Stores(args.cache))
    results: dict[str, dict[str, Any]] = {}
    for variant in args.variants:
        results[variant] = {}
        for row, values in rows_of(variant).items():
            runs = []
            for seed in args.seeds:
                logging.info("%s, %s, seed %d", variant, row, seed)
                config = values | {"data.path": str(store.path), "train.seed": seed, "train.epochs": args.epochs,
                                   "train.threads": args.threads}  # fmt: skip
                r = harness.train_run(config, work / "runs" / re.sub(r"[^\w.-]+", "_", f"{variant}-{row}-{seed}"))
                runs.append({"seed": seed, "best_step": r["best_step"], "seconds": r["seconds"]}
                            | {m: r["test"][m] for m in ("auc", "gauc", "logloss")}
                            | {"valid_auc": r["valid"]["auc"]})  # fmt: skip
            changed = {k: v for k, v in values.items() if k not in COMMON}  # the variant's model/search, the options
            results[variant][row] = {"settings": changed, "table": summarise(runs), "runs": runs}
    return {"data": store.info["lines"], "reference": REFERENCE, "results": results}


def _pm(row: dict[str, float], metric: str) -> str:
    return f"{row[metric]:.4f} ± {row[f'{metric}_std']:.4f}"


def _delta(row: dict[str, float], base: dict[str, float] | None) -> str:
    return f"{row['auc'] - base['auc']:+.4f}" if base else "—"


def mean_std(runs: dict[str, list[float]]) -> dict[str, float]:
    """Mean and std of each metric over seeds: {"auc": [...], ...} -> {"auc": mean, "auc_std": std, ...}."""
    out = {}
    for metric in ("auc", "gauc", "logloss"):
        out[metric], out[f"{metric}_std"] = float(np.mean(runs[metric])), float(np.std(runs[metric]))
    return out


def render(payload: dict[str, Any]) -> str:
    config, reference, results = payload["config"], payload["reference"], payload["results"]
    ref = {name: mean_std(runs) for name, runs in reference.get("rows", {}).items()}
    headline, detail = [], []
    for variant in (v for v in VARIANTS if v in results):  # the JSON sorts its keys: render in the script's order
        rows = {row: results[variant][row] for row in rows_of(variant) if row in results[variant]}
        name = VARIANTS[variant][2]
        target = ref.get(name)
        before, after = rows[BEFORE]["table"], rows[AFTER]["table"]
        compared = f"{name}: {_pm(target, 'auc')}" if target else "—"
        headline.append([variant, compared, _pm(before, "auc"), _delta(before, target), _pm(after, "auc"),
                         _delta(after, target)])  # fmt: skip
        if target:
            detail.append([variant, f"reference ({name})", _pm(target, "auc"), _pm(target, "gauc"),
                           _pm(target, "logloss"), "—", "—", "—", "—"])  # fmt: skip
        for row, entry in rows.items():
            t = entry["table"]
            detail.append([variant, row, _pm(t, "auc"), _pm(t, "gauc"), _pm(t, "logloss"), _delta(t, before),
                           _delta(t, target), f"{t['best_step']:.0f}", f"{t['seconds']:.0f}"])  # fmt: skip
    options = ", ".join(
        f"{name} (`{', '.join(f'{k} = {v!r}' for k, v in values.items())}`)" for name, (values, _) in OPTIONS.items()
    )
    sections = [
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Wall time {payload['seconds'] / 60:.1f} min.",
        "Data: `../shared/data/taobao_protocol_a_samples` (the reference's Protocol A preprocessing, users with >= "
        '50 behaviours), imported once with `import_samples(..., ids="keep")`: ' + "; ".join(payload["data"]) + ".",
        "Settings (the reference's): dims 16, time = relative position, K = 20, aux loss (TWIN, DARE, DIN top-K), "
        f"Adam lr 0.01, L2 1e-6, batch {BATCH}, {config['epochs']} epoch(s), validation AUC every {EVAL_EVERY} "
        f"steps, best-validation checkpoint; longrec seeds {config['seeds']}, {config['threads']} torch thread(s). "
        f"'{AFTER}' = {options} (fill latest for hard search only); '+ option' = that option alone on top of "
        f"'{BEFORE}'; '{LAYER}' = '{AFTER}' with `model.head_norm = 'layer'`.",
    ]
    if reference:
        own = np.mean([np.mean(np.subtract(r["auc"], r["auc_own"])) for r in reference["rows"].values()])
        sections.append(
            f"Reference: {reference['code']} at commit {reference['commit']}, seeds {reference['seeds']}. "
            f"{reference['how']} Arguments: `{reference['arguments']}` plus, per row, "
            + "; ".join(f"{row}: `{reference['row_arguments'][row]}`" for row in REFERENCE_ROWS)
            + f". Its AUC here is the rank AUC; its own `calc_auc` reads {own:.5f} lower (its trapezoid rule)."
        )
    table = harness.markdown_table(["longrec variant", "reference", BEFORE, "Δ", AFTER, "Δ"], headline)
    sections.append(f"**Test AUC against the reference** (mean ± std over seeds; Δ = longrec − reference)\n\n{table}")
    header = ["variant", "setting", "AUC", "GAUC (user)", "logloss", "Δ before", "Δ reference", "best step", "s/run"]
    sections.append(
        "**Every setting** (test metrics, mean ± std; ΔAUC against 'as before' and against the reference; best "
        f"step out of {config['epochs'] * STEPS_PER_EPOCH}, mean; seconds per run)\n\n"
        + harness.markdown_table(header, detail)
    )
    if reference.get("diagnostics"):
        rows = []
        for entry in reference["diagnostics"]:
            t = mean_std(entry)
            rows.append([entry["row"], entry["change"], _pm(t, "auc"), _pm(t, "gauc"), _pm(t, "logloss"),
                         _delta(t, ref[entry["row"]])])  # fmt: skip
        header = ["reference row", "change", "AUC", "GAUC (user)", "logloss", "Δ vs as shipped"]
        sections.append(
            "**The reference with one change** (same files, settings and seeds; run outside this repository). "
            f"{reference['diagnostics_how']}\n\n" + harness.markdown_table(header, rows)
        )
    return "\n\n".join(sections)


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "interop_parity", seeds=[0, 1, 2], threads=1, scratch=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 1 epoch, TWIN and TWIN (hard); JSON to a temporary file"
    )
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; --quick narrows the run and keeps its JSON out of benchmarks/results."""
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        if args.update_readme or args.from_json is not None:
            p.error("--quick measures a smoke run: it neither updates the README nor re-renders a JSON")
        args.seeds, args.epochs, args.variants = args.seeds[:1], 1, QUICK_VARIANTS
        if args.json == p.get_default("json"):
            args.json = Path(tempfile.mkdtemp(prefix="bench-parity-")) / "interop_parity.json"
    return args


if __name__ == "__main__":
    harness.main(parse(), "interop-parity", measure, render)
