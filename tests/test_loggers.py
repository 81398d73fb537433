"""CSV and TensorBoard loggers: every history entry per epoch, batch values every N steps, resumable."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from art.attacks.evasion import FastGradientMethod
from helpers import make_classifier

from art_latent.loggers import CSVLogger, TensorBoardLogger
from art_latent.trainers import HLDRTrainer


def _data(n: int = 32):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32), np.arange(n) % 3


def _trainer():
    clf = make_classifier()
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=0)


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_csv_logger_writes_every_history_entry_and_steps(tmp_path):
    x, y = _data()
    logger = CSVLogger(tmp_path / "metrics.csv", every_n_steps=2)
    _trainer().fit(x, y, validation_data=(x[:8], y[:8]), nb_epochs=2, batch_size=16, verbose=False,
                   callbacks=[logger])
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "accuracy", "ce", "regularizer", "lr", "val_loss", "val_accuracy", "val_robust_accuracy",
                "time_s"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    steps = _rows(tmp_path / "metrics_steps.csv")  # 4 pairs-batches per epoch: steps 2, 4, 6, 8
    assert [int(r["step"]) for r in steps] == [2, 4, 6, 8]
    assert {"loss", "accuracy", "regularizer", "lr"} <= set(steps[0])


def test_csv_logger_resumes_without_duplicates(tmp_path):
    x, y = _data()
    directory = tmp_path / "ckpt"

    def crash(trainer, epoch, logs):
        if epoch == 2:
            raise RuntimeError("killed after epoch 3's logs, before its checkpoint")

    logger = CSVLogger(tmp_path / "m.csv", every_n_steps=3)
    with pytest.raises(RuntimeError):
        _trainer().fit(x, y, nb_epochs=4, batch_size=16, verbose=False, checkpoint_dir=directory, checkpoint_every=2,
                       callbacks=[logger, crash])
    assert [r["epoch"] for r in _rows(tmp_path / "m.csv")] == ["1", "2", "3"]
    resumed = CSVLogger(tmp_path / "m.csv", every_n_steps=3)
    _trainer().fit(x, y, nb_epochs=4, batch_size=16, verbose=False, checkpoint_dir=directory, checkpoint_every=2,
                   resume=True, callbacks=[resumed])
    assert [r["epoch"] for r in _rows(tmp_path / "m.csv")] == ["1", "2", "3", "4"]
    steps = [int(r["step"]) for r in _rows(tmp_path / "m_steps.csv")]
    assert steps == list(range(3, 17, 3))  # 16 steps over 4 epochs, each logged once


def test_tensorboard_logger_is_readable_and_resumes_without_duplicates(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    x, y = _data()
    directory = tmp_path / "ckpt"

    def crash(trainer, epoch, logs):
        if epoch == 2:
            raise RuntimeError("killed")

    first = TensorBoardLogger(tmp_path / "tb", every_n_steps=4)
    with pytest.raises(RuntimeError):
        _trainer().fit(x, y, nb_epochs=4, batch_size=16, verbose=False, checkpoint_dir=directory, checkpoint_every=2,
                       callbacks=[first, crash])
    first.close()
    second = TensorBoardLogger(tmp_path / "tb", every_n_steps=4)
    _trainer().fit(x, y, nb_epochs=4, batch_size=16, verbose=False, checkpoint_dir=directory, checkpoint_every=2,
                   resume=True, callbacks=[second])
    second.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"epoch/loss", "epoch/accuracy", "epoch/regularizer", "epoch/lr", "step/loss"} <= set(tags)
    assert [e.step for e in events.Scalars("epoch/loss")] == [4, 8, 12, 16]  # epochs at their last global step
    assert [e.step for e in events.Scalars("step/loss")] == [4, 8, 12, 16]


def test_the_log_gets_one_line_per_epoch(caplog):
    x, y = _data()
    with caplog.at_level(logging.INFO, logger="art_latent.trainers"):
        _trainer().fit(x, y, nb_epochs=2, batch_size=16, verbose=False)
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("HLDRTrainer epoch 1/2: loss ") and "regularizer" in lines[0]
    assert "\n" not in lines[0] and lines[0].endswith(" s)")


def test_logger_arguments_are_checked():
    with pytest.raises(ValueError, match="`every_n_steps`"):
        CSVLogger("m.csv", every_n_steps=0)
    with pytest.raises(ValueError, match="`path`"):
        CSVLogger("")

