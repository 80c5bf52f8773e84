"""Checks that model configs share: ints, layer widths, the behaviour-embedding fields, head options.

Each raises a `ValueError` that names the config class and field, what is expected and what was given, so a model's
`__post_init__` reports a bad value at load time, never deep inside `forward`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "HEAD_NORMS",
    "INITS",
    "check_behaviour_config",
    "check_bool",
    "check_head_options",
    "check_int",
    "check_sizes",
]

HEAD_NORMS = ("none", "batch", "layer")
INITS = ("default", "normal")


def check_head_options(owner: str, head_norm: object, init: object) -> None:
    """Raise `ValueError` unless `head_norm` is one of `HEAD_NORMS` and `init` one of `INITS`."""
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"{owner}.head_norm must be one of {', '.join(HEAD_NORMS)}. Got {head_norm!r} instead.")
    if init not in INITS:
        raise ValueError(f"{owner}.init must be one of {', '.join(INITS)}. Got {init!r} instead.")


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> None:
    """Raise `ValueError` unless `value` is an int >= minimum (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{owner}.{name} must be {expected}. Got {value!r} instead.")


def check_sizes(owner: str, name: str, value: object) -> tuple[int, ...]:
    """Layer widths as a tuple of positive ints; a list (what `config.json` holds) is accepted and converted."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}.{name} must be a tuple of positive ints (layer widths). Got {value!r} instead.")
    for i, width in enumerate(value):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{owner}.{name}[{i}] must be a positive int (a layer width). Got {width!r} instead.")
    return tuple(value)


def check_behaviour_config(
    owner: str, num_items: object, num_categories: object, taxonomy_levels: object, dim: object, init_std: object
) -> None:
    """Check the fields every `BehaviourEmbedding` user declares; messages name `owner` (the config class)."""
    check_int(owner, "num_items", num_items, minimum=2)  # id 0 is padding, so one real item needs 2 rows
    check_int(owner, "num_categories", num_categories, minimum=0)
    check_int(owner, "taxonomy_levels", taxonomy_levels, minimum=0)
    check_int(owner, "dim", dim)
    if num_categories != 0 and taxonomy_levels == 0:
        raise ValueError(
            f"{owner}.taxonomy_levels must be >= 1 when num_categories = {num_categories} > 0 (M, the depth of "
            "history_category [B, L, M]). Got 0 instead; set num_categories = 0 to drop the category feature."
        )
    if num_categories == 1:
        raise ValueError(f"{owner}.num_categories must be 0 (no categories) or >= 2 (id 0 is padding). Got 1 instead.")
    if isinstance(init_std, bool) or not isinstance(init_std, int | float) or not init_std > 0:
        raise ValueError(f"{owner}.init_std must be a positive float. Got {init_std!r} instead.")


def check_bool(owner: str, name: str, value: object) -> None:
    """Raise `ValueError` unless `value` is a bool (1 and 0 are rejected: a flag is a flag)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool (true or false). Got {value!r} instead.")
