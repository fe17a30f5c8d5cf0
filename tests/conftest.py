"""Shared fixtures: tiny models, the shared DAVIS data (skipped where absent), markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LABKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    # Under pytest-xdist (make test runs one worker per core) each worker gets one torch thread,
    # so the workers do not oversubscribe the cores. Subprocesses (notebooks, torchrun) keep theirs.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared evaluation data (../shared/data); skips the test where it is absent."""
    if not (SHARED_DATA / "davis2016" / "JPEGImages").is_dir():
        pytest.skip(
            f"shared DAVIS data not found at {SHARED_DATA} (set LABKIT_SHARED_DATA to a folder "
            "with davis2016/ and videos/davis-tour.mp4 to run this test)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def davis_root(shared_data: Path) -> Path:
    return shared_data / "davis2016"


@pytest.fixture(scope="session")
def tour_video(shared_data: Path) -> Path:
    path = shared_data / "videos" / "davis-tour.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """A 16-frame 96x160 synthetic video (mp4) with ground truth beside it, for notebook tests."""
    from labkit.data.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("small_synthetic")
    return generate_synthetic(out, num_frames=16, size=(96, 160), seed=3).video


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: on tiny tensors more threads only add
    synchronisation (5x slower on a busy 2-core machine). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import os

    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # what labkit's automatic thread count honours too
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield
