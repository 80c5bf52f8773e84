"""Sources on disk: a file, its format and loader options, and what it stands for; the `--source` syntax and the
`--sources` TOML file (docs/unify.md).

A `SourceSpec` is a source not read yet; `SourceSpec.load()` reads it with `load_log` into the `Source` that
`longrec.ingest.unify.unify` merges. `parse_source` reads one `--source PATH:FORMAT[:DOMAIN[:SCENE]]`,
`read_sources_file` a file of `[[source]]` tables with per-source loader options.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import gzip
import lzma
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longrec.ingest import LOADERS, load_log
from longrec.ingest.reading import PathLike
from longrec.ingest.schema import CATEGORICAL_COLUMNS, REQUIRED_COLUMNS, RESERVED_COLUMNS
from longrec.ingest.taxonomy import _CAT
from longrec.ingest.unify import Source

__all__ = ["SourceSpec", "SourcesFile", "parse_source", "read_sources_file"]


@dataclass(frozen=True)
class SourceSpec:
    """A source still on disk: a file, its format and loader options, and the `Source` settings."""

    path: str
    format: str
    options: dict[str, Any] = field(default_factory=dict)
    domain: str | None = None
    scene: str | None = None
    category: str | None = None
    item_prefix: str | None = None

    def load(self) -> Source:
        """Load the file with `load_log(path, format, **options)`.

        A csv/parquet source without a `mapping`, `extra` or `columns` option is read as stored: its canonical
        columns, and every other column (such as `source_category`) as an extra field.
        """
        options = dict(self.options)
        if self.format in ("csv", "parquet") and not {"mapping", "extra", "columns"} & set(options):
            names = _header(Path(self.path), self.format, options.get("separator", ","))
            canonical = {*REQUIRED_COLUMNS, *CATEGORICAL_COLUMNS, *RESERVED_COLUMNS}
            options["mapping"] = {c: c for c in names if c in canonical or _CAT.match(c)}
            options["extra"] = [c for c in names if c not in options["mapping"] and not c.startswith("_")]
        log = load_log(self.path, self.format, **options)
        return Source(log, self.domain, self.scene, self.category, self.item_prefix)


def _header(path: Path, format: str, separator: str) -> list[str]:
    """The column names of a CSV (optionally compressed) or Parquet file, without reading its rows."""
    if not path.is_file():
        raise FileNotFoundError(f"Log file {str(path)!r} does not exist (or is not a file).")
    if format == "parquet":
        return list(pl.scan_parquet(path).collect_schema().names())
    openers: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    opener = openers.get(path.suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8", newline="") as stream:
        return next(csv.reader(stream, delimiter=separator), [])


def parse_source(text: str) -> SourceSpec:
    """`PATH:FORMAT[:DOMAIN[:SCENE]]` (the `--source` option) -> a spec without loader options.

    The format is the first field after the path that names a format, so a path may hold ':'. An empty DOMAIN
    (`PATH:FORMAT::SCENE`) takes the log's own domain column.
    """
    parts = text.split(":")
    for i in range(1, len(parts)):
        if parts[i] in LOADERS and len(parts) - i - 1 <= 2 and ":".join(parts[:i]):
            domain, scene = (*parts[i + 1 :], None, None)[:2]
            return SourceSpec(":".join(parts[:i]), parts[i], domain=domain or None, scene=scene or None)
    raise ValueError(
        f"--source {text!r}: expected PATH:FORMAT[:DOMAIN[:SCENE]] with FORMAT one of {', '.join(sorted(LOADERS))}. "
        "Loader options go in a --sources file."
    )


@dataclass(frozen=True)
class SourcesFile:
    """A `--sources` TOML file: the sources and, optionally, the taxonomy map and depth."""

    sources: list[SourceSpec]
    taxonomy_map: str | None = None
    taxonomy_levels: int | None = None


_FILE_KEYS = ("source", "taxonomy_map", "taxonomy_levels")
_SOURCE_KEYS = ("path", "format", "options", "domain", "scene", "category", "item_prefix")


def _unknown_key(where: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return f"{where}: unknown key ({hint})"


def read_sources_file(path: PathLike) -> SourcesFile:
    """Read a sources TOML file (docs/unify.md): `[[source]]` tables with path, format, options, domain, scene,
    category, item_prefix; top-level `taxonomy_map` and `taxonomy_levels`. Paths are relative to the working
    directory, as on the command line.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: every problem at once (bad TOML, unknown keys with did-you-mean, wrong types, unknown format).
    """
    from longrec.settings import ConfigError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Sources file {str(path)!r} does not exist (or is not a file).")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from exc
    problems: list[str] = []
    problems += [_unknown_key(key, key, _FILE_KEYS) for key in data if key not in _FILE_KEYS]
    tables = data.get("source", [])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        problems.append("source: expected one or more [[source]] tables, got " + (repr(tables) if tables else "none"))
        tables = []
    specs: list[SourceSpec] = []
    for i, table in enumerate(tables, start=1):
        at = f"source {i}"
        problems += [_unknown_key(f"{at}.{key}", key, _SOURCE_KEYS) for key in table if key not in _SOURCE_KEYS]
        for key in ("path", "format"):
            if not isinstance(table.get(key), str) or not table[key]:
                problems.append(f"{at}.{key}: expected a non-empty string, got {table.get(key)!r}")
        for key in ("domain", "scene", "category", "item_prefix"):
            if key in table and not isinstance(table[key], str):
                problems.append(f"{at}.{key}: expected a string, got {type(table[key]).__name__} {table[key]!r}")
        if "options" in table and not isinstance(table["options"], dict):
            problems.append(f"{at}.options: expected a table of loader options, got {table['options']!r}")
        fmt = table.get("format")
        if isinstance(fmt, str) and fmt and fmt not in LOADERS:
            close = difflib.get_close_matches(fmt, list(LOADERS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{at}.format: unknown format {fmt!r}{hint}; known: {', '.join(sorted(LOADERS))}")
        if not problems:
            specs.append(SourceSpec(**{k: table[k] for k in _SOURCE_KEYS if k in table}))
    taxonomy_map = data.get("taxonomy_map")
    if taxonomy_map is not None and not isinstance(taxonomy_map, str):
        problems.append(f"taxonomy_map: expected a file name, got {taxonomy_map!r}")
    levels = data.get("taxonomy_levels")
    if levels is not None and (not isinstance(levels, int) or isinstance(levels, bool) or levels < 1):
        problems.append(f"taxonomy_levels: expected a positive int, got {levels!r}")
    if problems:
        raise ConfigError(problems, str(path))
    return SourcesFile(specs, taxonomy_map, levels)
