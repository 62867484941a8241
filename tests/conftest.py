"""Shared test fixtures.

Files from ../shared/ (beside the repository) may be missing on a user's machine, where
the tests that need them skip; under CI (CI=true) a missing file is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def skip_or_fail(message: str) -> None:
    """Skip the test on a user's machine; under CI (CI=true), where the set-up provides
    everything, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def shared_path(*parts: str) -> Path:
    """Path of a file under ../shared/, skipping the test (failing it on CI) when absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"{path} is missing (../shared/ beside the repository)")
    return path


@pytest.fixture
def coinrun_path() -> Path:
    """The paper's own CoinRun checkpoint (official OpenAI model, MIT licence)."""
    return shared_path("checkpoints", "coinrun.jd")


def _devices() -> list:
    """'cpu', and 'cuda' (marked gpu) -- skipped where no CUDA device is visible."""
    import torch

    cuda = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device visible")])
    return ["cpu", cuda]


@pytest.fixture(params=_devices())
def device(request) -> str:
    """The torch device an engine test runs on: every test that takes it runs on the CPU
    and again on CUDA where a GPU is visible (`pytest -m gpu` runs the CUDA cases alone)."""
    return request.param
