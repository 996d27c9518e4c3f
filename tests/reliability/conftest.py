"""Shared by the reliability suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Rounds on the tiny model are many small ops, where a second thread only adds
    synchronisation: on 2 busy cores a round took 15 s with 2 threads and 0.6 s with one.
    One thread is also reproducible. Modules that train use it (`pytestmark`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
