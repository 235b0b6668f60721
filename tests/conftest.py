import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("UNIDM_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _float32_default():
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float32)
