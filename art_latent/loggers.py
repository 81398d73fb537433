"""
Logger callbacks for :meth:`~art_latent.trainers.base.LatentTrainer.fit`: a CSV file (no dependency) and TensorBoard
(``torch.utils.tensorboard``, the optional extra ``art-latent[tensorboard]``).

Both write every entry of the history (loss, accuracy, the regularizer and the other terms of the method,
validation clean/robust accuracy, AFD's discriminator accuracy, the learning rate, the epoch time) once per epoch and,
with ``every_n_steps=N``, the batch values every N optimizer steps. Both are **resumable**: after
``fit(..., resume=True)`` they drop what the interrupted run logged after its last checkpoint, so each epoch and step
appears once.

.. code-block:: python

   from art_latent.loggers import CSVLogger, TensorBoardLogger

   trainer.fit(x, y, nb_epochs=10, checkpoint_dir="runs/hldr", resume=True,
               callbacks=[CSVLogger("runs/hldr/metrics.csv"), TensorBoardLogger("runs/hldr/tb", every_n_steps=50)])
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from art_latent.io import atomic_write
from art_latent.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["CSVLogger", "StepLogger", "TensorBoardLogger"]


class StepLogger:
    """
    Base of the loggers: a callback ``logger(trainer, epoch, record)`` after every epoch, plus
    ``on_fit_start(trainer)`` and, with ``every_n_steps``, ``on_train_step(trainer, step, logs)`` which ``fit`` calls
    when a callback has them. Reading the batch values every N steps synchronises the device once per N steps; the
    default (``None``) logs epochs only.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        """
        :param every_n_steps: Also log the batch values every this many optimizer steps (``None``: epochs only).
        """
        self.every_n_steps = None if every_n_steps is None else check_int("every_n_steps", every_n_steps)

    def on_fit_start(self, trainer: Any) -> None:
        """
        Called once per ``fit`` after a resumed checkpoint is loaded (``trainer.history`` and ``trainer.global_step``
        are those of the checkpoint). Default: nothing.

        :param trainer: The trainer.
        """

    def on_train_step(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        """
        Called every ``every_n_steps`` optimizer steps with the batch values. Default: nothing.

        :param trainer: The trainer.
        :param step: The global step (1-based, counted over the whole run, resumes included).
        :param logs: ``loss``, ``accuracy``, the method's terms and ``lr`` of this batch.
        """

    def __call__(self, trainer: Any, epoch: int, record: Mapping[str, float]) -> None:
        """
        Log an epoch (the callback protocol of ``fit``).

        :param trainer: The trainer.
        :param epoch: The epoch index (0-based).
        :param record: The epoch's history record.
        """


def _columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    columns = [c for c in first if any(c in row for row in rows)]
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _csv_text(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows, first), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class CSVLogger(StepLogger):
    """
    Write the history to a CSV file, one row per epoch (rewritten atomically after every epoch from
    ``trainer.history``, so a resumed run's file has each epoch once); with ``every_n_steps``, the batch values to a
    second file ``<name>_steps.csv``. Columns: ``epoch`` (or ``step``) first, then every key in the order it first
    appears; a key missing in a row (validation every other epoch) is empty.
    """

    def __init__(self, path: str | os.PathLike, every_n_steps: int | None = None) -> None:
        """
        :param path: The CSV file of the epochs.
        :param every_n_steps: Also write the batch values every this many steps to ``<stem>_steps.csv``.
        """
        super().__init__(every_n_steps)
        if not isinstance(path, str | os.PathLike) or not os.fspath(path).strip():
            raise ValueError(f"`path` must be a file path, got {path!r}.")
        self.path = Path(path)
        self.steps_path = self.path.with_name(f"{self.path.stem}_steps{self.path.suffix or '.csv'}")
        self._steps: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: Any) -> None:
        self._steps = []
        if self.every_n_steps is not None and self.steps_path.exists():
            with open(self.steps_path, newline="") as file:  # keep what the checkpointed part of the run logged
                self._steps = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)
                               if int(row["step"]) <= trainer.global_step]

    def on_train_step(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        if not trainer.is_main_process:
            return
        self._steps.append({"step": step, "epoch": len(trainer.history) + 1, **logs})
        atomic_write(self.steps_path, _csv_text(self._steps, ("step", "epoch")), fsync=False)

    def __call__(self, trainer: Any, epoch: int, record: Mapping[str, float]) -> None:
        if not trainer.is_main_process:  # under data-parallel training every rank has the same history
            return
        atomic_write(self.path, _csv_text(trainer.history, ("epoch",)), fsync=False)


class TensorBoardLogger(StepLogger):
    """
    Write the history as TensorBoard scalars (``torch.utils.tensorboard.SummaryWriter``; needs the ``tensorboard``
    package: ``pip install art-latent[tensorboard]``). Epoch entries are tagged ``epoch/<key>``, batch values
    ``step/<key>``; the x-axis of both is the global optimizer step (epochs at their last step). After a resume,
    events the interrupted run wrote past the checkpoint are purged (``purge_step``).
    """

    def __init__(self, log_dir: str | os.PathLike, every_n_steps: int | None = None) -> None:
        """
        :param log_dir: The TensorBoard run directory.
        :param every_n_steps: Also log the batch values every this many steps.
        :raises ImportError: If ``tensorboard`` is not installed (with the install command).
        """
        super().__init__(every_n_steps)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("TensorBoardLogger needs the tensorboard package: pip install "
                              "'art-latent[tensorboard]' (or pip install tensorboard).") from error
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def on_fit_start(self, trainer: Any) -> None:
        self.close()
        if not trainer.is_main_process:
            return
        self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=trainer.global_step + 1
                                          if trainer.global_step else None)

    def _ensure(self, trainer: Any) -> Any:
        if self._writer is None:
            self.on_fit_start(trainer)
        return self._writer

    def on_train_step(self, trainer: Any, step: int, logs: Mapping[str, float]) -> None:
        if not trainer.is_main_process:
            return
        writer = self._ensure(trainer)
        for key, value in logs.items():
            writer.add_scalar(f"step/{key}", value, step)

    def __call__(self, trainer: Any, epoch: int, record: Mapping[str, float]) -> None:
        if not trainer.is_main_process:
            return
        writer = self._ensure(trainer)
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"epoch/{key}", value, trainer.global_step)
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later ``fit`` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
