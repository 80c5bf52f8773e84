"""What the training loop tells the outside world: a small callback interface and the built-in listeners.

The loop (`longrec.train.loop.fit`) calls every callback at four points, in order:

    on_train_start(info)                       once; info: steps_total, steps_done, epochs, samples_per_epoch, out
                                               (the run directory), model (the module being trained: read it,
                                               e.g. its state_dict(), never change it)
    on_step(step, epoch, loss, samples)        after every optimizer step; `loss` is a 0-dim tensor (call .item()
                                               only when you log it: on a GPU it waits for the step to finish)
    on_validation(step, epoch, metrics, best)  after every validation; `best` is True when it became the checkpoint
    on_train_end(result)                       once, with what metrics.json holds

A callback is any object with these four methods (`Callback`, a Protocol): no base class to inherit. Built in:
- `ProgressBar`: a rich progress bar on a terminal (step, loss, samples/s);
- `ProgressLines`: without a terminal (nohup, Slurm, CI), a plain log line every `every_s` seconds and at every
  validation: step, epoch, loss, samples/s, ETA;
- `CSVLogger` (`train.loggers = ["csv"]`): `metrics.csv` in the run directory, one row per `log_every` steps (mean
  training loss over them, samples/s) and one per validation (its metrics), flushed as it goes;
- `TensorBoardLogger` (`train.loggers = ["tensorboard"]`, needs the `tensorboard` extra): the same scalars as event
  files under `tensorboard/`.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from longrec.train.config import LOGGERS

__all__ = [
    "CSVLogger",
    "Callback",
    "ProgressBar",
    "ProgressLines",
    "TensorBoardLogger",
    "make_loggers",
    "progress_callback",
]

logger = logging.getLogger("longrec.train")


class Callback(Protocol):
    """Listens to a training run (see the module docstring for when each method is called)."""

    def on_train_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None: ...

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None: ...

    def on_train_end(self, result: dict[str, Any]) -> None: ...


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressBar:
    """A rich progress bar on stderr (a terminal only): steps done, elapsed time, loss and samples/s."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task("training", total=None, status="")
        self._started = self._next = 0.0
        self._seen = 0

    def on_train_start(self, info: dict[str, Any]) -> None:
        self._bar.update(self._task, total=info["steps_total"], completed=info["steps_done"])
        self._bar.start()
        self._started = time.perf_counter()

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None:
        self._seen += samples
        self._bar.update(self._task, completed=step)
        now = time.perf_counter()
        if now >= self._next:  # loss.item() waits for a GPU step: twice a second is enough
            rate = self._seen / max(now - self._started, 1e-9)
            self._bar.update(self._task, status=f"loss {loss.item():.4f} · {rate:,.0f} samples/s")
            self._next = now + 0.5

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        pass

    def on_train_end(self, result: dict[str, Any]) -> None:
        self._bar.stop()


class ProgressLines:
    """Progress as plain log lines, for runs without a terminal: every `every_s` seconds and at each validation.

    A line reads `step 120/900 (13%) · epoch 1/3 · loss 0.5123 · 8,123 samples/s · ETA 1m05s`; the loss is the mean
    over the steps since the previous line.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._total = self._epochs = self._first_step = self._steps = self._seen = 0
        self._loss_sum = 0.0
        self._started = self._last = 0.0

    def on_train_start(self, info: dict[str, Any]) -> None:
        self._total, self._epochs, self._first_step = info["steps_total"], info["epochs"], info["steps_done"]
        self._started = self._last = time.perf_counter()

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None:
        self._steps += 1
        self._seen += samples
        self._loss_sum += float(loss)
        if time.perf_counter() - self._last >= self.every_s:
            self._emit(step, epoch)

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        if self._steps:
            self._emit(step, epoch)

    def on_train_end(self, result: dict[str, Any]) -> None:
        pass

    def _emit(self, step: int, epoch: int) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._started, 1e-9)
        done = step - self._first_step
        rate = self._seen / elapsed
        eta = elapsed / done * (self._total - step) if done > 0 else float("nan")
        percent = 100 * step / max(self._total, 1)
        logger.info(
            "step %d/%d (%.0f%%) · epoch %d/%d · loss %.4f · %s samples/s · ETA %s",
            step,
            self._total,
            percent,
            min(epoch + 1, self._epochs),
            self._epochs,
            self._loss_sum / self._steps,
            f"{rate:,.0f}",
            _duration(eta) if math.isfinite(eta) else "?",
        )
        self._last, self._steps, self._loss_sum = now, 0, 0.0


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class CSVLogger:
    """`metrics.csv`: training rows (mean loss, samples/s every `log_every` steps) and validation rows (metrics)."""

    COLUMNS = ("step", "epoch", "kind", "loss", "samples_per_s", "auc", "gauc", "gauc_category", "logloss", "count")

    def __init__(self, path: Path, log_every: int = 50) -> None:
        self.path, self.log_every = path, log_every
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._loss_sum, self._steps, self._seen, self._since = 0.0, 0, 0, 0.0

    def on_train_start(self, info: dict[str, Any]) -> None:
        fresh = not self.path.is_file() or info["steps_done"] == 0
        self._file = open(self.path, "w" if fresh else "a", newline="")  # noqa: SIM115 (closed in on_train_end)
        self._writer = csv.DictWriter(self._file, fieldnames=self.COLUMNS, extrasaction="ignore")
        if fresh:
            self._writer.writeheader()
        self._since = time.perf_counter()

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None:
        self._loss_sum += float(loss)
        self._steps += 1
        self._seen += samples
        if step % self.log_every == 0:
            now = time.perf_counter()
            rate = self._seen / max(now - self._since, 1e-9)
            row = {"step": step, "epoch": epoch, "kind": "train", "loss": self._loss_sum / self._steps}
            self._write({**row, "samples_per_s": round(rate, 1)})
            self._loss_sum, self._steps, self._seen, self._since = 0.0, 0, 0, now

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        self._write({"step": step, "epoch": epoch, "kind": "valid", **_scalars(metrics)})

    def on_train_end(self, result: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, row: dict[str, Any]) -> None:
        assert self._writer is not None and self._file is not None  # on_train_start opened it
        self._writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
        self._file.flush()


class TensorBoardLogger:
    """TensorBoard event files under `directory`: train/loss, train/samples_per_s and valid/<metric> by step."""

    def __init__(self, directory: Path, log_every: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch imports it lazily; it needs the tensorboard package
            raise ImportError(
                "train.loggers includes 'tensorboard', which needs the tensorboard package: "
                "pip install -c constraints.txt -e '.[tensorboard]' (or drop it from train.loggers)."
            ) from err
        self._writer = SummaryWriter(log_dir=str(directory))
        self.log_every = log_every
        self._loss_sum, self._steps = 0.0, 0

    def on_train_start(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None:
        self._loss_sum += float(loss)
        self._steps += 1
        if step % self.log_every == 0:
            self._writer.add_scalar("train/loss", self._loss_sum / self._steps, step)
            self._loss_sum, self._steps = 0.0, 0

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        for name, value in _scalars(metrics).items():
            if math.isfinite(value):
                self._writer.add_scalar(f"valid/{name}", value, step)
        self._writer.flush()

    def on_train_end(self, result: dict[str, Any]) -> None:
        self._writer.close()


def make_loggers(names: list[str], out: Path, log_every: int) -> list[Callback]:
    """The `train.loggers` callbacks writing into the run directory `out`."""
    made: list[Callback] = []
    for name in names:
        if name == "csv":
            made.append(CSVLogger(out / "metrics.csv", log_every))
        elif name == "tensorboard":
            made.append(TensorBoardLogger(out / "tensorboard", log_every))
        else:  # TrainConfig validates the names; a direct caller gets the same message
            raise ValueError(f"train.loggers: unknown logger {name!r}. Known loggers: {', '.join(LOGGERS)}.")
    return made


def progress_callback(enabled: bool) -> Callback | None:
    """A progress bar on a terminal, periodic lines otherwise; None when progress is off."""
    if not enabled:
        return None
    return ProgressBar() if sys.stderr.isatty() else ProgressLines()
