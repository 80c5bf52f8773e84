"""Item content vectors built here from item text: TF-IDF, then a truncated SVD (LSA), deterministic.

For each item with text, the text x_i (its columns joined by spaces) becomes a TF-IDF vector
tfidf(x_i) ∈ R^F (sublinear tf, l2-normalised; scikit-learn's `TfidfVectorizer`), and the [N, F] matrix is reduced by
`TruncatedSVD(n_components=dim, random_state=seed)` to [N, dim], each row then l2-normalised, so cosine similarity of
two items' vectors is their inner product. Only the store's items are fitted (the corpus is what the store can
use). The same texts, dim and seed give the same vectors bit for bit (fixed seed; one thread or many alike).

Sources this project reads:
    MovieLens (`movielens_texts`): movies.csv title + genres ("|" -> " "), plus every tag of tags.csv when the folder
        has it (tags are written by the slice's users; they describe the item, not a label).
    Any table (`table_texts`): a CSV / Parquet file with an id column and text columns, e.g. KuaiRec's
        kuairec_caption_category.csv.gz (caption, topic_tag and the three category names; Chinese text: use
        `analyzer="char"`, character 1-2-grams, since a word analyzer splits on spaces that Chinese lacks).

scikit-learn is an optional extra (`pip install longrec[content]`): a clear error says so when it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.content import ContentError, content_from_pairs
from longrec.data.store import TrajectoryStore

__all__ = ["ANALYZERS", "movielens_texts", "table_texts", "text_content", "text_content_from", "tfidf_svd"]

ANALYZERS = ("word", "char")


def _sklearn() -> Any:
    try:
        import sklearn.decomposition
        import sklearn.feature_extraction.text
    except ImportError as err:  # pragma: no cover - the dev environment has it
        raise ContentError(
            "building content from text needs scikit-learn, which is not installed: pip install 'longrec[content]'."
        ) from err
    return sklearn


def tfidf_svd(texts: Sequence[str], dim: int = 64, seed: int = 0, analyzer: str = "word") -> np.ndarray:
    """[N, dim] float32 l2-normalised LSA vectors of `texts` (TF-IDF then truncated SVD with a fixed seed).

    Raises:
        ContentError: fewer than 2 texts, an unknown analyzer, or `dim` not below the vocabulary size F.
    """
    if analyzer not in ANALYZERS:
        raise ContentError(f"analyzer must be one of {ANALYZERS}, got {analyzer!r}.")
    if len(texts) < 2 or dim < 1:
        raise ContentError(f"expected at least 2 texts and dim >= 1, got {len(texts)} texts and dim {dim}.")
    sk = _sklearn()
    options: dict[str, Any] = {"sublinear_tf": True, "dtype": np.float64}
    if analyzer == "char":
        options.update(analyzer="char", ngram_range=(1, 2), min_df=2)
    else:
        options.update(min_df=1, token_pattern=r"(?u)\b\w+\b")
    matrix = sk.feature_extraction.text.TfidfVectorizer(**options).fit_transform(list(texts))  # [N, F] sparse
    if dim >= matrix.shape[1]:
        raise ContentError(f"dim must be below the text vocabulary size ({matrix.shape[1]:,} terms), got {dim}.")
    svd = sk.decomposition.TruncatedSVD(n_components=dim, random_state=seed, algorithm="randomized", n_iter=7)
    reduced = svd.fit_transform(matrix)  # [N, dim]
    norm = np.linalg.norm(reduced, axis=1, keepdims=True)
    return (reduced / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.name.endswith((".csv", ".csv.gz")):
        return pl.read_csv(path, infer_schema_length=0)  # every column as text: ids are matched by the vocabulary
    raise ContentError(f"{path}: expected a .csv, .csv.gz or .parquet file, got '{path.name}'.")


def table_texts(path: str | Path, id_column: str, text_columns: Sequence[str]) -> tuple[pl.Series, list[str]]:
    """Raw ids and texts (the text columns joined by spaces; nulls skipped) of a CSV / Parquet table, one row per id.

    Raises:
        ContentError: a missing column or a repeated id.
    """
    path = Path(path)
    frame = _read_table(path)
    absent = [c for c in (id_column, *text_columns) if c not in frame.columns]
    if absent or not text_columns:
        raise ContentError(f"{path}: expected columns {[id_column, *text_columns]}, got {frame.columns}.")
    joined = pl.concat_str([pl.col(c).cast(pl.String) for c in text_columns], separator=" ", ignore_nulls=True)
    frame = frame.select(pl.col(id_column).alias("raw"), joined.fill_null("").alias("text"))
    return frame["raw"], frame["text"].to_list()


def movielens_texts(folder: str | Path) -> tuple[pl.Series, list[str]]:
    """movieId and "title genres [tags]" of a MovieLens folder's movies.csv (and tags.csv when present)."""
    folder = Path(folder)
    movies_path = folder / "movies.csv"
    if not movies_path.is_file():
        raise FileNotFoundError(f"{movies_path} not found: expected a MovieLens folder with movies.csv.")
    movies = pl.read_csv(movies_path, schema_overrides={"movieId": pl.Int64, "title": pl.String, "genres": pl.String})
    genres = (
        pl.col("genres").str.replace_all("(no genres listed)", "", literal=True).str.replace_all("|", " ", literal=True)
    )
    movies = movies.select("movieId", pl.concat_str([pl.col("title"), genres], separator=" ").alias("text"))
    tags_path = folder / "tags.csv"
    if tags_path.is_file():
        tags = pl.read_csv(tags_path, schema_overrides={"movieId": pl.Int64, "tag": pl.String})
        per_movie = tags.group_by("movieId").agg(pl.col("tag").drop_nulls().sort().str.join(" ").alias("tags"))
        movies = movies.join(per_movie, on="movieId", how="left", maintain_order="left").select(
            "movieId", pl.concat_str([pl.col("text"), pl.col("tags")], separator=" ", ignore_nulls=True).alias("text")
        )
    return movies["movieId"], movies["text"].to_list()


def text_content(
    store: TrajectoryStore,
    raw: pl.Series,
    texts: list[str],
    dim: int = 64,
    seed: int = 0,
    analyzer: str = "word",
    missing: str = "error",
) -> tuple[np.ndarray, dict[str, int]]:
    """The [V_item, dim] table of `tfidf_svd` vectors of the store's items among (raw, texts), and its counts.

    Ids the store does not know are skipped and counted (a text file covers a whole catalogue); store items without
    text are an error or zero rows (`missing`, as `content_from_pairs`). The SVD is fitted on the store's items only.
    """
    from longrec.data.vocab import Vocabulary

    dense = Vocabulary(store).dense("item_id", raw, unknown="zero", what="text item ids")
    keep = np.flatnonzero(dense > 0)
    vectors = tfidf_svd([texts[i] for i in keep], dim=dim, seed=seed, analyzer=analyzer)
    table, counts = content_from_pairs(store, raw.gather(keep), vectors, unknown="error", missing=missing)
    counts["ids_unknown"] = int(raw.len() - keep.size)
    return table, counts


def text_content_from(
    store: TrajectoryStore,
    movielens: str | Path | None,
    path: str | Path | None,
    id_column: str,
    columns: Sequence[str],
    dim: int,
    seed: int,
    analyzer: str,
    missing: str,
) -> tuple[np.ndarray, dict[str, int], str]:
    """`text_content` of a MovieLens folder or of a table's text columns (exactly one of them), and a description
    of the source for the modality's manifest (what `longrec content text` runs)."""
    if (movielens is None) == (path is None):
        raise ContentError("longrec content text needs exactly one of --movielens DIR or --from FILE --columns ...")
    if movielens is not None:
        raw, texts = movielens_texts(movielens)
        tags = " + tags.csv" if (Path(movielens) / "tags.csv").is_file() else ""
        source = f"movielens: movies.csv title + genres{tags}"
    else:
        assert path is not None
        raw, texts = table_texts(path, id_column, columns)
        source = f"{Path(path).name}: {', '.join(columns)}"
    table, counts = text_content(store, raw, texts, dim=dim, seed=seed, analyzer=analyzer, missing=missing)
    return table, counts, source
