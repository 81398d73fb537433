"""
The data of the k-fold protocol: the pool (:func:`load_pool`), its stratified splits into a pre-training subset and
folds (:func:`make_splits`), each fold's fine-tuning and test arrays (:func:`fold_data`), and the seeds every random
choice is drawn from (:func:`fold_seed`, :func:`seed_everything`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from art_latent.experiments.config import ExperimentConfig

logger = logging.getLogger(__name__)

__all__ = ["Pool", "Splits", "fold_data", "fold_seed", "load_pool", "make_splits", "seed_everything"]


@dataclass(frozen=True)
class Pool:
    """The data the protocol splits: images ``(N, C, H, W)`` float32 in [0, 1] and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def nb_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass(frozen=True)
class Splits:
    """Indices into the pool: pre-training (and its validation part) and, per fold, ``(train part, test part)``."""

    pretrain: np.ndarray
    validation: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]


def load_pool(config: ExperimentConfig) -> Pool:
    """
    Load the data set of ``[data]`` and pool its parts (``"train+test"``, as the paper) or take the training part.

    :param config: The configuration.
    :return: The pool (optionally a stratified subset of ``limit`` samples).
    """
    from sklearn.model_selection import train_test_split

    from art_latent.data import load_dataset

    spec = config.data
    data = load_dataset(spec.dataset, spec.path or None)
    if spec.pool == "train+test":
        x, y = np.concatenate([data.x_train, data.x_test]), np.concatenate([data.y_train, data.y_test])
    else:
        x, y = data.x_train, data.y_train
    if spec.limit and spec.limit < len(y):
        keep, _ = train_test_split(np.arange(len(y)), train_size=spec.limit, stratify=y, random_state=config.seed)
        keep = np.sort(keep)
        x, y = x[keep], y[keep]
    return Pool(np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64), tuple(data.class_names), data.source)


def make_splits(config: ExperimentConfig, y: np.ndarray) -> Splits:
    """
    Draw the pre-training subset and the stratified folds of the rest.

    :param config: The configuration.
    :param y: Labels of the pool.
    :return: The splits.
    :raises ValueError: If the pool is too small for the requested sizes.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    n, k = len(y), config.protocol.folds
    samples = config.pretrain.samples
    if samples >= n:
        raise ValueError(f"[pretrain].samples = {samples} leaves nothing of the pool of {n} samples for the folds.")
    indices = np.arange(n)
    pretrain_idx, rest = train_test_split(indices, train_size=samples, stratify=y, random_state=config.seed)
    validation = np.empty(0, dtype=np.int64)
    fraction = config.pretrain.validation_fraction
    if fraction > 0:
        pretrain_idx, validation = train_test_split(pretrain_idx, test_size=fraction, stratify=y[pretrain_idx],
                                                    random_state=config.seed)
    counts = np.bincount(y[rest])
    if counts[counts > 0].min() < k:
        raise ValueError(f"The {len(rest)} samples left after pre-training have a class with {counts.min()} samples, "
                         f"fewer than the {k} folds: lower [protocol].folds or [pretrain].samples.")
    rest = np.sort(rest)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=config.seed).split(rest, y[rest])
    return Splits(np.sort(pretrain_idx), np.sort(validation),
                  tuple((rest[train], rest[test]) for train, test in folds))


def fold_data(config: ExperimentConfig, pool: Pool, splits: Splits, fold: int) -> dict[str, np.ndarray]:
    """
    The fine-tuning and test data of a fold: ``finetune_samples`` drawn (stratified) from the fold's training part,
    the test part (capped at ``test_samples``), and the noisy copies of the fine-tuning samples for ``D_N``.

    :param config: The configuration.
    :param pool: The pool.
    :param splits: The splits.
    :param fold: Fold index.
    :return: ``{"x_ft", "y_ft", "x_noisy", "x_test", "y_test"}``.
    """
    from sklearn.model_selection import train_test_split

    train, test = splits.folds[fold]
    seed = fold_seed(config, fold)
    n_ft, n_test = config.protocol.finetune_samples, config.protocol.test_samples
    if n_ft and n_ft < len(train):
        train, _ = train_test_split(train, train_size=n_ft, stratify=pool.y[train], random_state=seed)
    if n_test and n_test < len(test):
        test, _ = train_test_split(test, train_size=n_test, stratify=pool.y[test], random_state=seed)
    train, test = np.sort(train), np.sort(test)
    x_ft = pool.x[train]
    rng = np.random.default_rng(seed)
    sigma = config.protocol.noise_sigma_255 / 255.0
    noise = rng.standard_normal(x_ft.shape).astype(np.float32) * np.float32(sigma)
    x_noisy = np.clip(x_ft + noise, 0.0, 1.0).astype(np.float32)
    return {"x_ft": x_ft, "y_ft": pool.y[train], "x_noisy": x_noisy, "x_test": pool.x[test], "y_test": pool.y[test]}


def fold_seed(config: ExperimentConfig, fold: int) -> int:
    """The seed of everything random in a fold (data draws, noise, shuffling, attacks' random starts)."""
    return config.seed + 1 + fold


def seed_everything(seed: int) -> None:
    """
    Seed torch's and numpy's global generators (model initialisation, shuffling, ART's random starts).

    :param seed: The seed.
    """
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
