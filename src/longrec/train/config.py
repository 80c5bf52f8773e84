"""`TrainConfig`: optimisation, validation, stopping and execution options of a training run (the `[train]` table)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from longrec.settings import RESUME_APPLY, RESUME_FREE, ConfigError
from longrec.train.optim import OPTIMIZERS

__all__ = ["LOGGERS", "METRICS", "PRECISIONS", "TrainConfig"]

METRICS = ("auc", "gauc", "gauc_category", "logloss")
PRECISIONS = ("fp32", "bf16")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|auto")
LOGGERS = ("csv", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, validation and stopping."""

    # Fields marked RESUME_APPLY / RESUME_FREE may change on --resume (longrec.settings); the others are fixed.
    lr: float = field(default=1e-3, metadata=RESUME_APPLY)  # Adam learning rate
    # adam (every parameter, every step) | lazy_adam (embedding tables updated on the rows a batch touched only)
    optimizer: str = "adam"
    batch_size: int = 256
    eval_batch_size: int = field(default=4096, metadata=RESUME_FREE)
    epochs: int = field(default=2, metadata=RESUME_FREE)
    seed: int = 0  # model init, shuffling, everything random in training
    # shuffle the training samples each epoch (seeded); false keeps the store's order (an imported file's row order)
    shuffle: bool = True
    # L2 penalty on non-embedding weights (added to the loss, never to the reported logloss)
    l2: float = field(default=0.0, metadata=RESUME_APPLY)
    eval_every: int = field(default=0, metadata=RESUME_FREE)  # validate every N steps; 0 = at the end of each epoch
    metric: str = "auc"  # validation metric that picks the best checkpoint: auc | gauc | gauc_category | logloss
    # stop after this many validations without improvement; 0 = never stop early
    patience: int = field(default=0, metadata=RESUME_FREE)
    max_steps: int = field(default=0, metadata=RESUME_FREE)  # stop after this many steps in total; 0 = no limit
    threads: int = field(default=0, metadata=RESUME_FREE)  # torch intra-op threads; 0 = leave torch's default
    # progress on stderr: a bar on a terminal, else a plain line every 10 s (step, epoch, loss, samples/s, ETA)
    progress: bool = field(default=True, metadata=RESUME_FREE)
    # BCE weight per goal name ({buy = 2.0}); else 1
    goal_weights: dict[str, float] = field(default_factory=dict, metadata=RESUME_APPLY)
    # fp32 | bf16: autocast (bf16 MLPs; fp32 attention softmax/pooling, loss and weights)
    precision: str = field(default="fp32", metadata=RESUME_FREE)
    # embedding lookups gather each distinct id once, then scatter back (same result, less memory traffic)
    key_collection: bool = field(default=False, metadata=RESUME_FREE)
    # torch.compile the model's forward methods (needs a C compiler on the CPU)
    compile: bool = field(default=False, metadata=RESUME_FREE)
    device: str = field(default="cpu", metadata=RESUME_FREE)  # cpu | cuda | cuda:N | auto (cuda when available)
    # extra records of the run in its directory: "csv" (metrics.csv), "tensorboard" (tensorboard/, needs the extra)
    loggers: list[str] = field(default_factory=list, metadata=RESUME_FREE)
    log_every: int = field(default=50, metadata=RESUME_FREE)  # steps per training row of the loggers
    # stop when the mean loss of the last 20 steps exceeds this many times that of the first 20 (or is not finite);
    # 0 = only a non-finite loss stops the run
    divergence: float = field(default=100.0, metadata=RESUME_FREE)

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}. Got {self.optimizer!r} instead.")
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision must be one of {', '.join(PRECISIONS)}. Got {self.precision!r} instead.")
        if not DEVICE_PATTERN.fullmatch(self.device):
            problems.append(f"train.device must be cpu, cuda, cuda:N or auto. Got {self.device!r} instead.")
        for goal, weight in self.goal_weights.items():
            ok = isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight < float("inf")
            if not isinstance(goal, str) or not goal or not ok:
                problems.append(f"train.goal_weights[{goal!r}] must be a finite float >= 0. Got {weight!r} instead.")
        for name in ("batch_size", "eval_batch_size", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be a positive int. Got {getattr(self, name)} instead.")
        if self.lr <= 0:
            problems.append(f"train.lr must be > 0. Got {self.lr} instead.")
        if self.l2 < 0:
            problems.append(f"train.l2 must be >= 0. Got {self.l2} instead.")
        for name in ("eval_every", "patience", "max_steps", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name} must be >= 0. Got {getattr(self, name)} instead.")
        if self.log_every < 1:
            problems.append(f"train.log_every must be a positive int. Got {self.log_every} instead.")
        if not self.divergence >= 0:
            problems.append(f"train.divergence must be >= 0 (0 = off). Got {self.divergence} instead.")
        for name in self.loggers:
            if name not in LOGGERS:
                problems.append(f"train.loggers: unknown logger {name!r}. Known loggers: {', '.join(LOGGERS)}.")
        if self.metric not in METRICS:
            problems.append(f"train.metric must be one of {', '.join(METRICS)}. Got {self.metric!r} instead.")
        if problems:
            raise ConfigError(problems, "TrainConfig")
