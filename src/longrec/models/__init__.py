"""CTR models: one family per file, one `forward(batch) -> logits [B]` contract, and the `MODELS` registry.

Every model takes one frozen config dataclass, lists the optional `Batch` fields it needs in `model.reads`, and is
built the same way by `build_model(name, **params)`. A line in `MODELS` enrolls a model in the contract tests; its
optional capabilities (own loss, auxiliary head, search embeddings, attention introspection, cached user state) are
the protocols of `longrec.models.contract`, checked here when the registry is built.

Shape legend: `B` batch · `L` history length, padded (10²–10⁵) · `K` behaviours kept by search (K ≤ L) · `D`
embedding dim · `F` side-info fields · `M` taxonomy levels · `T` goals (advertising targets) · `C` candidates · `S`
summary tokens · `V` vocabulary · `H` heads.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from longrec.models.contract import check_contract
from longrec.models.dare import DARE, DAREConfig
from longrec.models.din import DIN, DINConfig
from longrec.models.din_topk import DINTopK, DINTopKConfig
from longrec.models.dsi_tin import DSITIN, DSITINConfig
from longrec.models.eta import ETA, ETAConfig
from longrec.models.mean_pool import MeanPool, MeanPoolConfig
from longrec.models.sasrec import TDSASRec, TDSASRecConfig
from longrec.models.sdim import SDIM, SDIMConfig
from longrec.models.sfpnet import SFPNet, SFPNetConfig
from longrec.models.stacked_tin import StackedTIN, StackedTINConfig
from longrec.models.tin import TIN, TINConfig
from longrec.models.twin import TWIN, TWINConfig
from longrec.models.vista import VISTA, VISTAConfig
from longrec.models.vql import VQL, VQLConfig

__all__ = [
    "DATA_SIZE_FIELDS",
    "DIN",
    "MODELS",
    "DINConfig",
    "MeanPool",
    "MeanPoolConfig",
    "build_model",
    "build_model_for_sizes",
    "data_params",
    "model_config",
]

# Model-config fields that come from the prepared data, never from the experiment file.
DATA_SIZE_FIELDS = frozenset(
    {
        "num_users",
        "num_items",
        "num_categories",
        "taxonomy_levels",
        "num_actions",
        "num_domains",
        "num_scenes",
        "num_goals",
        "num_extra",
        "content_dim",  # Σ D_m of the content modalities a run reads (data.content; longrec.data.content)
    }
)

# name -> (config dataclass, module class); the module's constructor takes exactly one config instance.
MODELS: dict[str, tuple[type[Any], type[nn.Module]]] = {
    "dare": (DAREConfig, DARE),
    "din": (DINConfig, DIN),
    "din_topk": (DINTopKConfig, DINTopK),
    "dsi_tin": (DSITINConfig, DSITIN),
    "eta": (ETAConfig, ETA),
    "mean_pool": (MeanPoolConfig, MeanPool),
    "sdim": (SDIMConfig, SDIM),
    "sfpnet": (SFPNetConfig, SFPNet),
    "stacked_tin": (StackedTINConfig, StackedTIN),
    "td_sasrec": (TDSASRecConfig, TDSASRec),
    "tin": (TINConfig, TIN),
    "twin": (TWINConfig, TWIN),
    "vista": (VISTAConfig, VISTA),
    "vql": (VQLConfig, VQL),
}


for _name, (_, _cls) in MODELS.items():  # registration is where a model's capabilities are checked, once
    check_contract(_name, _cls)


def _entry(name: str) -> tuple[type[Any], type[nn.Module]]:
    if name not in MODELS:
        raise KeyError(f"Unknown model '{name}'. Known models: {', '.join(sorted(MODELS))}.")
    return MODELS[name]


def model_config(name: str, **params: Any) -> Any:
    """Build and validate the config dataclass of model `name` (what `config.json` stores under "model").

    Raises:
        KeyError: unknown model name.
        TypeError: a parameter the config does not declare, or a required one missing.
        ValueError: a value the config rejects (from its `__post_init__`).
    """
    config_cls = _entry(name)[0]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = []
    for key in sorted(set(params) - set(fields)):
        close = difflib.get_close_matches(key, fields, n=1)
        unknown.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field {', '.join(unknown)}. Fields: {', '.join(fields)}.")
    no_default = dataclasses.MISSING
    missing = [
        n for n, f in fields.items() if f.default is no_default and f.default_factory is no_default and n not in params
    ]
    if missing:
        raise TypeError(
            f"{config_cls.__name__} needs {', '.join(missing)}; pass the data-derived sizes (see data_params)."
        )
    return config_cls(**params)


def build_model(name: str, **params: Any) -> nn.Module:
    """Build model `name` from its config fields.

    Example:
        >>> from longrec.models import build_model
        >>> model = build_model("din", num_items=100, num_categories=20, taxonomy_levels=2, dim=8)
        >>> model.reads
        ('history_category', 'target_category')

    Raises:
        KeyError: `Unknown model 'dinn'. Known models: din, mean_pool.`
        TypeError / ValueError: see `model_config`.
    """
    return _entry(name)[1](model_config(name, **params))


def data_params(config_cls: type[Any], sizes: Mapping[str, Any]) -> dict[str, Any]:
    """The data-derived sizes (num_items, num_categories, taxonomy_levels, ...) that `config_cls` declares.

    The train loop passes every size the data knows; each model config declares only the vocabularies it embeds,
    so the rest are dropped here instead of failing as unknown fields.
    """
    declared = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in sizes.items() if k in declared}


def build_model_for_sizes(name: str, params: Mapping[str, Any], sizes: Mapping[str, Any]) -> nn.Module:
    """Build model `name` from its hyper-parameters `params` plus the data-derived sizes it declares.

    Args:
        name: a key of `MODELS`.
        params: the model's hyper-parameters (an experiment's `model` table without `name`).
        sizes: the data-derived sizes of a prepared store (`TrajectoryStore.sizes`: num_items, num_categories, ...);
            the ones the model's config does not declare are ignored.

    Raises:
        KeyError / TypeError / ValueError: as `build_model`.
    """
    config_cls = _entry(name)[0]
    known = {k: v for k, v in sizes.items() if k in DATA_SIZE_FIELDS}
    return build_model(name, **data_params(config_cls, known), **params)
