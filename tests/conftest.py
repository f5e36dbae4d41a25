import os

# OpenMP threads that spin while idle make CPU tests crawl whenever a subprocess or another job shares
# the cores; set before torch starts its thread pool (subprocesses inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("ci")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FMNIST_DIR = os.environ.get("PRUNEKIT_DATA", "/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
                                  and not os.path.exists(os.path.join(FMNIST_DIR, "fashion-mnist", "train-images-idx3-ubyte.gz")),
                                  reason="Fashion-MNIST files missing: apt-get install -y dataset-fashion-mnist")


def _seeded(name: str):
    from prunekit.models import create_model
    torch.manual_seed(0)
    return create_model(name, in_channels=1).eval()


@pytest.fixture(scope="module")
def resnet20():
    """Seeded 1-channel built-ins, one per test module (compress copies them, so tests may share)."""
    return _seeded("resnet20")


@pytest.fixture(scope="module")
def resnet56():
    return _seeded("resnet56")


@pytest.fixture(scope="module")
def mobilenetv2():
    return _seeded("mobilenetv2")


@pytest.fixture(scope="module")
def synthetic_train():
    from prunekit.data import load_dataset
    return load_dataset("synthetic", split="train")
