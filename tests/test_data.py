from __future__ import annotations

import collections
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from art_latent.data import (
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    DatasetSplits,
    bundled_metadata,
    load_bundled_fashion_mnist,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    loaders,
    read_idx,
)

OFFICIAL_FASHION_MNIST = Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(">i2"): 0x0B,
        np.dtype(">i4"): 0x0C,
        np.dtype(">f4"): 0x0D,
        np.dtype(">f8"): 0x0E,
    }
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, codes[big_endian], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(big_endian).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_mnist_dir(directory: Path, nb_train: int, nb_test: int = 2, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(nb_train)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", nb_train), ("t10k", nb_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return directory


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $ART_LATENT_DATA and an empty system data directory."""
    monkeypatch.delenv(loaders.ENV_VAR, raising=False)
    monkeypatch.setattr(loaders, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


# --- IDX ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    offset = 0 if dtype == np.uint8 else 5
    array = (np.arange(24) - offset).astype(dtype).reshape(2, 3, 4)
    result = read_idx(write_idx(tmp_path / "data.idx", array, compress))
    assert result.shape == (2, 3, 4)
    assert result.dtype == np.dtype(dtype)
    assert result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def test_read_idx_one_dimensional(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels", labels, compress=False)), labels)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: b"\x01\x00" + raw[2:], "magic"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "type code"),
        (lambda raw: raw[:3] + b"\x00" + raw[4:], "zero dimensions"),
        (lambda raw: raw[:-1], "truncated"),
        (lambda raw: raw[:6], "truncated IDX header"),
        (lambda raw: raw + b"\x00", "trailing"),
        (lambda raw: raw[:2], "too short"),
    ],
)
def test_read_idx_rejects_corrupt(tmp_path, mutate, message):
    raw = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    path = tmp_path / "bad"
    path.write_bytes(mutate(raw))
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10)))
    path = tmp_path / "bad.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


# --- directory search ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_load_fashion_mnist_from_path(isolated, compress):
    directory = make_mnist_dir(isolated / "fm", nb_train=3, compress=compress)
    data = load_fashion_mnist(directory)
    assert isinstance(data, DatasetSplits)
    assert data.x_train.shape == (3, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.input_shape == (1, 28, 28) and data.nb_classes == 10
    assert data.source == str(directory)
    expected = read_idx(directory / f"train-images-idx3-ubyte{'.gz' if compress else ''}")
    np.testing.assert_allclose(data.x_train[:, 0] * 255, expected, atol=1e-4)


def test_path_subfolder_is_searched(isolated):
    make_mnist_dir(isolated / "root" / "mnist", nb_train=4)
    data = load_mnist(isolated / "root")
    assert len(data.y_train) == 4
    assert data.class_names == tuple("0123456789")


def test_argument_beats_env_var(isolated, monkeypatch):
    make_mnist_dir(isolated / "arg", nb_train=3)
    make_mnist_dir(isolated / "env", nb_train=5)
    monkeypatch.setenv(loaders.ENV_VAR, str(isolated / "env"))
    assert len(load_fashion_mnist(isolated / "arg").y_train) == 3
    assert len(load_fashion_mnist().y_train) == 5


def test_argument_is_exclusive(isolated, monkeypatch):
    make_mnist_dir(isolated / "env", nb_train=5)
    monkeypatch.setenv(loaders.ENV_VAR, str(isolated / "env"))
    with pytest.raises(FileNotFoundError):
        load_fashion_mnist(isolated / "empty")


def test_env_var_subfolder_and_system_dir(isolated, monkeypatch):
    make_mnist_dir(isolated / "env" / "fashion-mnist", nb_train=6)
    make_mnist_dir(isolated / "system" / "fashion-mnist", nb_train=7)
    monkeypatch.setenv(loaders.ENV_VAR, str(isolated / "env"))
    data = load_fashion_mnist()
    assert len(data.y_train) == 6
    assert data.source == str(isolated / "env" / "fashion-mnist")
    monkeypatch.delenv(loaders.ENV_VAR)
    assert len(load_fashion_mnist().y_train) == 7


def test_incomplete_directory_is_skipped(isolated, monkeypatch):
    partial = make_mnist_dir(isolated / "env", nb_train=3)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    make_mnist_dir(isolated / "env" / "fashion-mnist", nb_train=8)
    monkeypatch.setenv(loaders.ENV_VAR, str(isolated / "env"))
    assert len(load_fashion_mnist().y_train) == 8


def test_not_found_lists_searched_places(isolated, monkeypatch):
    env_dir = isolated / "env"
    env_dir.mkdir()
    (env_dir / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv(loaders.ENV_VAR, str(env_dir))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist()
    message = str(info.value)
    for place in (env_dir, env_dir / "fashion-mnist", isolated / "system" / "fashion-mnist"):
        assert str(place) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in message
    assert "missing train-labels-idx1-ubyte" in message
    assert "never downloads" in message


def test_cifar_not_found_lists_files(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(isolated / "nothing")
    message = str(info.value)
    assert str(isolated / "nothing" / "cifar-10-batches-py") in message
    assert "data_batch_5" in message and "batches.meta" in message and "never downloads" in message


# --- CIFAR-10 -----------------------------------------------------------------------------------------------------


def make_cifar_dir(directory: Path, per_batch: int = 2, bytes_keys: bool = True, protocol: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)

    def key(name: str):
        return name.encode() if bytes_keys else name

    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        batch = {
            key("data"): rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            key("labels"): [(index + j) % 10 for j in range(per_batch)],
            key("batch_label"): key(name),
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    label_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {key("label_names"): [key(n) for n in label_names], key("num_vis"): 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return directory


@pytest.mark.parametrize(("bytes_keys", "protocol"), [(True, 2), (False, pickle.HIGHEST_PROTOCOL)])
def test_load_cifar10(isolated, bytes_keys, protocol):
    directory = make_cifar_dir(isolated / "c10" / "cifar-10-batches-py", bytes_keys=bytes_keys, protocol=protocol)
    data = load_cifar10(isolated / "c10")
    assert data.source == str(directory)
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.class_names[0] == "airplane" and data.nb_classes == 10
    assert data.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(data.y_train, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5])

    with open(directory / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle)[b"data" if bytes_keys else "data"]
    # Rows hold the red, green and blue planes one after the other, each in row-major order.
    assert data.x_train[0, 1, 0, 5] == pytest.approx(raw[0, 1024 + 5] / 255)
    assert data.x_train[1, 2, 31, 31] == pytest.approx(raw[1, 3071] / 255)


def test_cifar10_rejects_non_numpy_pickles(isolated):
    directory = make_cifar_dir(isolated / "c10")
    (directory / "test_batch").write_bytes(pickle.dumps(collections.OrderedDict(data=1)))
    with pytest.raises(ValueError, match="Refusing"):
        load_cifar10(directory)


def test_cifar10_rejects_bad_shapes(isolated):
    directory = make_cifar_dir(isolated / "c10")
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="shapes"):
        load_cifar10(directory)


# --- bundled subset -----------------------------------------------------------------------------------------------


def test_bundled_subset():
    data = load_bundled_fashion_mnist()
    assert data.source == "bundled"
    assert data.x_train.shape == (3000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    for x in (data.x_train, data.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=10), [300] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), [100] * 10)
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.input_shape == (1, 28, 28) and data.nb_classes == 10
    # Shuffled across classes, so a prefix is not a single class.
    assert len(np.unique(data.y_train[:50])) > 1


def test_bundled_metadata():
    metadata = bundled_metadata()
    assert metadata["seed"] == 0
    assert metadata["train_counts"] == [300] * 10 and metadata["test_counts"] == [100] * 10
    assert set(metadata["source_files"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }


# --- dispatch -----------------------------------------------------------------------------------------------------


def test_load_dataset_dispatch(isolated):
    assert load_dataset().source == "bundled"
    assert load_dataset("bundled").x_train.shape[0] == 3000
    fm = make_mnist_dir(isolated / "fm", nb_train=3)
    assert load_dataset("fashion-mnist", fm).class_names == FASHION_MNIST_CLASSES
    assert load_dataset("Fashion_MNIST", fm).source == str(fm)
    assert load_dataset("mnist", fm).class_names == tuple("0123456789")
    c10 = make_cifar_dir(isolated / "c10")
    assert load_dataset("cifar10", c10).input_shape == (3, 32, 32)


def test_load_dataset_bad_arguments():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="path"):
        load_dataset("bundled", path="/tmp")


def test_dataset_splits_validates_shapes():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError):
        DatasetSplits(x, np.zeros(3, np.int64), x, np.zeros(2, np.int64), ("a", "b"), "test")
    with pytest.raises(ValueError):
        DatasetSplits(x[:, 0], np.zeros(2, np.int64), x, np.zeros(2, np.int64), ("a", "b"), "test")


@pytest.mark.skipif(not OFFICIAL_FASHION_MNIST.is_dir(), reason="official Fashion-MNIST files not available")
def test_official_fashion_mnist():
    data = load_fashion_mnist(OFFICIAL_FASHION_MNIST)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [1000] * 10)
