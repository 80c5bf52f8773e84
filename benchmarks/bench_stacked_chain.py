"""Stacked TIN's query chain on a task that needs it: does feeding layer 1's finding into layer 2 pay, and where?

The task is `longrec.train.probes.TwoHopTask`: the label is 1 iff the history holds the partner of one of the target's
bridges that it holds, and half the samples are hard negatives holding the partner of an *absent* bridge of the
target (target-related, so the target alone cannot tell it from the right one). The synthetic log's (d) pair
(A_t then B_t, both fixed by the target) is not such a task: two heads that each look for one of them from the
target solve it, so the Tencent ablation cannot separate the chain from a second head.

Variants, all Stacked TIN (dim 8, position encoding, no categories):
- L_s = 1 (TIN with identity-initialised projections);
- L_s = 2 with `query_chain` full (the formula), cross (only the cross u = Σα ẽW_V ⊙ qW_Q reads q^(1)),
  attention (only the attention score reads q^(1)), none (two independent TIN heads on the target: the ablation);
- L_s = 3, full and none.
Each under two heads: linear (no hidden layer: without the chain the logit is linear in [u^(1), ..., v_t], each a
product of the target with one pooled behaviour, so no bridge x partner product exists) and an MLP (32 hidden
units, which can learn that product itself).

Training: Adam lr 0.01, batch 128 drawn from 8,192 training samples, test AUC on 2,048 samples of another seed after
500, 1,000 and 3,000 steps, mean ± std over model seeds (one task and data seed). Last columns, for L_s >= 2 at the
end of training: layer 2's attention mass on the target's partners in positives (where that partner matches) and
in hard negatives (where it does not): equal mass means layer 2 does not *find* the match, the cross checks it.

Run:       python benchmarks/bench_stacked_chain.py --update-readme       (5 seeds, ~4 min on 2 cores)
Quick:     python benchmarks/bench_stacked_chain.py --seeds 0 --steps 300 1000 --json /tmp/stacked_chain.json
Re-render: python benchmarks/bench_stacked_chain.py --from-json benchmarks/results/stacked_chain.json --update-readme
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.data.batch import Batch
from longrec.models import build_model
from longrec.train.probes import TwoHopTask, fit_probe

VARIANTS: dict[str, tuple[int, str]] = {  # name -> (L_s, query_chain)
    "L_s=1": (1, "full"),
    "L_s=2 full": (2, "full"),
    "L_s=2 cross": (2, "cross"),
    "L_s=2 attention": (2, "attention"),
    "L_s=2 none": (2, "none"),
    "L_s=3 full": (3, "full"),
    "L_s=3 none": (3, "none"),
}
HEADS: dict[str, tuple[int, ...]] = {"linear": (), "MLP 32": (32,)}
TASK = TwoHopTask()
TRAIN_ROWS, TEST_ROWS, BATCH, LR = 8192, 2048, 128, 1e-2


def partner_attention(model: torch.nn.Module, test: Batch) -> tuple[float, float]:
    """Layer 2's attention mass on the target's partners: in positives (they match) and in negatives (they do not)."""
    with torch.no_grad():
        alpha = model.attention_weights(test)[:, 1]  # [n, L]
    assert test.label is not None
    on_partner = alpha * TASK.target_partners(test.history, test.target)  # [n, L]
    positive = test.label.bool()
    matched = (on_partner * TASK.matches(test.history))[positive].sum(1).mean().item()
    unmatched = (on_partner * ~TASK.matches(test.history))[~positive].sum(1).mean().item()
    return matched, unmatched


def run_one(job: tuple[str, str, int, list[int]]) -> dict[str, Any]:
    """Train one variant from one seed; test AUC at each checkpoint in `steps`."""
    variant, head, seed, steps = job
    torch.set_num_threads(1)
    train, test = TASK.sample(TRAIN_ROWS, seed=1), TASK.sample(TEST_ROWS, seed=2)
    assert test.label is not None
    layers, chain = VARIANTS[variant]
    torch.manual_seed(seed)
    model = build_model(
        "stacked_tin", num_items=TASK.num_items, dim=8, head_hidden=HEADS[head], num_layers=layers,
        num_positions=TASK.length + 1, query_chain=chain,
    )  # fmt: skip
    start = time.perf_counter()
    aucs = fit_probe(model, train, test, max(steps), lr=LR, batch_size=BATCH, seed=seed, checkpoints=steps)
    attention = partner_attention(model.eval(), test) if layers > 1 else None
    seconds = time.perf_counter() - start
    return {"variant": variant, "head": head, "seed": seed, "auc": aucs, "attention": attention, "seconds": seconds}


def summarise(runs: list[dict[str, Any]], steps: list[int]) -> list[list[str]]:
    rows = []
    for head in HEADS:
        baseline = {s: np.mean([r["auc"][s] for r in runs if r["head"] == head and r["variant"] == "L_s=2 none"])
                    for s in steps}  # fmt: skip
        for variant in VARIANTS:
            mine = [r for r in runs if r["head"] == head and r["variant"] == variant]
            if not mine:
                continue
            cells = []
            for s in steps:
                values = [r["auc"][s] for r in mine]
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
            delta = np.mean([r["auc"][max(steps)] for r in mine]) - baseline[max(steps)]
            attn = [r["attention"] for r in mine if r["attention"] is not None]
            matched = f"{np.mean([a[0] for a in attn]):.3f}" if attn else "—"
            unmatched = f"{np.mean([a[1] for a in attn]):.3f}" if attn else "—"
            rows.append([head, variant, *cells, f"{delta:+.3f}", matched, unmatched])
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    steps = sorted(set(args.steps))
    jobs = [(v, h, s, steps) for h in HEADS for v in VARIANTS for s in args.seeds]
    context = multiprocessing.get_context("spawn")  # torch state must not be forked into workers
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        runs = list(pool.map(run_one, jobs))
    return {"task": repr(TASK), "steps": steps, "runs": runs}


def render(payload: dict[str, Any]) -> str:
    config, steps = payload["config"], payload["steps"]
    runs = [run | {"auc": {int(s): auc for s, auc in run["auc"].items()}} for run in payload["runs"]]  # JSON: str keys
    header = ["head", "variant", *[f"AUC @ {s} steps" for s in steps], f"vs L_s=2 none @ {max(steps)}",
              "layer-2 α on partner, pos (match)", "neg (no match)"]  # fmt: skip
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {len(runs)} runs in "
        f"{payload['seconds'] / 60:.1f} min ({config['jobs']} processes, 1 thread each). Task: `{payload['task']}`, "
        f"{TRAIN_ROWS:,} training and {TEST_ROWS:,} test samples; Adam lr {LR}, batch {BATCH}; mean ± std over "
        f"model seeds {config['seeds']}.\n\n" + harness.markdown_table(header, summarise(runs, steps))
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "stacked_chain", seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", nargs="+", type=int, default=[500, 1000, 3000], help="AUC checkpoints")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "stacked-chain", measure, render)
