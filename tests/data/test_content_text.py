"""Item content built from text: TF-IDF + truncated SVD is deterministic and puts similar texts close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longrec.cli import main
from longrec.data.content import ContentError, open_content
from longrec.data.content_text import movielens_texts, table_texts, tfidf_svd
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from tests.conftest import make_log

TEXTS = [
    "space opera star wars rebels empire",
    "star wars empire strikes back space",
    "romantic comedy wedding love paris",
    "love story paris romance wedding",
    "animated toys children adventure",
    "children animated adventure fish ocean",
]


def test_tfidf_svd_is_deterministic_and_keeps_similar_texts_close() -> None:
    a = tfidf_svd(TEXTS, dim=3, seed=0)
    np.testing.assert_array_equal(a, tfidf_svd(TEXTS, dim=3, seed=0))  # bit for bit
    assert a.shape == (6, 3) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    sims = a @ a.T
    for i, j in ((0, 1), (2, 3), (4, 5)):  # each pair is closer to its partner than to any other text
        others = [k for k in range(6) if k not in (i, j)]
        assert sims[i, j] > sims[i, others].max()
    with pytest.raises(ContentError, match="below the text vocabulary size"):
        tfidf_svd(TEXTS, dim=500)


def _movielens_folder(tmp_path: Path, raw_items: list[int]) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    genres = ["Comedy|Romance", "Action|Sci-Fi", "Animation|Children", "(no genres listed)"]
    lines = ["movieId,title,genres"] + [
        f'{m},"Movie {m % 5} ({1990 + m % 7})",{genres[m % 4]}' for m in [*raw_items, 99_999]
    ]
    (folder / "movies.csv").write_text("\n".join(lines) + "\n")
    (folder / "tags.csv").write_text(
        f"userId,movieId,tag,timestamp\n1,{raw_items[0]},funny,1\n2,{raw_items[0]},dark,2\n"
    )
    return folder


def test_content_text_from_movielens_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    prepare(
        make_log(num_users=8, events=10, num_items=30, seed=3), out, ProtocolConfig.for_protocol("T", min_history=0)
    )
    store = TrajectoryStore.open(out)
    raw_items = [int(v) for v in store.vocab("item_id").to_list()]
    folder = _movielens_folder(tmp_path, raw_items)
    raw, texts = movielens_texts(folder)
    assert texts[0].endswith("dark funny") and "|" not in texts[1] and raw.to_list()[-1] == 99_999
    args = ["content", "text", str(out), "--movielens", str(folder), "--modality", "text", "--dim", "4"]
    assert main(args) == 0
    assert "unknown ids skipped 1" in capsys.readouterr().out  # movie 99999 is not in the store
    table = open_content(store, "text")
    assert table.manifest["method"] == "tfidf+truncated_svd" and "tags.csv" in table.manifest["source"]
    first = np.array(table.vectors)
    assert main([*args, "--force"]) == 0
    np.testing.assert_array_equal(np.array(open_content(store, "text").vectors), first)  # deterministic
    (tmp_path / "t.csv").write_text(
        "vid,caption,cat\n" + "".join(f'{m},"拍 视频 {m % 3}",类{m % 2}\n' for m in raw_items)
    )
    raw, texts = table_texts(tmp_path / "t.csv", "vid", ["caption", "cat"])
    assert texts[0] == f"拍 视频 {raw_items[0] % 3} 类{raw_items[0] % 2}"
    more = ["--from", str(tmp_path / "t.csv"), "--id-column", "vid", "--columns", "caption,cat", "--analyzer", "char"]
    assert main(["content", "text", str(out), "--modality", "caption", "--dim", "2", *more]) == 0
    assert open_content(store, "caption").dim == 2
