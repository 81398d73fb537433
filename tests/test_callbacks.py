"""Callback objects: EarlyStopping's rule, and a callback's state surviving a crash and a resume."""

from __future__ import annotations

import pytest
from helpers import make_classifier

from art_latent import LatentTrainer
from art_latent.callbacks import EarlyStopping


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping("val_loss", patience=2, min_delta=0.05)
    verdicts = [stop(None, epoch, {"val_loss": value}) for epoch, value in enumerate([1.0, 0.9, 0.88, 0.87, 0.8])]
    assert verdicts == [False, False, False, True, False]  # 0.88 and 0.87 are within min_delta of 0.9
    assert (stop.best, stop.best_epoch) == (0.8, 5)
    maximize = EarlyStopping("val_accuracy", patience=1, mode="max")
    assert [maximize(None, e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.6, 0.6])] == [False, False, True]


@pytest.mark.parametrize(("kwargs", "message"), [({"patience": 0}, "`patience`"), ({"mode": "up"}, "`mode`"),
                                                 ({"min_delta": -1.0}, "`min_delta`"), ({"monitor": ""}, "`monitor`")])
def test_early_stopping_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_early_stopping_names_a_missing_entry(tiny_data):
    with pytest.raises(KeyError, match="val_loss"):
        LatentTrainer(make_classifier()).fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False,
                                             callbacks=[EarlyStopping("val_loss")])


def _fit(tiny_data, directory, resume=False, crash_after=None):
    # "loss" with mode="max": every epoch after the first is "no improvement", so patience 3 stops after epoch 4
    stop = EarlyStopping("loss", patience=3, mode="max")

    def crash(trainer, epoch, record):
        if epoch == crash_after:
            raise RuntimeError("crash")

    trainer = LatentTrainer(make_classifier(), seed=0)
    trainer.fit(*tiny_data, nb_epochs=8, batch_size=32, verbose=False, checkpoint_dir=directory, resume=resume,
                callbacks=[stop, crash])
    return trainer.history, stop


def test_a_callbacks_state_survives_a_crash_and_a_resume(tiny_data, tmp_path):
    history, stop = _fit(tiny_data, tmp_path / "a")
    assert len(history) == 4 and stop.wait == 3
    with pytest.raises(RuntimeError, match="crash"):
        _fit(tiny_data, tmp_path / "b", crash_after=1)  # after epoch 2: the checkpoint holds wait == 1
    resumed, stop = _fit(tiny_data, tmp_path / "b", resume=True)
    assert len(resumed) == 4 and stop.wait == 3 and stop.best_epoch == 1  # not 5 epochs more from scratch


def test_a_stateful_callback_without_saved_state_starts_afresh_with_a_warning(tiny_data, tmp_path):
    LatentTrainer(make_classifier(), seed=0).fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False,
                                                 checkpoint_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"no state for callbacks\[0\].*starts afresh"):
        LatentTrainer(make_classifier(), seed=0).fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False,
                                                     checkpoint_dir=tmp_path, resume=True,
                                                     callbacks=[EarlyStopping("loss")])


def test_a_reused_early_stopping_object_starts_afresh_in_a_new_run(tiny_data):
    stop = EarlyStopping("loss", patience=1)
    histories = []
    for _ in range(2):  # the second run's first epoch is worse than the first run's best: it must not stop there
        trainer = LatentTrainer(make_classifier(), seed=0)
        histories.append(trainer.fit(*tiny_data, nb_epochs=3, batch_size=32, verbose=False, callbacks=[stop]))
    assert len(histories[1]) == len(histories[0]) == 3
