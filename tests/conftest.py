import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage.data import chelsea

    return chelsea()  # 300x451x3 uint8 RGB


@pytest.fixture(autouse=True)
def _same_torch_threads():
    """Tests that call ultralytics directly let it reset torch's thread count (its
    ``select_device`` does); restore it so later numerics and timings do not depend on order."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
