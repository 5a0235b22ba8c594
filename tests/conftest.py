import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # reference implementations kept with the tests


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny tensors, restored after: threads gain nothing
    there, and on a busy CPU waiting for them costs seconds. Used by the modules that train
    (``pytestmark = pytest.mark.usefixtures("one_thread")``); torch is imported only there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
