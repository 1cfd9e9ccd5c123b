import os
import sys

import pytest

# physics_checks.py is a helper module shared by several test files
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: small models on two shared cores run faster that way."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
