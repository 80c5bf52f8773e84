"""VQL: context-aware Vector Quantization attention for ultra-long behaviour sequences (Kuaishou, 2025; design notes
in docs/ultra_long.md).

Key-only quantization: each behaviour's attention key is snapped to the nearest code of a small codebook, its value
stays exact. With codes z_i and a query-independent weight w_i per behaviour, softmax attention regroups by code:

    Σ_i softmax_i(q·c_{z_i} + log w_i) v_i = Σ_m exp(q·c_m) S_m / Σ_m exp(q·c_m) n_m,
    S_m = Σ_{i: z_i = m} w_i v_i,  n_m = Σ_{i: z_i = m} w_i                                  (the per-user cache)

so a candidate costs O(N·d) against the cache, independent of L. `user_state(batch)` builds the cache from the
history alone; `score_with_state(state, batch)` scores candidates from it and touches nothing of size L;
`forward` runs the same quantized attention behaviour by behaviour (what training differentiates) and equals the
cached path up to float rounding. `exact_attention` uses the unquantized keys, and `attention_error` reports the
relative error of the quantized attention against it (the paper's bound on it does not grow with L).

- Multi-scale: G head groups (one attention head each), group g with its own codebook of N_g codes
  (`codebook_sizes`, e.g. 8 coarse and 32 fine) and its own temporal decay λ_g. The outputs are concatenated.
- Separable temporal kernel: w_i = exp(-λ_g (t_now - t_i)) = exp(-λ_g (t_now - t_ref)) · exp(-λ_g (t_ref - t_i)).
  The first factor is shared by every behaviour of the example, so it cancels in the softmax: we fold the kernel
  relative to t_ref = the most recent behaviour (ages t_ref - t_i = Δ_i - min_j Δ_j from `history_time_delta`, or
  from relative positions), so the cache depends on the history only, its exponents are <= 0 (no overflow; the
  newest behaviour has weight 1), it stays valid whenever the request comes, and a shift of every Δ_i (a later
  target time) leaves it unchanged. λ_g = softplus(ρ_g) / scale_g, learnable, with ρ_g = softplus⁻¹(1) at init, so
  the groups start at the fixed multi-scale time constants `decay_scales` (default geometric from 8 to 512
  behaviours, or from 1 day to 1 year of seconds).
- Context injection without enlarging the codebook: static item features (the taxonomy path) enter the key before
  quantization through `BehaviourEmbedding`; per-behaviour context fields (`context`: action, domain) enter as a
  learned log-prior per group, b_g(ctx_i), folded into w_i exactly like the temporal kernel (query-independent, so
  the cache keeps its [G, N, d + 1] shape), and are concatenated into the value input. Neither grows N.
- Keys and codes are L2-normalised (cosine VQ, as ViT-VQGAN): both live on the unit sphere from step 0, so a random
  normal codebook needs no data-dependent init and no code dies of a scale mismatch. Nearest code = largest cosine.
  Dead codes are not revived (kept simple). The query is the target through the *keys'* projection, normalised and
  scaled by a learnable temperature τ_g (`logit_scale`): logits τ_g·cos(q, c_m). Target and behaviours share one
  embedding and one projection (as TIN/TWIN share one space), so a behaviour like the target scores high from step 0;
  a separate query projection (or unnormalised queries, whose small init norm left attention flat) learned a planted
  category match much more slowly (test AUC ~0.68 vs ~0.89 after 300 steps).
- Training: straight-through key k̂_i = c_{z_i} + (k_i - sg(k_i)), whose value is the code, so the task gradient
  reaches the key projection (STE) and, through q·c_m (the term serving scores), the codebook.
  `forward_with_extra_loss` adds loss_weight · (||sg(k) - c||² + β ||k - sg(c)||²) (codebook + commitment).
- Head: o = W_O [out_1 ⊕ ... ⊕ out_G] (width E), MLP on [v_t, o, v_t ⊙ o]. Empty history: every output is 0 and
  the logit depends on the target alone.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), G head groups, N codes per group (the largest N_g; the smaller codebooks are padded and masked), d
group width, X = D context width (0 without context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, lookup, mlp

__all__ = ["CONTEXT_FIELDS", "TEMPORAL", "VQL", "VQLConfig", "attention_error"]

TEMPORAL = ("position", "time", "none")
# context field -> (vocabulary size in the config, Batch field it reads)
CONTEXT_FIELDS = {"action": ("num_actions", "history_action"), "domain": ("num_domains", "history_domain")}
_DEFAULT_SCALES = {"position": (8.0, 512.0), "time": (86_400.0, 365.0 * 86_400.0), "none": (1.0, 1.0)}
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(ρ) = 1


def _positive_floats(owner: str, name: str, value: object) -> tuple[float, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{owner}.{name} must be a list of positive floats. Got {value!r} instead.")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int | float) or not x > 0:
            raise ValueError(f"{owner}.{name}[{i}] must be a positive float. Got {x!r} instead.")
    return tuple(float(x) for x in value)


@dataclass(frozen=True)
class VQLConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    num_actions: int = 0  # action vocabulary incl. id 0 (from the data); needed by context "action"
    num_domains: int = 0  # domain vocabulary incl. id 0 (from the data); needed by context "domain"
    dim: int = 16  # D, width of each embedding table
    head_dim: int = 16  # d, width of each group's keys, codes, queries and values
    codebook_sizes: tuple[int, ...] = (8, 32)  # N_g codes of each head group; G = len(codebook_sizes)
    temporal: str = "position"  # separable kernel over: position (history_position) | time (seconds) | none
    decay_scales: tuple[float, ...] = ()  # 1/λ_g at init per group (behaviours or seconds); () = geometric default
    context: tuple[str, ...] = ()  # per-behaviour context fields folded into the cache weights: action, domain
    logit_scale: float = 8.0  # τ_g at init: attention logits are τ_g·cos(q, c), τ_g learnable per group
    commitment: float = 0.25  # β of the commitment loss
    loss_weight: float = 1.0  # weight of (codebook + β·commitment) in forward_with_extra_loss; 0 = off
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings start at N(0, init_std²)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        for name in ("num_actions", "num_domains"):
            check_int(owner, name, getattr(self, name), minimum=0)
        check_int(owner, "head_dim", self.head_dim)
        if isinstance(self.codebook_sizes, str) or not isinstance(self.codebook_sizes, list | tuple):
            raise ValueError(f"{owner}.codebook_sizes must be a list of code counts. Got {self.codebook_sizes!r}.")
        for g, size in enumerate(self.codebook_sizes):
            check_int(owner, f"codebook_sizes[{g}]", size)
        if not self.codebook_sizes:
            raise ValueError(f"{owner}.codebook_sizes must name at least one head group, e.g. [8, 32]. Got [].")
        object.__setattr__(self, "codebook_sizes", tuple(self.codebook_sizes))
        if self.temporal not in TEMPORAL:
            raise ValueError(f"{owner}.temporal must be one of {', '.join(TEMPORAL)}. Got {self.temporal!r} instead.")
        scales = _positive_floats(owner, "decay_scales", self.decay_scales)
        if scales and len(scales) != len(self.codebook_sizes):
            raise ValueError(
                f"{owner}.decay_scales must hold one scale per head group ({len(self.codebook_sizes)}, as "
                f"codebook_sizes) or none. Got {len(scales)} instead."
            )
        object.__setattr__(self, "decay_scales", scales)
        if isinstance(self.context, str) or not isinstance(self.context, list | tuple):
            raise ValueError(f"{owner}.context must be a list of field names. Got {self.context!r} instead.")
        for name in self.context:
            if name not in CONTEXT_FIELDS or list(self.context).count(name) > 1:
                raise ValueError(
                    f"{owner}.context must hold distinct names among {', '.join(CONTEXT_FIELDS)}. Got {name!r} in "
                    f"{list(self.context)} instead."
                )
            size_name = CONTEXT_FIELDS[name][0]
            if getattr(self, size_name) < 2:
                raise ValueError(
                    f"{owner}.context includes {name!r}, but {size_name} = {getattr(self, size_name)} (the data has "
                    f"no {name} column). Drop {name!r} from context or prepare the data with it."
                )
        object.__setattr__(self, "context", tuple(self.context))
        if isinstance(self.logit_scale, bool) or not isinstance(self.logit_scale, int | float) or self.logit_scale <= 0:
            raise ValueError(f"{owner}.logit_scale must be a positive float. Got {self.logit_scale!r} instead.")
        for name in ("commitment", "loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{owner}.{name} must be a non-negative float. Got {value!r} instead.")
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))

    def scales(self) -> tuple[float, ...]:
        """1/λ_g at init per head group: `decay_scales`, or geometric between the temporal mode's defaults."""
        if self.decay_scales:
            return self.decay_scales
        lo, hi = _DEFAULT_SCALES[self.temporal]
        G = len(self.codebook_sizes)
        return tuple(lo * (hi / lo) ** (g / (G - 1)) if G > 1 else math.sqrt(lo * hi) for g in range(G))


class VQL(nn.Module):
    """Key-only vector-quantized target attention with multi-scale head groups and a per-user cache."""

    decay_scale: Tensor  # [G] buffer, 1/λ_g at init
    code_mask: Tensor  # [G, N] buffer, True on each group's N_g real codes

    def __init__(self, config: VQLConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = BehaviourEmbedding(c.num_items, c.dim, c.num_categories, c.taxonomy_levels, c.init_std)
        E, G, d = self.embedding.out_dim, len(c.codebook_sizes), c.head_dim
        self.context_embedding = nn.ModuleDict()
        for name in c.context:
            table = nn.Embedding(getattr(c, CONTEXT_FIELDS[name][0]), c.dim, padding_idx=0)
            nn.init.normal_(table.weight, std=c.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
            self.context_embedding[name] = table
        X = c.dim if c.context else 0
        self.key = nn.Linear(E, G * d, bias=False)  # a bias would point every key the same way at init
        self.value = nn.Linear(E + X, G * d)
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(n, d) / math.sqrt(d)) for n in c.codebook_sizes)
        self.logit_scale = nn.Parameter(torch.full((G,), math.log(c.logit_scale)))  # log τ_g
        self.context_prior = nn.Linear(X, G) if c.context else None
        self.decay_raw = nn.Parameter(torch.full((G,), _SOFTPLUS_ONE)) if c.temporal != "none" else None
        self.register_buffer("decay_scale", torch.tensor(c.scales()), persistent=False)  # [G]
        sizes = torch.tensor(c.codebook_sizes)
        self.register_buffer("code_mask", torch.arange(int(sizes.max())) < sizes.unsqueeze(1), persistent=False)
        self.out = nn.Linear(G * d, E)
        self.head = mlp(3 * E, c.head_hidden)
        self.reads: tuple[str, ...] = (
            self.embedding.reads
            + (("history_time_delta",) if c.temporal == "time" else ())
            + tuple(CONTEXT_FIELDS[name][1] for name in c.context)
        )

    def decay(self) -> Tensor:
        """λ_g > 0 per head group, [G], in 1/behaviours (temporal = position) or 1/seconds (time)."""
        assert self.decay_raw is not None, "temporal = 'none' has no decay"
        return F.softplus(self.decay_raw) / self.decay_scale  # [G]

    def codes(self) -> Tensor:
        """Unit codes of every group, [G, N, d]; rows past a group's N_g are 0 (and `code_mask` is False)."""
        N = self.code_mask.shape[1]
        return torch.stack([F.pad(F.normalize(c, dim=-1), (0, 0, 0, N - c.shape[0])) for c in self.codebooks])

    def assign(self, keys: Tensor) -> Tensor:
        """Nearest code (largest cosine) of each unit key [..., G, d] in its group's codebook -> [...] int64."""
        with torch.no_grad():
            similarity = torch.einsum("...gd,gnd->...gn", keys, self.codes())  # [..., G, N]
            return similarity.masked_fill(~self.code_mask, -math.inf).argmax(-1)  # [..., G]

    def _history(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Unit keys k [B, L, G, d], values v [B, L, G, d] and log-weights log w [B, L, G] (<= 0, 0 on padding)."""
        c, mask = self.config, batch.history_mask
        B, L = mask.shape
        G, d = len(c.codebook_sizes), c.head_dim
        e = lookup(self.embedding.tables, self.embedding.history_ids(batch))  # [B, L, E]
        k = F.normalize(self.key(e).view(B, L, G, d), dim=-1)  # [B, L, G, d]
        log_w = e.new_zeros(B, L, G)  # [B, L, G]
        value_input = e
        if c.context:
            ids = [getattr(batch, CONTEXT_FIELDS[name][1]) for name in c.context]
            ctx = sum(table(i) for table, i in zip(self.context_embedding.values(), ids, strict=True))  # [B, L, X]
            assert isinstance(ctx, Tensor) and self.context_prior is not None
            value_input = torch.cat([e, ctx], dim=-1)  # [B, L, E + X]
            log_w = log_w + self.context_prior(ctx)  # [B, L, G], the context's log-prior b_g(ctx_i)
        v = self.value(value_input).view(B, L, G, d)  # [B, L, G, d]
        if c.temporal != "none":
            if c.temporal == "time":
                assert batch.history_time_delta is not None  # in reads: check_batch's job
                delta = batch.history_time_delta.to(e.dtype)  # [B, L] seconds to the target
            elif batch.history_position is not None:
                delta = batch.history_position.to(e.dtype)  # [B, L] most recent = 1
            else:  # left padding: position = real behaviours from this column to the end
                delta = (mask.flip(1).cumsum(1).flip(1) * mask).to(e.dtype)  # [B, L]
            # Age relative to the most recent behaviour: the target-time factor of the kernel cancels in the softmax.
            newest = delta.masked_fill(~mask, math.inf).amin(1, keepdim=True)  # [B, 1]
            age = torch.where(mask, delta - newest, 0.0)  # [B, L], >= 0
            log_w = log_w - age.unsqueeze(-1) * self.decay()  # [B, L, G]
        # Fold relative to the heaviest behaviour (a common factor per example and group, which cancels too).
        top = log_w.masked_fill(~mask.unsqueeze(-1), torch.finfo(e.dtype).min).amax(1, keepdim=True)  # [B, 1, G]
        return k, v, torch.where(mask.unsqueeze(-1), log_w - top.detach(), 0.0)

    def _target(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The target embedding v_t [B, E] and the groups' queries q [B, G, d]."""
        t = lookup(self.embedding.tables, self.embedding.target_ids(batch))  # [B, E]
        q = F.normalize(self.key(t).view(len(t), len(self.codebooks), -1), dim=-1)  # [B, G, d], keys' projection
        return t, q * self.logit_scale.exp().unsqueeze(-1)  # [B, E], [B, G, d], τ_g q̂

    def _attention(self, batch: Batch, exact: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention output [B, G·d] (quantized keys, or exact ones), target v_t [B, E], keys k and codes c_z."""
        mask = batch.history_mask.unsqueeze(-1)  # [B, L, 1]
        k, v, log_w = self._history(batch)  # [B, L, G, d], [B, L, G, d], [B, L, G]
        G = k.shape[2]
        c_z = self.codes()[torch.arange(G, device=k.device), self.assign(k)]  # [B, L, G, d]
        keys = k if exact else c_z + (k - k.detach())  # straight-through: the value is the code
        t, q = self._target(batch)  # [B, E], [B, G, d]
        scores = torch.einsum("bgd,blgd->blg", q, keys) + log_w  # [B, L, G]
        # An empty history gets a uniform softmax over padding, which the mask then zeroes: output 0, no NaN.
        alpha = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=1) * mask  # [B, L, G]
        out = torch.einsum("blg,blgd->bgd", alpha, v).flatten(1)  # [B, G·d]
        return out, t, k, c_z

    def _head(self, out: Tensor, t: Tensor) -> Tensor:
        o = self.out(out)  # [B, E]
        return self.head(torch.cat([t, o, t * o], dim=-1)).squeeze(-1)  # [B]

    def quantized_attention(self, batch: Batch) -> Tensor:
        """The uncached quantized attention output, [B, G·d], computed behaviour by behaviour."""
        return self._attention(batch, exact=False)[0]

    def exact_attention(self, batch: Batch) -> Tensor:
        """The same attention with the unquantized keys (the reference of `attention_error`), [B, G·d]."""
        return self._attention(batch, exact=True)[0]

    def user_state(self, batch: Batch) -> Tensor:
        """The per-user cache [B, G, N, d + 1]: S_m = Σ_{z_i=m} w_i v_i in [..., :d], n_m = Σ_{z_i=m} w_i in [..., d].

        Reads only the history fields (never the target, goal or target_time); n_m = 0 for an unused code.
        """
        k, v, log_w = self._history(batch)  # [B, L, G, d], [B, L, G, d], [B, L, G]
        B, L, G, d = k.shape
        w = log_w.exp() * batch.history_mask.unsqueeze(-1)  # [B, L, G], in [0, 1]
        src = torch.cat([w.unsqueeze(-1) * v, w.unsqueeze(-1)], dim=-1).transpose(1, 2)  # [B, G, L, d + 1]
        index = self.assign(k).transpose(1, 2).unsqueeze(-1).expand(B, G, L, d + 1)  # [B, G, L, d + 1]
        state = src.new_zeros(B, G, self.code_mask.shape[1], d + 1)  # [B, G, N, d + 1]
        return state.scatter_add(2, index, src)  # [B, G, N, d + 1]

    def cached_attention(self, state: Tensor, batch: Batch) -> Tensor:
        """The quantized attention output [B, G·d] from the cache: O(N·d) per candidate, nothing of size L read."""
        _, q = self._target(batch)  # [B, G, d]
        S, n = state[..., :-1], state[..., -1]  # [B, G, N, d], [B, G, N]
        used = n > 0  # codes holding no behaviour contribute nothing
        tiny = torch.finfo(state.dtype).tiny
        # Σ_m exp(q·c_m) S_m / Σ_m exp(q·c_m) n_m = Σ_m softmax_m(q·c_m + log n_m) S_m / n_m, in log space.
        scores = torch.einsum("bgd,gnd->bgn", q, self.codes()) + n.clamp_min(tiny).log()  # [B, G, N]
        a = scores.masked_fill(~used, torch.finfo(state.dtype).min).softmax(-1) * used  # [B, G, N], 0 when empty
        return torch.einsum("bgn,bgnd->bgd", a, S / n.clamp_min(tiny).unsqueeze(-1)).flatten(1)  # [B, G·d]

    def score_with_state(self, state: Tensor, batch: Batch) -> Tensor:
        """One logit per candidate [B] from the cache `user_state` built (reads only the target-side fields)."""
        t, _ = self._target(batch)  # [B, E]
        return self._head(self.cached_attention(state, batch), t)  # [B]

    def forward_with_extra_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits [B] and loss_weight · (codebook + β·commitment), averaged over real behaviours and groups."""
        out, t, k, c_z = self._attention(batch, exact=False)
        mask = batch.history_mask.unsqueeze(-1).to(k.dtype)  # [B, L, 1]
        count = (mask.sum() * k.shape[2]).clamp_min(1.0)
        codebook = (((k.detach() - c_z) ** 2).sum(-1) * mask).sum() / count
        commitment = (((k - c_z.detach()) ** 2).sum(-1) * mask).sum() / count
        return self._head(out, t), self.config.loss_weight * (codebook + self.config.commitment * commitment)

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B] (= score_with_state(user_state(batch), batch))."""
        out, t, _, _ = self._attention(batch, exact=False)
        return self._head(out, t)  # [B]


def attention_error(model: VQL, batch: Batch) -> Tensor:
    """Relative error ||o_quantized - o_exact|| / ||o_exact|| of the attention output per example, [B].

    0 for an empty history. Called by tests and benchmarks to report how quantization error behaves as L grows.
    """
    with torch.no_grad():
        quantized, exact = model.quantized_attention(batch), model.exact_attention(batch)  # [B, G·d] each
        return (quantized - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-12)  # [B]
