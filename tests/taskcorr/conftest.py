"""Session fixture: the embedded MNI152 T1 and T2-like slices at 16x16 (loaded once); one CPU thread.

These networks are tiny (16-64 pixels, 4-8 channels): intra-op parallelism costs more than it
gains, and on a shared 2-core machine two spinning threads made these tests several times slower
(the recipe's smoke preset makes the same choice). Goldens were checked with 1 and 2 threads.
"""

import pytest
import torch
from taskcorr_fixtures import load_mni


@pytest.fixture(scope="session")
def mni_slices():
    return load_mni()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
