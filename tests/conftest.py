"""Shared fixtures. Tests that need the project's shared data folder take ``shared_data`` and are
skipped cleanly where it is absent (a fresh clone on another machine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$POCKETREC_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("POCKETREC_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test uses small tensors: one intra-op thread is faster on a shared 2-core machine, and results
    do not change. Restored after the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set POCKETREC_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def synthetic_data():
    """The synthetic 60-item session dataset of ``helpers.synthetic_dataset``."""
    from helpers import synthetic_dataset

    return synthetic_dataset()


@pytest.fixture(scope="session")
def tiny_teacher_dir(synthetic_data, tmp_path_factory) -> Path:
    """A tiny teacher trained 3 epochs on ``synthetic_data``: its ``best`` checkpoint folder."""
    from helpers import tiny_teacher_config
    from pocketrec.train.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    train_teacher(synthetic_data, tiny_teacher_config(out, epochs=3))
    return out / "best"
