"""DIN's item-content option: the right vectors reach the model, contracts hold, and content carries cold items."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from longrec.data.batch import Batch
from longrec.models import build_model
from longrec.models.din import DIN
from tests.models.conftest import SIZES, _pad_history, make_batch

D_C, P = 5, 3


def _content_model(seed: int = 0) -> DIN:
    torch.manual_seed(seed)
    model = build_model("din", num_items=SIZES["num_items"], dim=8, content_dim=D_C, content_proj=P)
    assert isinstance(model, DIN)
    table = torch.randn(SIZES["num_items"], D_C)
    table[0] = 0
    model.set_content(table)
    return model.eval()


def test_the_batch_reads_the_content_rows_of_its_items() -> None:
    model, batch = _content_model(), make_batch()
    h, t = model._embed(batch)  # [B, L, E], [B, E]
    assert model.content is not None and model.content_projection is not None
    W = model.content_projection.weight.detach()  # [P, D_c]
    table = model.content.numpy()
    for b in range(batch.history.shape[0]):  # brute force: one item at a time
        np.testing.assert_allclose(t[b, -P:].detach().numpy(), W.numpy() @ table[int(batch.target[b])], atol=1e-6)
        for i in range(batch.history.shape[1]):
            want = W.numpy() @ table[int(batch.history[b, i])]
            np.testing.assert_allclose(h[b, i, -P:].detach().numpy(), want, atol=1e-6)
    assert not h[~batch.history_mask][:, -P:].any()  # padding (id 0) has zero content


def test_content_keeps_the_padding_and_batch_of_one_contracts() -> None:
    model, batch = _content_model(), make_batch()
    with torch.no_grad():
        full = model(batch)
        torch.testing.assert_close(model(_pad_history(batch, 4)), full)
        rows = [
            Batch(
                **{f.name: v[b : b + 1] for f in dataclasses.fields(batch) if (v := getattr(batch, f.name)) is not None}
            )
            for b in range(batch.label.shape[0])
        ]
        one = torch.cat([model(row) for row in rows])
    torch.testing.assert_close(one, full, atol=1e-5, rtol=1e-5)
    assert "content" in model.state_dict() and "content" not in dict(model.named_parameters())


def test_content_options_are_checked() -> None:
    with pytest.raises(ValueError, match="content_proj = 4 needs item content"):
        build_model("din", num_items=10, content_proj=4)
    plain = build_model("din", num_items=10, content_dim=3)
    assert isinstance(plain, DIN)
    with pytest.raises(ValueError, match="content_proj = 0"):
        plain.set_content(torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"expected shape \(50, 5\), got \(50, 4\)"):
        _content_model().set_content(torch.zeros(50, 4))


def _cluster_data(seed: int, n: int) -> tuple[torch.Tensor, Batch, Batch]:
    """Items 1..80 (warm, trained on) and 81..159 (cold, test targets only); item content = its cluster's centre
    plus noise. A user's history comes from one cluster; label = the target is in that cluster."""
    g = torch.Generator().manual_seed(seed)
    V, K, L = 160, 4, 8
    cluster = torch.randint(0, K, (V,), generator=g)
    content = torch.eye(K)[cluster] * 2.0 + 0.3 * torch.randn(V, K, generator=g)  # [V, K]
    content[0] = 0
    by_cluster = [torch.nonzero(cluster[1:81] == k).flatten() + 1 for k in range(K)]

    def draw(targets: torch.Tensor) -> Batch:
        user_k = torch.randint(0, K, (n,), generator=g)
        history = torch.stack(
            [by_cluster[int(k)][torch.randint(0, len(by_cluster[int(k)]), (L,), generator=g)] for k in user_k]
        )
        target = targets[torch.randint(0, len(targets), (n,), generator=g)]
        return Batch(
            history=history,
            history_mask=torch.ones(n, L, dtype=torch.bool),
            target=target,
            label=(cluster[target] == user_k).float(),
        )

    return content, draw(torch.arange(1, 81)), draw(torch.arange(81, V))


def _cold_auc(content: torch.Tensor, train: Batch, cold: Batch) -> float:
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    model = build_model(
        "din", num_items=160, dim=8, content_dim=4, content_proj=4, head_hidden=(16,), attention_hidden=(16,)
    )
    assert isinstance(model, DIN)
    model.set_content(content)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(train), train.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(roc_auc_score(cold.label.numpy(), model.eval()(cold).numpy()))


def test_content_lets_din_score_cold_items_and_removing_it_fails() -> None:
    content, train, cold = _cluster_data(seed=1, n=512)
    with_content = _cold_auc(content, train, cold)
    without = _cold_auc(torch.zeros_like(content), train, cold)  # the content removed: ids alone
    assert with_content > 0.9, with_content
    assert without < 0.65, without
