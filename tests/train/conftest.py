"""Fixtures of the training tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, the previous count after it (a run's `train.threads` may have changed it).

    Tiny tensors: one thread is faster and immune to a busy machine (a 2-thread step waits for both threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
