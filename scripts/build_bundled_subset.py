"""
Build the stratified Fashion-MNIST subset bundled as ``art_latent/data/fashion_mnist_subset.npz``.

Usage::

    python scripts/build_bundled_subset.py --source DIR --out art_latent/data/fashion_mnist_subset.npz

where DIR holds the four official ``*-ubyte.gz`` files.

For each class, ``--train-per-class`` training and ``--test-per-class`` test images are drawn without replacement
with ``numpy.random.default_rng(seed)``; within a split the selected samples are then shuffled, so any prefix is
roughly balanced. Images and labels are stored as ``uint8``; a JSON ``metadata`` entry records the seed, the counts
and the SHA-256 of the source files, and ``*_source_indices`` give the position of each sample in the original files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_latent.data.loaders import FASHION_MNIST_CLASSES, find_idx_files, read_idx  # noqa: E402

logger = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """
    Draw `per_class` indices of every class without replacement, then shuffle them.

    :param labels: Class index of every sample.
    :param per_class: Number of samples to draw from each class.
    :param rng: Random generator.
    :return: Selected indices into `labels`.
    """
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"Class {cls} has only {len(members)} samples, {per_class} requested.")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return rng.permutation(np.concatenate(chosen))


def build_subset(source: Path, out: Path, train_per_class: int, test_per_class: int, seed: int) -> dict:
    """
    Build the subset and write it to `out`.

    :param source: Directory with the four Fashion-MNIST IDX files.
    :param out: Output ``.npz`` path.
    :param train_per_class: Training samples per class.
    :param test_per_class: Test samples per class.
    :param seed: Seed of the random generator.
    :return: The metadata written to the file.
    """
    files, missing = find_idx_files(source)
    if missing:
        raise FileNotFoundError(f"{source} lacks {', '.join(missing)}.")
    arrays = {key: read_idx(path) for key, path in files.items()}

    rng = np.random.default_rng(seed)
    train_idx = stratified_indices(arrays["y_train"], train_per_class, rng)
    test_idx = stratified_indices(arrays["y_test"], test_per_class, rng)

    subset = {
        "x_train": arrays["x_train"][train_idx].astype(np.uint8),
        "y_train": arrays["y_train"][train_idx].astype(np.uint8),
        "x_test": arrays["x_test"][test_idx].astype(np.uint8),
        "y_test": arrays["y_test"][test_idx].astype(np.uint8),
        "train_source_indices": train_idx.astype(np.uint16),
        "test_source_indices": test_idx.astype(np.uint16),
    }
    metadata = {
        "dataset": "Fashion-MNIST (Zalando Research), MIT licence",
        "builder": "scripts/build_bundled_subset.py",
        "seed": seed,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "class_names": list(FASHION_MNIST_CLASSES),
        "train_counts": np.bincount(subset["y_train"], minlength=10).tolist(),
        "test_counts": np.bincount(subset["y_test"], minlength=10).tolist(),
        "source_files": {path.name: _sha256(path) for path in files.values()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **subset, metadata=np.array(json.dumps(metadata, sort_keys=True)))
    logger.info("Wrote %s (%d bytes).", out, out.stat().st_size)
    return metadata


def main(argv: list[str] | None = None) -> None:
    """
    Command-line entry point.

    :param argv: Arguments, ``sys.argv[1:]`` if None.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--source", type=Path, required=True, help="directory with the Fashion-MNIST IDX files")
    parser.add_argument(
        "--out", type=Path, default=Path("art_latent/data/fashion_mnist_subset.npz"), help="output .npz path"
    )
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metadata = build_subset(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    print(json.dumps(metadata, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
