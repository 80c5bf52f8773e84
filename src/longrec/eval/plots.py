"""PNG plots redrawn from saved numbers (`analysis.json`, `metrics.jsonl`). matplotlib (Agg) is imported inside each
function, so `import longrec` never needs it; it comes with the `plots` and `dev` extras."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["attention_curves", "field_shares", "group_attention", "retrieval", "validation_curve"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "longrec analyze draws PNGs with matplotlib, which is not installed. Install it with "
            "`pip install -c constraints.txt 'longrec[plots]'`."
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _gap_label(bucket: int, num_buckets: int) -> str:
    """Approximate upper edge of a time-gap bucket (see models.tin.time_gap_bucket's defaults)."""
    if bucket == 0:
        return "0"
    lo, hi = math.log10(60.0), math.log10(365 * 86400.0)
    edge = 10 ** (lo + (hi - lo) * (bucket - 1) / max(num_buckets - 3, 1))
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if edge >= size:
            return f"{edge / size:.0f}{unit}"
    return f"{edge:.0f}s"


def attention_curves(
    profile: dict[str, Any], goal_names: list[str], out: Path, title: str, group: str = "goal"
) -> list[str]:
    """Mean attention weight vs relative position and vs time gap, one line per goal with data (or per value of
    another TDPE key, `group`: e.g. "category", drawn to attention_by_position_per_category.png, ...)."""
    plt = _pyplot()
    paths = []
    suffix = "" if group == "goal" else f"_per_{group}"
    for key, xlabel, name in (
        ("position", "relative position to the target (1 = most recent)", f"attention_by_position{suffix}.png"),
        ("gap", "time gap to the target (bucket upper edge)", f"attention_by_time_gap{suffix}.png"),
    ):
        means, counts = profile[f"{key}_mean"], profile[f"{key}_count"]
        fig, ax = plt.subplots(figsize=(7, 4))
        # Buckets with too few behaviours are noise: keep those holding >= 20 (fewer on tiny data).
        least = min(20.0, max(1.0, sum(map(sum, counts)) / 1000))
        for goal, (row, n) in enumerate(zip(means, counts, strict=True)):
            xs = [x for x in range(len(row)) if n[x] >= least]
            if not xs:
                continue
            label = goal_names[goal] if goal < len(goal_names) else f"{group} {goal}"
            mean_gap = profile.get("mean_gap_days", [])
            if key == "gap" and goal < len(mean_gap) and mean_gap[goal] == mean_gap[goal]:  # not NaN
                label += f" (attention-weighted mean gap {mean_gap[goal]:.1f} d)"
            ax.plot(xs, [row[x] for x in xs], marker="." if key == "gap" else None, label=label)
        if key == "position":
            ax.set_xscale("log")
        else:
            ticks = list(range(0, len(means[0]), 3))
            ax.set_xticks(ticks, [_gap_label(t, len(means[0])) for t in ticks])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean attention weight")
        ax.set_title(f"Attention by {'position' if key == 'position' else 'time gap'} per {group}: {title}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title=group, fontsize="small")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(str(out / name))
    return paths


def group_attention(profile: dict[str, Any], out: Path, title: str) -> str:
    """DSI-TIN: each field group's mean attention weight vs relative position."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in zip(profile["group_names"], profile["group_position_mean"], strict=True):
        xs = [x for x in range(1, len(row)) if row[x] == row[x]]  # skip NaN (no behaviour at that position)
        ax.plot(xs, [row[x] for x in xs], label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel("relative position to the target (1 = most recent)")
    ax.set_ylabel("mean attention weight")
    ax.set_title(f"Attention by field group: {title}")
    ax.legend(title="attention fields")
    fig.tight_layout()
    path = out / "attention_by_field_group.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def field_shares(modules: list[str], shares: list[dict[str, float]], out: Path, title: str) -> str:
    """DSI-TIN: one stacked bar per attention module, each field's share of what moves its attention."""
    plt = _pyplot()
    fields = list(dict.fromkeys(f for module in shares for f in module))
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(modules)))
    left = [0.0] * len(modules)
    for field in fields:
        widths = [module.get(field, 0.0) for module in shares]
        ax.barh(range(len(modules)), widths, left=left, label=field)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(modules)), modules)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the attention logit's spread over a history")
    ax.set_title(f"What drives attention, by field: {title}")
    ax.legend(title="term", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    path = out / "attention_by_field.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def retrieval(example: dict[str, Any], out: Path, title: str, k: int) -> str:
    """One sample's history on a time axis; each searcher's row marks the behaviours it kept."""
    plt = _pyplot()
    kept: dict[str, list[bool]] = example["kept"]
    x = [max(g, 1e-3) for g in example["gap_days"]]
    depth = example.get("depth", [0] * len(x))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(kept)))
    for row, flags in enumerate(kept.values()):
        ax.scatter(x, [row] * len(x), s=6, c="lightgray")
        xs = [xi for xi, f in zip(x, flags, strict=True) if f]
        cs = [d for d, f in zip(depth, flags, strict=True) if f]
        points = ax.scatter(xs, [row] * len(xs), s=30, c=cs, cmap="viridis", vmin=0, vmax=max(max(depth, default=1), 1))
    ax.set_yticks(range(len(kept)), list(kept))
    ax.set_xscale("log")
    ax.set_xlabel("time before the target (days)")
    ax.set_title(f"Behaviours kept by each searcher (K = {k}); colour = taxonomy match depth\n{title}", fontsize=10)
    if kept:
        fig.colorbar(points, ax=ax, label="match depth")
    fig.tight_layout()
    path = out / "search_retrieval.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def validation_curve(lines: list[dict[str, Any]], out: Path, title: str) -> str:
    """Validation AUC / GAUC and logloss against the training step (from metrics.jsonl)."""
    plt = _pyplot()
    steps = [line["step"] for line in lines]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("auc", "gauc"):
        left.plot(steps, [line.get(key, float("nan")) for line in lines], marker=".", label=key.upper())
    left.set_xlabel("training step")
    left.set_ylabel("validation AUC")
    left.legend()
    right.plot(steps, [line.get("logloss", float("nan")) for line in lines], marker=".", color="tab:red")
    right.set_xlabel("training step")
    right.set_ylabel("validation logloss")
    fig.suptitle(f"Validation curve: {title}")
    fig.tight_layout()
    path = out / "validation_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
