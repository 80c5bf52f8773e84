"""Row-wise (lazy) Adam for embedding tables: only the rows a batch touched are read and written by the update.

Dense Adam reads and writes every row of every table on every step (p, g, m, v: 7 x 4 bytes per parameter), and the
table gradients are [V, D] buffers zeroed and scattered into first; on the Taobao slice that is most of DARE's
compulsory memory traffic at batch 192 (benchmarks/bench_throughput.py, "KB/sample (of which Adam)"). With
`train.optimizer = "lazy_adam"`:

- every `nn.Embedding` of the model gets `sparse = True`, so its lookups (`nn.Embedding.forward` and the fast
  `longrec.models.layers.lookup`) return sparse [V, D] gradients holding only the looked-up rows;
- `LazyAdam` updates a parameter with a sparse gradient on its touched rows only: it gathers the distinct rows r of
  the gradient (repeated ids summed) and their state, applies Adam's own update to them (its fused kernel on the fast
  paths), and writes p, m and v back,
      m_r ← β1 m_r + (1 − β1) g_r,   v_r ← β2 v_r + (1 − β2) g_r²,
      p_r ← p_r − lr · (m_r / (1 − β1^t)) / (sqrt(v_r) / sqrt(1 − β2^t) + ε),   t = the table's step count;
  untouched rows keep p, m and v as they are. This is the lazy Adam of `torch.optim.SparseAdam` (TensorFlow's
  LazyAdam), which the tests use as the oracle (SparseAdam adds ε before the bias correction, Adam after it: equal up
  to ~ε). Every other parameter (and a table whose gradient came out dense in a step, e.g. a table also read through
  `.weight`) gets the plain (fused) `torch.optim.Adam` update.

Lazy vs dense Adam: they differ only for rows not touched in a step. Dense Adam keeps moving such a row by its
momentum (m decays by β1 a step but still moves p) and decays its v; lazy Adam leaves it alone until it is seen again.
The bias correction uses the table's step count t, not the row's, as SparseAdam does. When it pays (a batch touches a
small share of the rows) and its AUC effect are measured in benchmarks/bench_lazy_adam.py.

The state has Adam's layout (`step`, `exp_avg`, `exp_avg_sq` per parameter, one parameter group), so a checkpoint
written by one optimizer loads into the other, and `longrec.train.grow` grows it like Adam's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim.adam import adam

__all__ = ["OPTIMIZERS", "LazyAdam", "sparse_tables"]

OPTIMIZERS = ("adam", "lazy_adam")


class LazyAdam(torch.optim.Adam):
    """`torch.optim.Adam` that updates a parameter with a sparse gradient on its touched rows only.

    Args:
        params: the parameters (one group), as for `torch.optim.Adam`.
        lr: learning rate.
        betas, eps: as for Adam.
        fused: the fused Adam kernel for the dense parameters (as `torch.optim.Adam(fused=...)`).

    Example:
        >>> table = nn.Embedding(10, 4, sparse=True)
        >>> optimizer = LazyAdam(table.parameters(), lr=0.1)
        >>> table(torch.tensor([3])).sum().backward()
        >>> before = table.weight.detach().clone()
        >>> optimizer.step()
        >>> torch.nonzero((table.weight != before).any(1)).flatten().tolist()  # only row 3 moved
        [3]
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=fused)
        for group in self.param_groups:
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("LazyAdam supports neither weight_decay, amsgrad nor maximize.")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One update: the dense parameters by Adam, the sparse-gradient ones row by row."""
        if closure is not None:
            raise ValueError("LazyAdam.step takes no closure.")
        sparse = [p for group in self.param_groups for p in group["params"] if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for p in sparse]
        for p in sparse:  # hidden from Adam's step, which refuses sparse gradients
            p.grad = None
        try:
            super().step()
        finally:
            for p, g in zip(sparse, grads, strict=True):
                p.grad = g
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._rows_step(p, p.grad, group)

    def _rows_step(self, p: Tensor, grad: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:  # Adam's layout, so the state loads into either optimizer
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # free for one lookup's gradient (`sparse_rows_grad` returns it coalesced); a table looked up twice in a step
        # (targets and histories) gets autograd's uncoalesced sum of two, which this sorts
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()  # [U], [U, D]
        if rows.numel() == 0:
            return
        # Adam's own update (its fused kernel where the group has it) on the gathered rows, written back.
        p_rows, m, v = (x.index_select(0, rows) for x in (p, state["exp_avg"], state["exp_avg_sq"]))  # [U, D] each
        beta1, beta2 = group["betas"]
        adam(
            [p_rows], [g.contiguous()], [m], [v], [], [state["step"]],
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0, eps=group["eps"],
            maximize=False, foreach=False, fused=bool(group["fused"]),
        )  # fmt: skip
        for target, value in ((p, p_rows), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
            target.index_copy_(0, rows, value)


def sparse_tables(model: nn.Module) -> list[str]:
    """Switch every `nn.Embedding` of `model` to sparse gradients (`sparse = True`); returns their names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            module.sparse = True
            names.append(name)
    return names
