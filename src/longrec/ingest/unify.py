"""Unified commercial trajectories: several behaviour sources -> one canonical log, one taxonomy.

Ad behaviours alone are sparse, so a user's trajectory merges several ad scenarios *and* content domains. `unify`
takes several `Source`s (each a canonical log from a `longrec.ingest` loader, plus the domain and scene it stands for)
and a taxonomy mapping table (`longrec.ingest.taxonomy`), and returns one lazy canonical log that `prepare` turns
into one time-sorted trajectory per user, with a `CoverageReport` of how well each domain's categories map onto the
unified taxonomy. Sources still on disk (`SourceSpec`, `--source`, `--sources` files) are read by
`longrec.ingest.sources`.

**Each source** gets its `domain` (and `scene`, when given) as constant columns, replacing any it had. Its categories
come either from the table, looked up by (domain, value of its category column; compared as text, so 7 and "7" are
the same key) and replacing its own `cat_*` columns, or, for a source with no category column, from its own `cat_*`
columns as they are ("as-is": the source already speaks the unified taxonomy, e.g. Taobao scenarios of one site).
By default the category column is `source_category` when the source has one and a table is given. A row whose key is
not in the table keeps its behaviour with null `cat_*`, and is counted as *unmapped* per domain (the most frequent
keys are listed); a row without a key counts as *no category*. No row is ever dropped here.

**Merging.** Users are matched across sources by raw user id: sources must share one user id space (there is no
per-source user mapping; map ids before loading if they differ). Item ids are taken as they are: the same id in two
domains is one item, so give sources with their own id spaces an `item_prefix` (the report counts item ids shared by
several domains). Columns are the union of the sources' columns (a column a source lacks is null for its rows: a
source without `label` contributes behaviours only); a column with different dtypes across sources becomes Int64 if
all are integers, else text. Sources are concatenated in the order given, and `prepare` sorts by (user, timestamp)
stably, so behaviours of one user in the same second keep the source order, then each source's file order: the
result never depends on anything but the order of the sources.

**Cost.** The coverage report is one streaming pass over the merged frame; `prepare` reads the sources again.

Example:
    >>> from longrec.ingest import load_log  # doctest: +SKIP
    >>> sources = [
    ...     Source(load_log("ub.csv.gz", "taobao", actions=("pv",)), domain="ad", scene="browse"),
    ...     Source(load_log("ub.csv.gz", "taobao", actions=("cart", "fav", "buy")), domain="ad", scene="transact"),
    ... ]  # doctest: +SKIP
    >>> unified = unify(sources)  # doctest: +SKIP
    >>> print("\\n".join(unified.coverage.lines()))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl

from longrec.ingest.reading import LoadedLog, PathLike, _with_hints
from longrec.ingest.schema import CATEGORICAL_COLUMNS, REQUIRED_COLUMNS, FilterReport, check_log
from longrec.ingest.taxonomy import _CAT, MAP_KEYS, TaxonomyMap, _cat_levels, _resize, read_taxonomy_map

__all__ = ["CoverageReport", "DomainCoverage", "Source", "Unified", "unify"]

logger = logging.getLogger(__name__)

NULL_DOMAIN = "(null)"  # how a null domain is named in the report
# Row status in the coverage pass.
_MAPPED, _UNMAPPED, _NO_CATEGORY = 0, 1, 2


@dataclass(frozen=True)
class Source:
    """One behaviour source: a canonical log and the domain/scene it stands for."""

    log: LoadedLog | pl.LazyFrame | pl.DataFrame  # canonical columns (see longrec.ingest.schema)
    domain: str | None = None  # every row's domain; None: the log's own `domain` column
    scene: str | None = None  # every row's scene (app surface); None: the log's own `scene` column, if any
    category: str | None = None  # column looked up in the map; None: 'source_category' if present (and a map given)
    item_prefix: str | None = None  # item ids become text f"{prefix}{id}", to keep id spaces of domains apart
    name: str | None = None  # quoted in errors and the report; default the loaded file, or "source N"


# ----------------------------------------------------------------------------------------------------------------
# The coverage report.


@dataclass
class DomainCoverage:
    """How the rows of one domain map onto the unified taxonomy."""

    rows: int = 0
    mapped: int = 0  # rows with a unified path (from the map, or as-is with some level set)
    unmapped: int = 0  # rows whose category is not in the map for this domain (null path, row kept)
    no_category: int = 0  # rows without a category value (null key, or an as-is row with no level set)
    unmapped_categories: int = 0  # distinct keys behind `unmapped`
    level_rows: list[int] = field(default_factory=list)  # [M] rows with cat_m set

    @property
    def level_coverage(self) -> list[float]:
        """[M] fraction of the domain's rows with cat_m set (0 for an empty domain)."""
        return [n / self.rows if self.rows else 0.0 for n in self.level_rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "mapped": self.mapped,
            "unmapped": self.unmapped,
            "no_category": self.no_category,
            "unmapped_categories": self.unmapped_categories,
            "level_rows": list(self.level_rows),
            "level_coverage": [round(f, 6) for f in self.level_coverage],
        }


@dataclass
class CoverageReport:
    """Mapping coverage per domain and level, the unmapped categories, and what each source contributed."""

    levels: int  # M
    domains: dict[str, DomainCoverage]  # by domain name (NULL_DOMAIN for rows with a null domain)
    unmapped: list[tuple[str, str, int]]  # (domain, source_category, rows), most rows first, at most top N
    sources: list[dict[str, Any]]  # name, domain, scene, category (None: as-is), item_prefix, rows
    map_source: str | None = None  # the map's file name; None: no map
    map_entries: dict[str, int] = field(default_factory=dict)  # keys per domain
    map_duplicates: int = 0  # repeated identical map rows (dropped)
    shared_items: int = 0  # item ids that occur in more than one domain

    def lines(self) -> list[str]:
        """Human-readable report: one line per domain and per source, the top unmapped categories, warnings."""
        out = [f"taxonomy: {self.levels} level(s), " + (f"map {self.map_source} (" if self.map_source else "no map")]
        if self.map_source:
            entries = ", ".join(f"{d} {n:,}" for d, n in self.map_entries.items())
            out[0] += f"{sum(self.map_entries.values()):,} entries: {entries}"
            out[0] += f"; {self.map_duplicates:,} repeated rows dropped)" if self.map_duplicates else ")"
        for domain, c in self.domains.items():
            share = f" ({c.mapped / c.rows:.1%})" if c.rows else ""
            levels = ", ".join(f"cat_{m} {f:.1%}" for m, f in enumerate(c.level_coverage, start=1))
            out.append(
                f"  domain {domain}: {c.rows:,} rows, mapped {c.mapped:,}{share}, unmapped {c.unmapped:,} "
                f"({c.unmapped_categories:,} {'category' if c.unmapped_categories == 1 else 'categories'}), "
                f"no category {c.no_category:,}" + (f"; {levels}" if levels else "")
            )
        for i, s in enumerate(self.sources, start=1):
            how = f"category column '{s['category']}'" if s["category"] else "categories as-is"
            domain = s["domain"] if s["domain"] is not None else "from its column"
            scene = f", scene {s['scene']}" if s["scene"] is not None else ""
            prefix = f", item prefix {s['item_prefix']!r}" if s["item_prefix"] else ""
            label = s["name"] if s["name"] == f"source {i}" else f"source {i} {s['name']}"
            out.append(f"  {label}: {s['rows']:,} rows, domain {domain}{scene}{prefix}, {how}")
        if self.unmapped:
            total = sum(c.unmapped_categories for c in self.domains.values())
            top = ", ".join(f"{d} {k!r} {n:,}" for d, k, n in self.unmapped)
            out.append(f"  unmapped categories (top {len(self.unmapped)} of {total:,}, rows): {top}")
        if self.shared_items:
            out.append(
                f"  warning: {self.shared_items:,} item id(s) occur in more than one domain and are one item each; "
                "give the sources an item_prefix if they are different items."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the store manifest (key `taxonomy_coverage`)."""
        return {
            "levels": self.levels,
            "map": None
            if self.map_source is None
            else {"source": self.map_source, "entries": dict(self.map_entries), "duplicates": self.map_duplicates},
            "domains": {d: c.to_dict() for d, c in self.domains.items()},
            "unmapped_top": [{"domain": d, "source_category": k, "rows": n} for d, k, n in self.unmapped],
            "sources": [dict(s) for s in self.sources],
            "shared_items": self.shared_items,
        }


class Unified(NamedTuple):
    """What `unify` returns."""

    frame: pl.LazyFrame  # the merged canonical log (unsorted: `prepare` sorts by user, timestamp)
    coverage: CoverageReport
    report: FilterReport  # the sources' load reports summed, reasons prefixed by the source


# ----------------------------------------------------------------------------------------------------------------
# unify.


def _common_dtype(dtypes: list[pl.DataType]) -> pl.DataType | None:
    """The dtype a column gets when sources disagree: None if they agree, Int64 for integers, else String."""
    real = [d for d in dtypes if d != pl.Null]
    if len(set(real)) <= 1:
        return None
    return pl.Int64() if all(d.is_integer() for d in real) else pl.String()


def _lazy(log: LoadedLog | pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    return log.frame if isinstance(log, LoadedLog) else log.lazy()


def _source_frame(
    source: Source, index: int, name: str, table: TaxonomyMap | None, levels: int
) -> tuple[pl.LazyFrame, str | None]:
    """One source -> its canonical frame with the unified cat_1..cat_M, plus the internal _source, _key and _status
    columns; and the category column used (None: as-is)."""
    lazy = _lazy(source.log)
    names = list(lazy.collect_schema().names())
    if source.domain is not None:
        lazy = lazy.with_columns(domain=pl.lit(source.domain, pl.String))
    elif "domain" in names:
        lazy = lazy.with_columns(pl.col("domain").cast(pl.String))
    else:
        raise ValueError(
            f"{name} has no domain: give the source a domain (Source(domain=...), --source PATH:FORMAT:DOMAIN, or "
            "domain = '...' in a sources file), or a 'domain' column."
        )
    if source.scene is not None:
        lazy = lazy.with_columns(scene=pl.lit(source.scene, pl.String))
    if source.item_prefix:
        lazy = lazy.with_columns(item_id=pl.lit(source.item_prefix) + pl.col("item_id").cast(pl.String))
    key = source.category
    if key is None and table is not None and "source_category" in names:
        key = "source_category"
    if key is not None and table is None:
        raise ValueError(f"{name} names category column '{key}' but no taxonomy map was given.")
    if key is not None and key not in names:
        raise ValueError(f"{name} has no category column {_with_hints([key], names)}. Its columns: {', '.join(names)}.")
    own = _cat_levels(names)
    cats = [f"cat_{m}" for m in range(1, levels + 1)]
    lazy = lazy.with_columns(_source=pl.lit(index, pl.Int32))
    if key is not None:
        assert table is not None
        right = table.table.lazy().with_columns(_found=pl.lit(True))
        lazy = (
            lazy.with_columns(_key=pl.col(key).cast(pl.String))
            .drop([f"cat_{m}" for m in own])
            .join(right, left_on=["domain", "_key"], right_on=list(MAP_KEYS), how="left", maintain_order="left")
        )
        status = (
            pl.when(pl.col("_key").is_null())
            .then(_NO_CATEGORY)
            .when(pl.col("_found").is_null())
            .then(_UNMAPPED)
            .otherwise(_MAPPED)
        )
        return lazy.with_columns(status.cast(pl.Int8).alias("_status")).drop("_found"), key
    if len(own) > levels:
        raise ValueError(
            f"{name} has {len(own)} taxonomy levels (cat_1..cat_{len(own)}) but the unified taxonomy has {levels}; "
            f"map its categories, or pass taxonomy levels >= {len(own)}."
        )
    lazy = lazy.with_columns(pl.lit(None, pl.Int64).alias(c) for c in cats if c not in names)
    any_level = pl.any_horizontal([pl.col(c).is_not_null() for c in cats]) if cats else pl.lit(False)
    status = pl.when(any_level).then(_MAPPED).otherwise(_NO_CATEGORY).cast(pl.Int8).alias("_status")
    return lazy.with_columns(status, _key=pl.lit(None, pl.String)), None


def unify(
    sources: Sequence[Source],
    mapping: PathLike | pl.DataFrame | TaxonomyMap | None = None,
    levels: int | None = None,
    top_unmapped: int = 20,
) -> Unified:
    """Merge behaviour sources into one canonical log with one unified taxonomy, and report the mapping coverage.

    Args:
        sources: the sources, in a fixed order (it breaks same-second ties; see the module docstring).
        mapping: the taxonomy mapping table (file, DataFrame or `read_taxonomy_map` result); None: every source's
            categories are used as-is.
        levels: M, the unified depth; None: the map's depth, or without a map the deepest source.
        top_unmapped: how many of the most frequent unmapped categories the report lists.

    Returns:
        The merged lazy frame (canonical columns: required, domain/scene/action, cat_1..cat_M, then the other columns
        in first-seen order), the coverage report, and the summed load reports.

    Raises:
        ValueError: no sources, a source without a domain, a category column that does not exist or without a map, an
            as-is source deeper than M. DataError: a bad map (see `read_taxonomy_map`) or a bad DataFrame source.
    """
    if not sources:
        raise ValueError("unify needs at least one source. Got none.")
    if top_unmapped < 0:
        raise ValueError(f"top_unmapped must be >= 0. Got {top_unmapped} instead.")
    table: TaxonomyMap | None = None
    if isinstance(mapping, TaxonomyMap):
        table = mapping
    elif mapping is not None:
        table = read_taxonomy_map(mapping, levels)
    names: list[str] = []
    for i, s in enumerate(sources, start=1):
        if isinstance(s.log, LoadedLog):
            names.append(s.name or s.log.source)
        else:
            names.append(s.name or f"source {i}")
            check_log(s.log, names[-1])  # a loaded log was checked by its loader
    if levels is None:
        own = [len(_cat_levels(_lazy(s.log).collect_schema().names())) for s in sources]
        levels = table.levels if table is not None else max(own)
    elif table is not None and table.levels != levels:
        table = TaxonomyMap(_resize(table.table, levels), table.source, table.duplicates)
    frames, keys = [], []
    for i, (s, name) in enumerate(zip(sources, names, strict=True)):
        frame, key = _source_frame(s, i, name, table, levels)
        frames.append(frame)
        keys.append(key)

    # One dtype per column across sources, then concatenate in source order.
    schemas = [dict(f.collect_schema()) for f in frames]
    order: list[str] = []
    for schema in schemas:
        order += [c for c in schema if c not in order]
    casts = {c: _common_dtype([s[c] for s in schemas if c in s]) for c in order}
    frames = [
        f.with_columns(pl.col(c).cast(d) for c, d in casts.items() if d is not None and c in s)
        for f, s in zip(frames, schemas, strict=True)
    ]
    merged = pl.concat(frames, how="diagonal_relaxed")
    cats = [f"cat_{m}" for m in range(1, levels + 1)]
    head = [*REQUIRED_COLUMNS, *(c for c in CATEGORICAL_COLUMNS if c in order), *cats]
    internal = ("_source", "_key", "_status")
    columns = [*head, *(c for c in order if c not in head and c not in internal and not _CAT.match(c))]

    # The coverage pass: counts per (source, domain, status), unmapped keys, items shared by domains.
    domain = pl.col("domain").fill_null(NULL_DOMAIN)
    counts_q = merged.group_by("_source", domain, "_status").agg(
        pl.len().alias("_rows"), *(pl.col(c).is_not_null().sum().alias(c) for c in cats)
    )
    unmapped_q = merged.filter(pl.col("_status") == _UNMAPPED).group_by(domain, "_key").agg(pl.len().alias("_rows"))
    shared_q = (
        merged.group_by("item_id")
        .agg(pl.col("domain").n_unique().alias("_n"))
        .filter(pl.col("_n") > 1)
        .select(pl.len())
    )
    counts, unmapped, shared = pl.collect_all([counts_q, unmapped_q, shared_q], engine="streaming")
    domains: dict[str, DomainCoverage] = {}
    source_rows = [0] * len(sources)
    for row in counts.sort("domain", "_source", "_status").iter_rows(named=True):
        c = domains.setdefault(row["domain"], DomainCoverage(level_rows=[0] * levels))
        n = int(row["_rows"])
        c.rows += n
        source_rows[row["_source"]] += n
        c.mapped += n * (row["_status"] == _MAPPED)
        c.unmapped += n * (row["_status"] == _UNMAPPED)
        c.no_category += n * (row["_status"] == _NO_CATEGORY)
        c.level_rows = [a + int(row[cat]) for a, cat in zip(c.level_rows, cats, strict=True)]
    for d, k in unmapped.group_by("domain").len().iter_rows():
        domains[d].unmapped_categories = int(k)
    top = unmapped.sort(["_rows", "domain", "_key"], descending=[True, False, False]).head(top_unmapped)
    coverage = CoverageReport(
        levels=levels,
        domains=domains,
        unmapped=[(d, k, int(n)) for d, k, n in top.iter_rows()],
        sources=[
            {
                "name": name,
                "domain": s.domain,
                "scene": s.scene,
                "category": key,
                "item_prefix": s.item_prefix,
                "rows": source_rows[i],
            }
            for i, (s, name, key) in enumerate(zip(sources, names, keys, strict=True))
        ],
        map_source=table.source if table is not None else None,
        map_entries=table.entries() if table is not None else {},
        map_duplicates=table.duplicates if table is not None else 0,
        shared_items=int(shared.item()),
    )
    logger.info(
        "unified %d source(s): %s rows in domain(s) %s",
        len(sources),
        f"{sum(source_rows):,}",
        ", ".join(domains),
    )

    report = FilterReport()
    for i, (s, name) in enumerate(zip(sources, names, strict=True), start=1):
        if isinstance(s.log, LoadedLog):
            report.rows_read += s.log.report.rows_read
            for reason, n in s.log.report.dropped.items():
                report.drop(f"source {i} ({name}): {reason}", n)
            report.unused_columns += [f"{column} (source {i})" for column in s.log.report.unused_columns]
        else:
            report.rows_read += source_rows[i - 1]
    return Unified(merged.select(columns), coverage, report)
