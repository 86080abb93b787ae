"""Every test starts from an empty Pyro param store, validation on, one torch thread."""

from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tests' tensors are small, and on a 2-core machine waking a second
    thread for each tiny operation costs more than the arithmetic (up to 100x under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset files (../shared/data beside the checkout); never the network."""
    assert SHARED_DATA.is_dir(), f"expected the shared datasets at {SHARED_DATA}"
    return SHARED_DATA
