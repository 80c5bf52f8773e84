"""Collaborative filtering on the user–item matrix: the top-N protocol, simple baselines and S-Diff.

Unlike the sequence CTR models of `longrec.models`, these see no order and no time: one binary row per user
(docs/cf.md says when that is the right tool).
"""

from longrec.cf.baselines import ease, ease_weights, item_knn, popularity
from longrec.cf.data import (
    Split,
    evaluate_topn,
    interaction_matrix,
    movielens_matrix,
    split_interactions,
    store_matrix,
    top_k,
)
from longrec.cf.sdiff import SDiffConfig, SDiffModel, SpectralBasis, fit_sdiff, sdiff_scores, spectral_basis

__all__ = [
    "SDiffConfig",
    "SDiffModel",
    "SpectralBasis",
    "Split",
    "ease",
    "ease_weights",
    "evaluate_topn",
    "fit_sdiff",
    "interaction_matrix",
    "item_knn",
    "movielens_matrix",
    "popularity",
    "sdiff_scores",
    "spectral_basis",
    "split_interactions",
    "store_matrix",
    "top_k",
]
