"""The model contract: what every model provides, and the optional capabilities a model may add.

**Every model** (an entry of `MODELS`) is an `nn.Module` built from one frozen config dataclass, with
`reads: tuple[str, ...]` (the optional `Batch` fields it needs, checked at the edge by `check_batch`) and
`forward(batch) -> logits [B]`, pure: no device moves, no optimizer, no loss.

**Optional capabilities** are `typing.Protocol`s, declared here once. A model has a capability when it defines the
protocol's methods with the protocol's parameters; `check_contract` verifies that for every registered model when
`longrec.models` is imported (a misspelt or mis-signed capability method is an error then, not a silent skip in the
loop), and the callers ask by type, `isinstance(model, OwnLoss)`, never with ad-hoc `getattr` probes:

| capability | methods | used by |
| --- | --- | --- |
| `SearchEmbedder` | `search_embeddings(batch) -> (query [B, D], keys [B, L, D])` | soft/simhash/sdim search |
| `OwnLoss` | `loss(batch) -> Tensor or None` (None: the loop's BCE) | `train_step` (TD-SASRec) |
| `AuxiliaryHead` | `aux_logits(batch) -> [B] or None`, `forward_with_aux(batch, search)` | `train_step` (TWIN, DARE) |
| `ExtraLoss` | `forward_with_extra_loss(batch) -> (logits [B], loss [])` | `train_step` (VISTA, VQL) |
| `AttentionWeights` | `attention_weights(batch) -> [B, L] or [B, G, L]` | `longrec analyze` |
| `FieldAttribution` | `field_scores(batch) -> {field: [B, G, L]}`, `group_names` | `longrec analyze` (DSI-TIN) |
| `KeyedTemporal` | `temporal_key -> TDPEKey or None` (the TDPE key; None: one table) | `longrec analyze` (TIN family) |
| `CachedUserState` | `user_state(batch) -> [B, ...]`, `score_with_state(state, batch)` | `UserStateCache`, logits_of |
| `CandidateScorer` | `score_candidates(batch, candidates, goals, candidate_category) -> [B, C]` | `eval.retrieval` |

`SearchEmbedder` is defined by its consumer, the search stage (`longrec.search`, which sits below the models), and
re-exported here. A model without `CandidateScorer` is still scored against a candidate pool, one user at a time
(`longrec.search.one_user_request`: C rows viewing one history, through search and `forward`), only slower.

Shapes: B batch, L history length, D search dim, G attention groups (modules, heads or layers), C candidates, M
taxonomy levels.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.tdpe import TDPEKey
from longrec.search import SearchEmbedder
from longrec.search.config import SearchConfig

__all__ = [
    "CAPABILITIES",
    "AttentionWeights",
    "AuxiliaryHead",
    "CachedUserState",
    "CandidateScorer",
    "ExtraLoss",
    "FieldAttribution",
    "KeyedTemporal",
    "OwnLoss",
    "SearchEmbedder",
    "capabilities",
    "check_contract",
    "logits_of",
]


@runtime_checkable
class OwnLoss(Protocol):
    """A model whose training loss is its own (TD-SASRec's ranking losses couple the rows of a batch)."""

    def loss(self, batch: Batch) -> Tensor | None: ...


@runtime_checkable
class AuxiliaryHead(Protocol):
    """A second head on full-history attention, trained with the same labels (TWIN/DARE), and a fused fast path that
    serves search, the main head and the auxiliary head from one lookup (None when it does not apply)."""

    def aux_logits(self, batch: Batch) -> Tensor | None: ...

    def forward_with_aux(self, batch: Batch, search: SearchConfig) -> tuple[Tensor, Tensor] | None: ...


@runtime_checkable
class ExtraLoss(Protocol):
    """A regulariser computed in the same forward (VISTA's reconstruction, VQL's codebook and commitment losses),
    added to the training loss, never to the reported logloss."""

    def forward_with_extra_loss(self, batch: Batch) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class AttentionWeights(Protocol):
    """Attention weights over the (unsearched) history, for analysis."""

    def attention_weights(self, batch: Batch) -> Tensor: ...


@runtime_checkable
class FieldAttribution(Protocol):
    """Attention logits split by side-information field, per named attention group (DSI-TIN)."""

    group_names: list[str]

    def field_scores(self, batch: Batch) -> dict[str, Tensor]: ...


@runtime_checkable
class KeyedTemporal(Protocol):
    """Temporal tables picked by a target-side key (TDPE): the key, or None when one table serves every target."""

    @property
    def temporal_key(self) -> TDPEKey | None: ...


@runtime_checkable
class CachedUserState(Protocol):
    """A user side computed once per user and cached between requests: forward == score_with_state(user_state)."""

    def user_state(self, batch: Batch) -> Tensor: ...

    def score_with_state(self, state: Tensor, batch: Batch) -> Tensor: ...


@runtime_checkable
class CandidateScorer(Protocol):
    """Scores many candidates per user cheaply, the user side computed once per request (TD-SASRec: user vectors x
    item vectors), equal to `forward` with each candidate as the target; used to rank a candidate pool."""

    def score_candidates(
        self, batch: Batch, candidates: Tensor, goals: Tensor, candidate_category: Tensor | None = None
    ) -> Tensor:
        """batch: the requests' histories; candidates [B, C] item ids; goals [B, C]; candidate_category [B, C, M]
        (needed when the model reads categories) -> logits [B, C]."""
        ...


CAPABILITIES: dict[str, type] = {
    "search_embeddings": SearchEmbedder,
    "own_loss": OwnLoss,
    "auxiliary_head": AuxiliaryHead,
    "extra_loss": ExtraLoss,
    "attention_weights": AttentionWeights,
    "field_attribution": FieldAttribution,
    "keyed_temporal": KeyedTemporal,
    "cached_user_state": CachedUserState,
    "candidate_scorer": CandidateScorer,
}


def _members(protocol: type) -> dict[str, Any]:
    """The protocol's methods (name -> function) and attributes (name -> None)."""
    names = {n for n in vars(protocol) if not n.startswith("_")} | set(getattr(protocol, "__annotations__", {}))
    return {n: vars(protocol).get(n) if callable(vars(protocol).get(n)) else None for n in names}


def _parameters(function: Any) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values()][1:]  # without self


def capabilities(cls: type[nn.Module]) -> frozenset[str]:
    """The names (keys of `CAPABILITIES`) of the capabilities model class `cls` implements: all of a protocol's
    methods and attributes present."""
    return frozenset(
        name for name, protocol in CAPABILITIES.items() if all(hasattr(cls, m) for m in _members(protocol))
    )


def check_contract(name: str, cls: type[nn.Module]) -> None:
    """Refuse a model class that half-implements a capability or implements one with other parameters.

    Raises:
        TypeError: naming the model, the capability, the method, and the expected and found parameters.
    """
    for protocol in CAPABILITIES.values():
        members = _members(protocol)
        present = [m for m in members if hasattr(cls, m)]
        if present and len(present) < len(members):
            missing = sorted(set(members) - set(present))
            raise TypeError(
                f"model '{name}' ({cls.__name__}) defines {present} of capability {protocol.__name__} but not "
                f"{missing}: implement all of it, or rename the method."
            )
        for member, function in members.items():
            if function is None or not present:
                continue
            expected, found = _parameters(function), _parameters(getattr(cls, member))
            if found != expected:
                raise TypeError(
                    f"model '{name}' ({cls.__name__}).{member} takes ({', '.join(found)}); capability "
                    f"{protocol.__name__} expects ({', '.join(expected)})."
                )


def logits_of(model: nn.Module, batch: Batch) -> Tensor:
    """The model's logits [B] on `batch`: `model(batch)`, or, when the batch carries a stored user state
    (`Batch.user_state`, e.g. VISTA's cached summaries), `score_with_state(batch.user_state, batch)`.

    Raises:
        TypeError: a stored user state for a model without the `CachedUserState` capability.
    """
    if batch.user_state is None:
        return model(batch)
    if not isinstance(model, CachedUserState):
        raise TypeError(
            f"the batch carries stored user states (data.summaries), but {type(model).__name__} has no "
            "user_state / score_with_state (CachedUserState): only such models (VISTA, VQL) can train from them."
        )
    return model.score_with_state(batch.user_state, batch)
