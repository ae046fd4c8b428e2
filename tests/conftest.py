import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")


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
    # importing ultralytics directly sets OMP_NUM_THREADS=1, which every CLI subprocess a
    # later test starts would inherit (single-threaded torch: slower, and not what users get)
    if os.environ.get("OMP_NUM_THREADS") != _OMP_NUM_THREADS:
        if _OMP_NUM_THREADS is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = _OMP_NUM_THREADS
