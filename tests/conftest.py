import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("UNIDM_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _float32_default():
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def one_thread():
    """Run a test on one thread (the training-fault tests compare bitwise results and launch subprocesses)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
