"""The synthetic world: catalogue, unified taxonomy and the planted parameters all users share.

A 3-level unified taxonomy industry (`cat_1`) ⊃ category (`cat_2`) ⊃ SPU (`cat_3`), ids 1-based and unique per
level. Ad items (ids `1 .. num_items`) each belong to one SPU; the ad domain's raw category *is* the SPU
(`source_category = "ad:<spu>"`, identity mapping). Content items (ids `num_items + 1 .. num_items +
num_content_items`, a disjoint range) carry a content tag (`"content:<tag>"`) from the content domain's own taxonomy,
which the mapping table (`taxonomy_map`) sends to a unified (cat_1, cat_2); content never reaches level 3. Brands are
tied to SPUs (structured but signal-free).

The planted parameters the mechanisms read are drawn here, whether or not the mechanism is on (so switching one off
leaves the others' draws alone): (a)'s τ per category, (d)'s ordered pair per target category, (f)'s hidden item
quality q ~ N(0, 1). (e) sets the per-goal τ factors, and (g) turns the least popular categories into memory
categories (no prior mass).
Shapes: C categories, S SPUs, I ad items, G content tags, J content items; arrays are indexed by 1-based id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from longrec.ingest.synthetic.config import SyntheticConfig
from longrec.ingest.synthetic.mechanisms import SCENES

__all__ = ["Segments", "World", "build_world", "taxonomy_map"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Segments:
    """Members grouped by a parent id, with a Zipf popularity within each group, for vectorised sampling."""

    members: IntArray  # [n] member ids, sorted by group
    cdf: FloatArray  # [n] group id + cumulative within-group probability in (0, 1]; increasing

    def sample(self, groups: IntArray, rng: np.random.Generator) -> IntArray:
        """One member per query group, by popularity. groups [Q] -> member ids [Q]."""
        u = np.minimum(rng.random(groups.shape[0]), 1.0 - 1e-9)  # [Q]; < 1 keeps the draw inside its group
        return self.members[np.searchsorted(self.cdf, groups + u, side="right")]  # [Q]


def _segments(groups: IntArray, exponent: float, rng: np.random.Generator, first_id: int) -> Segments:
    """Zipf-within-group sampler; `groups[j]` is the parent of member `first_id + j`, ranks shuffled per group."""
    n = groups.shape[0]
    perm = rng.permutation(n)  # [n] random popularity ranks
    order = perm[np.argsort(groups[perm], kind="stable")]  # [n] members sorted by group, random order inside
    g = groups[order]  # [n]
    first = np.r_[True, g[1:] != g[:-1]]  # [n] first member of each group
    last = np.r_[g[1:] != g[:-1], True]  # [n]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))  # [n] index of the group's first member
    weight = (np.arange(n) - start + 1.0) ** -exponent  # [n] rank^-s
    cumulative = np.cumsum(weight)  # [n]
    before = (cumulative - weight)[start]  # [n] mass of the earlier groups
    total = cumulative[last][np.cumsum(first) - 1] - before  # [n] mass of the member's group
    within = (cumulative - before) / total  # [n] in (0, 1]
    within[last] = 1.0  # exact, so a draw never spills into the next group
    return Segments(members=(order + first_id).astype(np.int64), cdf=g + within)


def _assign_parents(num_children: int, num_parents: int, rng: np.random.Generator) -> IntArray:
    """Parent id (1-based) of each child, every parent used at least once. -> [num_children]."""
    extra = rng.integers(1, num_parents + 1, num_children - num_parents)  # [children - parents]
    return rng.permutation(np.concatenate([np.arange(1, num_parents + 1), extra])).astype(np.int64)


@dataclass(frozen=True)
class World:
    """Catalogue, taxonomy and planted parameters shared by all users. Arrays are indexed by 1-based id (0 unused)."""

    industry_of_category: IntArray  # [C + 1] cat_1 of each cat_2
    category_of_spu: IntArray  # [S + 1] cat_2 of each SPU
    spu_of_item: IntArray  # [I + 1] SPU of each ad item
    brand_of_spu: IntArray  # [S + 1]
    category_of_tag: IntArray  # [G + 1] unified cat_2 of each content tag
    tag_of_content: IntArray  # [J + 1] tag of each content item (local index 1..J)
    category_cdf: FloatArray  # [C] cumulative popularity prior over categories 1..C
    items_by_category: Segments
    items_by_spu: Segments
    tags_by_category: Segments
    contents_by_tag: Segments
    tau_days: FloatArray  # [C + 1] (a): τ of each target category
    pair_first: IntArray  # [C + 1] (d): A_t
    pair_second: IntArray  # [C + 1] (d): B_t
    quality: FloatArray  # [I + 1] (f): hidden item quality
    goal_factor: FloatArray  # [T] (e): τ multiplier per goal (ones when (e) is off)
    memory_spus: IntArray  # [S_g] (g): SPUs of the memory categories, sorted (empty when (g) is off)
    scene_category_map: IntArray  # [Z, C + 1] (h): π_z(c), the history category a target of c relates to in scene z

    def sample_categories(self, size: int, rng: np.random.Generator) -> IntArray:
        """Categories drawn from the popularity prior. -> [size] in 1..C."""
        return _sample_categories(self.category_cdf, size, rng)


def _sample_categories(cdf: FloatArray, size: int, rng: np.random.Generator) -> IntArray:
    """Categories drawn from a cumulative prior over 1..C. -> [size]."""
    index = np.searchsorted(cdf, rng.random(size), side="right")  # [size]
    return np.minimum(index, cdf.shape[0] - 1).astype(np.int64) + 1


def build_world(cfg: SyntheticConfig, rng: np.random.Generator) -> World:
    C, S = cfg.num_categories, cfg.num_spus
    industry_of_category = np.r_[0, _assign_parents(C, cfg.num_industries, rng)]  # [C + 1]
    category_of_spu = np.r_[0, _assign_parents(S, C, rng)]  # [S + 1]
    spu_of_item = np.r_[0, _assign_parents(cfg.num_items, S, rng)]  # [I + 1]
    brand_of_spu = np.r_[0, rng.integers(1, cfg.num_brands + 1, S)]  # [S + 1]
    category_of_tag = np.r_[0, _assign_parents(cfg.num_content_tags, C, rng)]  # [G + 1]
    tag_of_content = np.r_[0, _assign_parents(cfg.num_content_items, cfg.num_content_tags, rng)]  # [J + 1]
    rank = rng.permutation(C)  # [C] popularity rank of category c + 1
    prior = (rank + 1.0) ** -cfg.category_zipf_exponent  # [C]
    memory_spus = np.zeros(0, np.int64)  # [S_g]
    if cfg.on("g"):  # the least popular categories: no prior mass, so only the planted memories ever show them
        memory = np.argsort(rank)[C - cfg.g_categories :] + 1  # [g_categories] category ids
        prior[memory - 1] = 0.0
        memory_spus = np.flatnonzero(np.isin(category_of_spu, memory)).astype(np.int64)  # [S_g]
    category_cdf = np.cumsum(prior / prior.sum())  # [C]
    s = cfg.zipf_exponent
    items_by_category = _segments(category_of_spu[spu_of_item[1:]], s, rng, first_id=1)
    items_by_spu = _segments(spu_of_item[1:], s, rng, first_id=1)
    tags_by_category = _segments(category_of_tag[1:], s, rng, first_id=1)
    contents_by_tag = _segments(tag_of_content[1:], s, rng, first_id=1)
    log_tau = rng.uniform(math.log(cfg.tau_min_days), math.log(cfg.tau_max_days), C)  # [C]
    tau_days = np.r_[0.0, np.exp(log_tau)]  # [C + 1]
    pair_first = np.zeros(C + 1, np.int64)  # [C + 1]
    pair_second = np.zeros(C + 1, np.int64)  # [C + 1]
    if C >= 3:  # A_t, B_t among the most popular categories, so that the pair does occur in histories
        pool = np.argsort(rank)[: max(3, min(cfg.pair_pool, C))] + 1  # [pool] category ids, most popular first
        target = np.arange(1, C + 1)  # [C]
        first, second = rng.choice(pool, C), rng.choice(pool, C)  # [C] each
        bad = (first == target) | (second == target) | (first == second)  # [C]
        while bad.any():  # rejection sampling; terminates since the pool has >= 3 categories
            first[bad], second[bad] = rng.choice(pool, int(bad.sum())), rng.choice(pool, int(bad.sum()))
            bad = (first == target) | (second == target) | (first == second)
        pair_first[1:], pair_second[1:] = first, second
    quality = np.r_[0.0, rng.standard_normal(cfg.num_items)]  # [I + 1]
    goal_factor = np.asarray(cfg.goal_decay_factors if cfg.on("e") else [1.0] * len(cfg.goals), dtype=np.float64)
    scene_category_map = _scene_category_map(cfg, rng)  # [Z, C + 1]; draws only when (h) is on
    return World(
        industry_of_category=industry_of_category,
        category_of_spu=category_of_spu,
        spu_of_item=spu_of_item,
        brand_of_spu=brand_of_spu,
        category_of_tag=category_of_tag,
        tag_of_content=tag_of_content,
        category_cdf=category_cdf,
        items_by_category=items_by_category,
        items_by_spu=items_by_spu,
        tags_by_category=tags_by_category,
        contents_by_tag=contents_by_tag,
        tau_days=tau_days,
        pair_first=pair_first,
        pair_second=pair_second,
        quality=quality,
        goal_factor=goal_factor,
        memory_spus=memory_spus,
        scene_category_map=scene_category_map,
    )


def _scene_category_map(cfg: SyntheticConfig, rng: np.random.Generator) -> IntArray:
    """(h): π_z per scene z, as rows of a [Z, C + 1] table (column 0 unused): the identity for the scenes in
    `h_identity_scenes`, a random derangement of 1..C (π_z(c) != c for every c) for every other scene.

    The identity everywhere when (h) is off, drawn last so that configs without (h) keep their random draws.
    """
    C = cfg.num_categories
    table = np.tile(np.arange(C + 1, dtype=np.int64), (len(SCENES), 1))  # [Z, C + 1] identity
    if not cfg.on("h"):
        return table
    for z, scene in enumerate(SCENES):
        if scene in cfg.h_identity_scenes:
            continue
        shift = rng.permutation(C)  # a random cycle through all categories: c -> next in the cycle, never c itself
        table[z, 1 + shift] = 1 + np.roll(shift, -1)
    return table


def taxonomy_map(cfg: SyntheticConfig, world: World) -> pl.DataFrame:
    """The mapping table of both domains (taxonomy_map.csv): domain, source_category -> cat_1..cat_3, as
    `longrec.ingest.taxonomy.read_taxonomy_map` reads it; content rows have a null cat_3."""
    spu = np.arange(1, cfg.num_spus + 1)  # [S]
    tag = np.arange(1, cfg.num_content_tags + 1)  # [G]
    ad = pl.DataFrame(
        {
            "domain": "ad",
            "source_category": [f"ad:{s}" for s in spu.tolist()],
            "cat_1": world.industry_of_category[world.category_of_spu[spu]],
            "cat_2": world.category_of_spu[spu],
            "cat_3": spu,
        }
    )
    content = pl.DataFrame(
        {
            "domain": "content",
            "source_category": [f"content:{g}" for g in tag.tolist()],
            "cat_1": world.industry_of_category[world.category_of_tag[tag]],
            "cat_2": world.category_of_tag[tag],
            "cat_3": pl.Series([None] * tag.shape[0], dtype=pl.Int64),
        }
    )
    return pl.concat([ad, content])
