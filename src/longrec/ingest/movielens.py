"""MovieLens ratings (ratings.csv or ratings.dat) and the movies file's genres -> canonical columns."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from longrec.ingest.reading import (
    _DECOMPRESSORS,
    LoadedLog,
    PathLike,
    _dedupe,
    _existing,
    _Field,
    _finish,
    _id,
    _join_side,
    _materialize,
    _plain_suffix,
    _preview,
    _rating_fields,
    _read,
    _sibling,
    _Source,
    _text_source,
    _ts,
)
from longrec.ingest.schema import DataError, FilterReport, LogSchema

__all__ = ["MOVIELENS_NO_GENRE", "load_movielens"]

MOVIELENS_NO_GENRE = "(no genres listed)"


def _read_movielens_movies(path: Path, tmp_dir: PathLike | None) -> tuple[pl.DataFrame, FilterReport]:
    """movieId -> cat_1 (first listed genre) from movies.csv or movies.dat."""

    def first_genre(raw: pl.Expr) -> pl.Expr:
        return raw.str.split("|").list.first()

    if _plain_suffix(path) == ".dat":
        # MovieID::Title::Genres; titles may hold ':' and ML-1M is latin-1, so split in Python (a few 10k lines).
        source = _Source(str(path), _materialize(path, tmp_dir), "csv", has_header=False, quote=None)
        ids, genres = [], []
        for line_no, text in source.records():
            if not text.strip():
                continue
            parts = text.split("::")
            if len(parts) < 3 or not parts[0].strip().isdigit():
                raise DataError(
                    f"{path} line {line_no}: expected 'MovieID::Title::Genres' with an integer MovieID, "
                    f"got {_preview(text)}."
                )
            ids.append(int(parts[0]))
            genres.append(parts[-1].strip())
        table = pl.DataFrame({"item_id": ids, "_genres": genres}, schema={"item_id": pl.Int64, "_genres": pl.String})
        genre = first_genre(pl.col("_genres"))
        table = table.select("item_id", pl.when(genre != MOVIELENS_NO_GENRE).then(genre).alias("cat_1"))
        report = FilterReport(rows_read=table.height)
    else:
        source = _Source(str(path), _materialize(path, tmp_dir), "csv")
        fields = [_id("item_id", "movieId"), _Field("cat_1", "genres", first_genre, null_values=(MOVIELENS_NO_GENRE,))]
        frame, report, _ = _read(source, fields, what="MovieLens movies file")
        table = frame.collect()
    return _dedupe(table, "item_id", report, "movieId"), report


def load_movielens(
    path: PathLike,
    *,
    movies: PathLike | None = None,
    min_rating: float | None = None,
    label_threshold: float | None = None,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """MovieLens ratings: `ratings.csv` (userId,movieId,rating,timestamp) or `ratings.dat` (UserID::MovieID::...).

    Every rating is a behaviour with action "rate"; the rating value itself is dropped unless `label_threshold` asks
    for a label. The genre list of `movies.csv`/`movies.dat` gives `cat_1` = the FIRST listed genre (MovieLens lists
    them alphabetically, so this is a coarse, arbitrary-but-stable bucket, not a "main" genre); "(no genres listed)"
    and movies missing from the movies file give null.

    Args:
        path: ratings.csv or ratings.dat (ML-1M/10M/20M), optionally compressed.
        movies: the movies file; None looks for movies.csv / movies.dat next to `path` (no taxonomy if absent).
        min_rating: drop ratings below this value (counted).
        label_threshold: add `label` = rating >= threshold. A labelled row is an impression, not a behaviour (see
            `longrec.ingest.schema`), so only set this to treat every rating as a labelled sample.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id, timestamp (Int64), action ("rate"), [cat_1 (genre)], [label].
    """
    p = _existing(path, "Ratings file")
    is_dat = _plain_suffix(p) == ".dat"
    if is_dat:
        # '::' is two characters and polars separators are one byte: split on ':' and skip the empty fields between.
        columns = ("UserID", "_1", "MovieID", "_2", "Rating", "_3", "Timestamp")
        layout = "UserID::MovieID::Rating::Timestamp"
        source = _text_source(
            p, "csv", tmp_dir, has_header=False, separator=":", quote=None, columns=columns, layout=layout
        )
        names = {"user": "UserID", "item": "MovieID", "rating": "Rating", "ts": "Timestamp"}
    else:
        source = _text_source(p, "csv", tmp_dir)
        names = {"user": "userId", "item": "movieId", "rating": "rating", "ts": "timestamp"}
    rating_fields, filters = _rating_fields(names["rating"], min_rating, label_threshold)
    fields = [_id("user_id", names["user"]), _id("item_id", names["item"]), _ts(names["ts"]), *rating_fields]
    frame, report, _ = _read(source, fields, filters, what="format 'movielens'")
    frame = frame.with_columns(action=pl.lit("rate"))
    side: dict[str, FilterReport] = {}
    movie_files = [f"movies{'.dat' if is_dat else '.csv'}{z}" for z in ("", *_DECOMPRESSORS)]
    movies_path = Path(movies) if movies is not None else _sibling(p, movie_files)
    levels = 0
    if movies_path is not None:
        table, side["movies"] = _read_movielens_movies(_existing(movies_path, "Movies file"), tmp_dir)
        frame = _join_side(frame, table, "item_id")
        levels = 1
    schema = LogSchema(taxonomy_levels=levels, categorical=("action",), has_label=label_threshold is not None)
    return _finish(frame, schema, report, source, side)
