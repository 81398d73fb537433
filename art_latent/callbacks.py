"""
Callback objects for :meth:`~art_latent.trainers.base.LatentTrainer.fit`.

A callback is any callable ``callback(trainer, epoch, record)`` run after each epoch (returning ``True`` stops
training). An object may also define ``on_fit_start(trainer)``, ``on_train_step(trainer, step, logs)`` with
``every_n_steps`` (see :mod:`art_latent.loggers`) and **state**: ``state_dict()`` returning tensors and plain Python
values, and ``load_state_dict(state)``. Their state is written into every checkpoint and given back on
``fit(..., resume=True)`` (matched by position in ``callbacks`` and class), so a resumed run continues the callback
where the interrupted one was, as :class:`EarlyStopping` shows.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from art_latent.validation import check_int, check_range

logger = logging.getLogger(__name__)

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """
    Stop training when a history entry has not improved for `patience` epochs.

    .. code-block:: python

        from art_latent.callbacks import EarlyStopping

        trainer.fit(x, y, validation_data=(x_val, y_val), nb_epochs=50, checkpoint_dir="runs/a", resume=True,
                    callbacks=[EarlyStopping("val_loss", patience=5)])
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "min") -> None:
        """
        :param monitor: The history entry to watch (``"val_loss"``, ``"val_robust_accuracy"``, ``"loss"``, ...).
        :param patience: Epochs without improvement before stopping, >= 1.
        :param min_delta: The smallest change that counts as an improvement, >= 0.
        :param mode: ``"min"`` (lower is better) or ``"max"``.
        """
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a history entry, got {monitor!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.monitor = monitor
        self.patience = check_int("patience", patience)
        self.min_delta = check_range("min_delta", min_delta, 0.0, math.inf, high_open=True)
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def on_fit_start(self, trainer: Any) -> None:
        """A new run (no history restored from a checkpoint) starts counting afresh, also with a reused object."""
        if not trainer.history:
            self.best, self.best_epoch, self.wait = None, None, 0

    def __call__(self, trainer: Any, epoch: int, record: dict[str, float]) -> bool:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping watches {self.monitor!r}, which the history does not have: "
                           f"{sorted(record)} (validation entries need `validation_data`).")
        value = float(record[self.monitor])
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            logger.info("Early stopping after epoch %d: %s has not improved on %.4g (epoch %d) for %d epochs.",
                        epoch + 1, self.monitor, self.best, self.best_epoch, self.wait)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The best value so far, its epoch and the epochs waited."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed :meth:`state_dict`."""
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], int(state["wait"])
