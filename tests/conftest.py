"""Shared test set-up.

The suite reads real data that scripts/test.sh installs from Debian: Fashion-MNIST
(``dataset-fashion-mnist``) and WordNet (``wordnet-base``). A missing data set fails the
run at once with the command that installs it, instead of silently skipping tests.
"""
import pytest
import torch

from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR


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
