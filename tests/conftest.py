"""Shared test set-up.

The suite reads real data that scripts/test.sh installs from Debian: Fashion-MNIST
(``dataset-fashion-mnist``) and WordNet (``wordnet-base``). A missing data set fails the
run at once with the command that installs it, instead of silently skipping tests.
"""
import os

import pytest
import torch

from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR


def pytest_configure(config):
    # under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets its share
    # of the cores: N workers x N torch threads would oversubscribe them
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(scope="session", autouse=True)
def _fashion_mnist_installed():
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST is missing from {DEBIAN_FASHION_MNIST_DIR}: run "
                    "`apt-get install dataset-fashion-mnist` (scripts/test.sh does).")


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread: tiny models and many short ops spend more time
    in OpenMP barriers than in work when the 2 cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
