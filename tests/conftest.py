"""Shared pytest set-up: offline model hubs, deterministic threads, the golden-update switch."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # smp must never reach for ImageNet weights in tests
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("MEDMLO_ONEDNN") == "0":  # the golden-portability test's "oneDNN off" perturbation
    torch.backends.mkldnn.enabled = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite the golden files of level outputs instead of comparing with them",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens")) or os.environ.get("MEDMLO_UPDATE_GOLDENS") == "1"


@pytest.fixture(autouse=True)
def _fresh_torch_state():
    """Each test starts from the same global RNG state and leaves determinism flags as it found them."""
    torch.manual_seed(0)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
