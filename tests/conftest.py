"""Shared fixtures: a tiny sample competition written once per session, unpacked and extracted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import extract_competition
from pipeline.download import unpack_competition
from pipeline.sample import write_sample_competition

N_TRAIN, N_TEST = 120, 40


@pytest.fixture(scope="session")
def sample_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kaggle") / "cifar-10.zip"
    write_sample_competition(path, N_TRAIN, N_TEST, seed=0)
    return path


@pytest.fixture(scope="session")
def _raw_dir(sample_zip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "raw"
    unpack_competition(sample_zip, out)
    return out


@pytest.fixture
def raw_dir(_raw_dir, tmp_path) -> Path:
    """A private copy of Kaggle's four files, free to damage."""
    return Path(shutil.copytree(_raw_dir, tmp_path / "raw"))


@pytest.fixture(scope="session")
def data_dir(_raw_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    extract_competition(_raw_dir, out)
    return out


def separable_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(n, 32, 32, 3)` uint8 images whose class is their colour: any model should learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    palette = rng.integers(0, 256, size=(10, 3))
    images = palette[labels][:, None, None, :] + rng.normal(0, 10, size=(n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test`'s one worker per core, each worker's torch computes on its share of the cores: two workers
    with two threads each on two cores spin against each other (one cached-features test took 20x its time). The
    stages the end-to-end tests start as subprocesses keep torch's default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The DVC end-to-end files first: the longest, so that under `make test`'s workers the rest runs beside them."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)  # stable: file order kept within each
