"""`DataConfig`: which prepared store a run reads, and how its samples are batched (the `[data]` table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from longrec.settings import RESUME_FREE, ConfigError

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Which prepared store to read, and how to batch it."""

    # Fields marked RESUME_FREE may change on --resume (longrec.settings); the others are fixed.
    path: str = ""  # folder written by `longrec prepare` (a run records it absolute, and its vocabulary sha)
    # a sharded folder (`prepare --shards N`, path = OUT): the shard indices to read, [] = all (longrec.data.sharded)
    shards: list[int] = field(default_factory=list)
    max_history: int = 200  # L_max: most recent behaviours kept per sample
    # background processes building batches (0 = in the training process)
    num_workers: int = field(default=0, metadata=RESUME_FREE)
    prefetch_factor: int = field(default=4, metadata=RESUME_FREE)  # batches each worker builds ahead
    # check_batch on every batch (shapes, id ranges); `longrec --debug train` sets it
    check_batches: bool = field(default=False, metadata=RESUME_FREE)
    bucket_by_length: bool = False  # batch samples of similar history length together (less padding), order shuffled
    bucket_batches: int = 50  # bucket_by_length: batches per length-sorting pool; 0 = sort the whole epoch
    # folder written by `longrec summarise` (stored per-sample user states, `longrec.data.summaries`): batches carry
    # them instead of histories, the model starts from the weights that computed them with its user side frozen, and
    # only the candidate side trains (stage 2 of VISTA's training; step cost independent of L); "" = off
    summaries: str = ""
    # item content modalities to read from the store's content/ folder (`longrec content add`), e.g. ["text"]: a
    # model with a content option (DIN's content_proj) gets their vectors, concatenated, as a frozen table
    content: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if self.bucket_batches < 0:
            problems.append(f"data.bucket_batches must be >= 0. Got {self.bucket_batches} instead.")
        if self.max_history < 1:
            problems.append(f"data.max_history must be a positive int. Got {self.max_history} instead.")
        if self.num_workers < 0:
            problems.append(f"data.num_workers must be >= 0. Got {self.num_workers} instead.")
        if self.prefetch_factor < 1:
            problems.append(f"data.prefetch_factor must be >= 1. Got {self.prefetch_factor} instead.")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.shards) or len(
            set(self.shards)
        ) != len(self.shards):
            problems.append(f"data.shards must list distinct shard indices >= 0. Got {self.shards!r} instead.")
        if any(not isinstance(m, str) or not m for m in self.content) or len(set(self.content)) != len(self.content):
            problems.append(f"data.content must list distinct modality names. Got {self.content!r} instead.")
        if problems:
            raise ConfigError(problems, "DataConfig")
