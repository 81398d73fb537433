"""
Offline loaders for Fashion-MNIST, MNIST and CIFAR-10.

The package never downloads anything: the file-based loaders look for the original distribution files in a fixed list
of directories (the ``path`` argument, ``$ART_LATENT_DATA``, ``/usr/share/datasets``) and fail with a message that
names every place searched when they are missing.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "ART_LATENT_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))

# IDX type codes, see http://yann.lecun.com/exdb/mnist/ ("THE IDX FILE FORMAT"); multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The four IDX files of (Fashion-)MNIST, each with the spellings found in the wild (some mirrors use a dot).
_MNIST_FILES: dict[str, tuple[str, ...]] = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

_CIFAR10_DIRNAME = "cifar-10-batches-py"
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta")


@dataclass(frozen=True)
class DatasetSplits:
    """
    Train and test split of an image classification dataset.

    Images are ``float32`` arrays of shape ``(N, C, H, W)`` with values in ``[0, 1]``; labels are ``int64`` class
    indices of shape ``(N,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if x.ndim != 4:
                raise ValueError(f"x_{split} must have shape (N, C, H, W), got {x.shape}.")
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"y_{split} must have shape ({len(x)},), got {y.shape}.")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"Train and test images differ in shape: {self.x_train.shape} vs {self.x_test.shape}.")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """
        Shape ``(C, H, W)`` of one image.
        """
        channels, height, width = self.x_train.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def nb_classes(self) -> int:
        """
        Number of classes.
        """
        return len(self.class_names)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """
    Read an IDX file (the format of the MNIST and Fashion-MNIST distributions), gzip-compressed or raw.

    Compression is detected from the file content, not the name.

    :param path: Path of the IDX file.
    :return: The array stored in the file, in native byte order, with the dimensions given in its header.
    :raises ValueError: If the file is not a valid IDX file or is truncated.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc}).") from exc

    if len(raw) < 4:
        raise ValueError(f"{path}: file too short for an IDX header ({len(raw)} bytes).")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex()} (the first two bytes must be zero).")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type code 0x{type_code:02x}.")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions.")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {header_size} expected).")

    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    available = len(raw) - header_size
    if available != expected:
        kind = "truncated" if available < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX data {kind}: header declares shape {shape} ({expected} bytes of {dtype}), "
            f"file holds {available} bytes."
        )

    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _candidate_dirs(dirname: str, path: str | os.PathLike | None) -> list[Path]:
    """
    Directories to search for a dataset, in order of preference.

    :param dirname: Conventional directory name of the dataset, e.g. ``fashion-mnist``.
    :param path: Explicit directory; when given, only it and its `dirname` subfolder are searched.
    :return: Candidate directories.
    """
    if path is not None:
        base = Path(path).expanduser()
        return [base, base / dirname]
    candidates = []
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        base = Path(env_dir).expanduser()
        candidates += [base, base / dirname]
    candidates.append(SYSTEM_DATA_DIR / dirname)
    return candidates


def _not_found(dataset: str, searched: Sequence[tuple[Path, str]], expected: Sequence[str]) -> FileNotFoundError:
    lines = [f"Could not find the {dataset} files. Searched, in order:"]
    lines += [f"  - {directory} ({reason})" for directory, reason in searched]
    lines.append(f"Expected files: {', '.join(expected)}.")
    lines.append(
        f"art_latent never downloads data: place the files in one of these directories, set ${ENV_VAR}, or pass "
        "`path`. The bundled Fashion-MNIST subset (load_dataset('bundled')) needs no files."
    )
    return FileNotFoundError("\n".join(lines))


def find_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """
    Locate the four (Fashion-)MNIST IDX files in `directory`, accepting gzip-compressed and raw files.

    :return: The files found by split key, and the names of the missing ones.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stems in _MNIST_FILES.items():
        names = [name for stem in stems for name in (f"{stem}.gz", stem)]
        match = next((directory / name for name in names if (directory / name).is_file()), None)
        if match is None:
            missing.append(f"{stems[0]}[.gz]")
        else:
            found[key] = match
    return found, missing


def _load_idx_dataset(
    dataset: str, dirname: str, class_names: tuple[str, ...], path: str | os.PathLike | None
) -> DatasetSplits:
    searched: list[tuple[Path, str]] = []
    for directory in _candidate_dirs(dirname, path):
        if not directory.is_dir():
            searched.append((directory, "no such directory"))
            continue
        files, missing = find_idx_files(directory)
        if missing:
            searched.append((directory, f"missing {', '.join(missing)}"))
            continue

        logger.info("Loading %s from %s.", dataset, directory)
        arrays = {key: read_idx(file) for key, file in files.items()}
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"{dataset} {split} files in {directory} are inconsistent: images {x.shape}, labels {y.shape}."
                )
        return DatasetSplits(
            x_train=_to_float_images(arrays["x_train"][:, None]),
            y_train=arrays["y_train"].astype(np.int64),
            x_test=_to_float_images(arrays["x_test"][:, None]),
            y_test=arrays["y_test"].astype(np.int64),
            class_names=class_names,
            source=str(directory),
        )
    expected = [f"{stems[0]}[.gz]" for stems in _MNIST_FILES.values()]
    raise _not_found(dataset, searched, expected)


def _to_float_images(x: np.ndarray) -> np.ndarray:
    """
    Convert ``uint8`` images to ``float32`` in ``[0, 1]``.
    """
    return x.astype(np.float32) / np.float32(255.0)


def load_fashion_mnist(path: str | os.PathLike | None = None) -> DatasetSplits:
    """
    Load the full Fashion-MNIST dataset (60000 train, 10000 test images of shape ``(1, 28, 28)``) from local files.

    Searched directories, in order: `path` and ``path/fashion-mnist`` if `path` is given (and nothing else), otherwise
    ``$ART_LATENT_DATA``, ``$ART_LATENT_DATA/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist`` (installed by
    Debian's ``dataset-fashion-mnist`` package).

    :param path: Directory holding ``train-images-idx3-ubyte[.gz]`` and the three other IDX files.
    :return: The dataset splits.
    :raises FileNotFoundError: If no searched directory holds all four files.
    """
    return _load_idx_dataset("Fashion-MNIST", "fashion-mnist", FASHION_MNIST_CLASSES, path)


def load_mnist(path: str | os.PathLike | None = None) -> DatasetSplits:
    """
    Load the MNIST dataset (60000 train, 10000 test images of shape ``(1, 28, 28)``) from local files.

    The directory search is the one of :func:`load_fashion_mnist` with the dataset folder name ``mnist``.

    :param path: Directory holding ``train-images-idx3-ubyte[.gz]`` and the three other IDX files.
    :return: The dataset splits.
    :raises FileNotFoundError: If no searched directory holds all four files.
    """
    return _load_idx_dataset("MNIST", "mnist", MNIST_CLASSES, path)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """
    Unpickler that resolves only the globals needed to rebuild numpy arrays, so that a tampered batch file cannot
    execute code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 pickles of protocol < 3 encode bytes objects through _codecs.encode.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from a CIFAR-10 batch file.")
        return super().find_class(module, name)


def _read_cifar_pickle(file: Path) -> dict:
    try:
        with open(file, "rb") as handle:
            content = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{file}: not a valid CIFAR-10 pickle ({exc}).") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{file}: expected a pickled dict, got {type(content).__name__}.")
    # Keys are bytes in the original (Python 2) files and str in files written by Python 3 with str keys.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_cifar_pickle(file)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{file}: CIFAR-10 batch lacks the 'data' or 'labels' entry.")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{file}: unexpected CIFAR-10 batch shapes: data {data.shape}, labels {labels.shape}.")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str | os.PathLike | None = None) -> DatasetSplits:
    """
    Load CIFAR-10 (50000 train, 10000 test images of shape ``(3, 32, 32)``) from the "python version" distribution.

    Searched directories, in order: `path` and ``path/cifar-10-batches-py`` if `path` is given (and nothing else),
    otherwise ``$ART_LATENT_DATA``, ``$ART_LATENT_DATA/cifar-10-batches-py`` and
    ``/usr/share/datasets/cifar-10-batches-py``. The batch pickles are read with an unpickler that only rebuilds numpy
    arrays.

    :param path: Directory holding ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and ``batches.meta``.
    :return: The dataset splits.
    :raises FileNotFoundError: If no searched directory holds all seven files.
    """
    searched: list[tuple[Path, str]] = []
    for directory in _candidate_dirs(_CIFAR10_DIRNAME, path):
        if not directory.is_dir():
            searched.append((directory, "no such directory"))
            continue
        missing = [name for name in _CIFAR10_FILES if not (directory / name).is_file()]
        if missing:
            searched.append((directory, f"missing {', '.join(missing)}"))
            continue

        logger.info("Loading CIFAR-10 from %s.", directory)
        train = [_read_cifar_batch(directory / name) for name in _CIFAR10_TRAIN_BATCHES]
        x_test, y_test = _read_cifar_batch(directory / "test_batch")
        meta = _read_cifar_pickle(directory / "batches.meta")
        if "label_names" not in meta:
            raise ValueError(f"{directory / 'batches.meta'}: lacks the 'label_names' entry.")
        class_names = tuple(
            name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in meta["label_names"]
        )
        y_train = np.concatenate([labels for _, labels in train])
        for labels, split in ((y_train, "train"), (y_test, "test")):
            if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
                raise ValueError(f"CIFAR-10 {split} labels in {directory} fall outside the {len(class_names)} classes.")
        return DatasetSplits(
            x_train=_to_float_images(np.concatenate([images for images, _ in train])),
            y_train=y_train,
            x_test=_to_float_images(x_test),
            y_test=y_test,
            class_names=class_names,
            source=str(directory),
        )
    raise _not_found("CIFAR-10", searched, list(_CIFAR10_FILES))
