"""The pre-LN Transformer block that TD-SASRec (causal, over the user's sequence and its query tokens) and Stacked TIN
(bidirectional, over the searched behaviours before target attention) share, and the boolean mask it runs under.

Shapes: N sequences (batch rows, or rows x streams), S tokens per sequence, E width, H attention heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TransformerBlock", "attention_mask"]


def attention_mask(real: Tensor, causal: bool) -> Tensor:
    """Which key each query token may attend to, [N, 1, S, S] bool (True = allowed), from real tokens [N, S].

    A token attends to the real tokens (all of them, or those at or before it when `causal`) and always to itself,
    so a padding token, or a sequence with no real token, never meets an all-masked softmax; no real token ever
    attends to padding, so what stands under padding never reaches a real token.
    """
    S = real.shape[1]
    itself = torch.eye(S, dtype=torch.bool, device=real.device)  # [S, S]
    allowed = real.unsqueeze(1) | itself  # [N, S, S], key columns
    if causal:
        allowed = allowed & torch.ones(S, S, dtype=torch.bool, device=real.device).tril()  # [N, S, S]
    return allowed.unsqueeze(1)  # [N, 1, S, S]


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block: x + MHA(LN(x)) under a boolean mask, then x + FFN(LN(x))."""

    def __init__(self, width: int, heads: int, ffn_width: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_width), nn.ReLU(), nn.Linear(ffn_width, width))

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [N, S, E], allowed [N, 1, S, S] bool (True = query row may attend to key column) -> [N, S, E]."""
        N, S, E = x.shape
        p = self.dropout if self.training else 0.0
        qkv = self.qkv(self.attention_norm(x)).view(N, S, 3, self.heads, E // self.heads)  # [N, S, 3, H, E/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [N, H, S, E/H] each
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # [N, H, S, E/H]
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(N, S, E)), p, self.training)  # [N, S, E]
        return x + F.dropout(self.ffn(self.ffn_norm(x)), p, self.training)  # [N, S, E]
