"""Data-parallel training (`longrec.train.distributed`): shards cover every sample once, 2 ranks over loopback take
the single-process steps, only rank 0 writes, a run resumes with another number of ranks, bad --nproc is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.cli import main
from longrec.config import load_config
from longrec.data.dataset import epoch_batches
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.run import train
from longrec.train.checkpoint import load_checkpoint
from longrec.train.distributed import Ranks, check_options, shard
from tests.conftest import make_log

GUARD = Path(__file__).parent / "write_guard"
K = 70  # steps compared between the 2-rank and the single-process run: past the end of the first epoch (68 steps)


@pytest.mark.parametrize(("num_samples", "batch_size", "world"), [(37, 8, 2), (50, 9, 3), (5, 4, 2), (3, 2, 4)])
@pytest.mark.parametrize("bucket", [False, True])
def test_shards_cover_every_sample_exactly_once_per_epoch(num_samples, batch_size, world, bucket) -> None:
    lengths = np.random.default_rng(0).integers(0, 20, num_samples) if bucket else None
    plan = epoch_batches(num_samples, batch_size, True, 3, 1, lengths, bucket_batches=2)
    seen = []
    for rows in plan:
        parts = [shard(rows, Ranks(r, world)) for r in range(world)]
        kept = [part for part, scale in parts if scale > 0]
        # the ranks' batches are exactly the global batch, and after DDP's mean over the ranks every sample's loss
        # weighs 1/N (scale / (W * n_r)), as in the mean loss of the global batch
        np.testing.assert_array_equal(np.concatenate(kept), rows)
        weights = [scale / (world * len(part)) for part, scale in parts if scale > 0]
        np.testing.assert_allclose(weights, 1 / len(rows))
        assert max(map(len, kept)) - min(map(len, kept)) <= 1
        seen.append(np.concatenate(kept))
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(num_samples))


def test_a_rank_without_samples_still_steps_at_scale_zero() -> None:
    rows = np.array([7, 3])
    assert [(part.tolist(), scale) for part, scale in (shard(rows, Ranks(r, 3)) for r in range(3))] == [
        ([7], 1.5),
        ([3], 1.5),
        ([7], 0.0),
    ]


def test_compile_is_refused_with_several_ranks() -> None:
    check_options(Ranks(0, 1), compile=True)
    with pytest.raises(ValueError, match=r"train.compile = true is not supported with 2 ranks"):
        check_options(Ranks(1, 2), compile=True)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    prepare(make_log(num_users=16, events=16, seed=4), root / "store", ProtocolConfig.for_protocol("T"))
    path = root / "tiny.toml"
    path.write_text(
        'model = { name = "din", dim = 4, attention_hidden = [8], head_hidden = [8] }\n'
        f"data = {{ path = {json.dumps(str(root / 'store'))}, max_history = 8 }}\n"
        # a global batch of 7 over 2 ranks: 4 + 3, so every step checks the loss scaling; 474 train samples leave a
        # short last batch of 5 (3 + 2) at step 68
        "train = { batch_size = 7, epochs = 3, lr = 0.01, l2 = 1e-4, progress = false, threads = 1 }\n"
    )
    return path


def _single(experiment: Path, out: Path, *extra: str) -> dict:
    return train(load_config(experiment, list(extra)), out)


def _max_difference(a: Path, b: Path) -> float:
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert left.keys() == right.keys()
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def test_two_ranks_take_the_single_process_steps_and_only_rank_0_writes(
    experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = [f"--set=train.max_steps={K}", f"--set=train.eval_every={K}"]
    run2 = tmp_path / "two"
    monkeypatch.setenv("PYTHONPATH", f"{GUARD}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("LONGREC_TEST_WRITE_GUARD", str(run2))
    code = main(["--quiet", "train", str(experiment), "--out", str(run2), "--nproc", "2", *steps])
    assert code == 0, capsys.readouterr().err[-3000:]
    one = _single(experiment, tmp_path / "one", f"train.max_steps={K}", f"train.eval_every={K}")
    # the same parameters after K steps (each global batch of 7 = the union of the ranks' 4 + 3)
    assert _max_difference(run2 / "last.pt", tmp_path / "one" / "last.pt") < 1e-5
    two = json.loads((run2 / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert two[split]["count"] == one[split]["count"], "metrics over the whole split, not one rank's part"
        assert abs(two[split]["auc"] - one[split]["auc"]) < 1e-3
    assert sorted(p.name for p in run2.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())

    # Resume the 2-rank run with one process: the same as one uninterrupted single-process run.
    steps2 = [f"train.max_steps={2 * K}", f"train.eval_every={K}"]
    train(load_config(experiment, steps2), run2, resume=True)
    _single(experiment, tmp_path / "straight", *steps2)
    assert load_checkpoint(run2 / "last.pt")["state"]["step"] == 2 * K
    assert _max_difference(run2 / "last.pt", tmp_path / "straight" / "last.pt") < 1e-5


@pytest.mark.slow
def test_two_ranks_with_lazy_adam_take_the_single_process_lazy_steps(experiment: Path, tmp_path: Path) -> None:
    # The sparse table gradients are all-reduced by DDP (gloo's sparse all-reduce) and LazyAdam updates the union of
    # the ranks' rows: the single process's lazy steps on the whole batch. (~20 s: marked slow.)
    lazy = [f"train.max_steps={K}", f"train.eval_every={K}", "train.optimizer=lazy_adam"]
    code = main(["--quiet", "train", str(experiment), "--out", str(tmp_path / "two"), "--nproc", "2"]
                + [f"--set={s}" for s in lazy])  # fmt: skip
    assert code == 0
    _single(experiment, tmp_path / "one", *lazy)
    assert _max_difference(tmp_path / "two" / "last.pt", tmp_path / "one" / "last.pt") < 1e-5
    _single(experiment, tmp_path / "dense", *lazy[:2])  # dense Adam: another trajectory, so lazy Adam did run
    assert _max_difference(tmp_path / "two" / "last.pt", tmp_path / "dense" / "last.pt") > 1e-3


def test_a_non_positive_nproc_is_refused(experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(experiment), "--out", str(tmp_path / "r"), "--nproc", "0"]) == 2
    assert "--nproc must be a positive int (processes, one rank each). Got 0 instead." in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nproc_inside_a_torchrun_worker_is_refused(
    experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(experiment), "--out", str(tmp_path / "r"), "--nproc", "2"]) == 2
    assert "inside a torchrun worker (WORLD_SIZE=2)" in capsys.readouterr().err


def test_a_non_loopback_master_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from longrec.train.distributed import setup

    monkeypatch.setenv("MASTER_ADDR", "8.8.8.8")
    with pytest.raises(ValueError, match=r"MASTER_ADDR must be a loopback address .* Got '8.8.8.8'"):
        setup(Ranks(0, 2), torch.device("cpu"))
