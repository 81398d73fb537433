"""Shared fixtures: tiny models and classifiers, and an isolated ART data path."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_classifier

from art_latent import LatentClassifier


@pytest.fixture(autouse=True)
def _art_data_path(tmp_path_factory, monkeypatch):
    """ART writes files (pickles, saves) to ART_DATA_PATH: keep them out of the user's home, and fail any test after
    which our code left a file there."""
    import art.config

    path = tmp_path_factory.mktemp("art_data")
    monkeypatch.setattr(art.config, "ART_DATA_PATH", str(path))
    yield
    left = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    assert not left, f"files left in ART_DATA_PATH by the test: {left}"


@pytest.fixture
def tiny_classifier() -> LatentClassifier:
    return make_classifier()


@pytest.fixture
def tiny_data() -> tuple[np.ndarray, np.ndarray]:
    """A learnable 3-class problem on 1x8x8 images: the class sets the brightness of one image region."""
    rng = np.random.default_rng(0)
    n = 96
    y = np.arange(n) % 3
    x = rng.uniform(0.0, 0.4, size=(n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 0.5
    return np.clip(x, 0, 1), y.astype(np.int64)
