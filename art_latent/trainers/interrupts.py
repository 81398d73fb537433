"""
SIGTERM during ``fit``: unwind like ``KeyboardInterrupt`` so hooks, modes and ``requires_grad`` flags are restored.

Schedulers (SLURM, Kubernetes, preemptible cloud machines) stop a job with SIGTERM. Python's default action kills
the process at once; inside :meth:`~art_latent.trainers.base.LatentTrainer.fit` art_latent instead raises
:class:`TrainingTerminated` in the main thread, so every ``finally`` block runs. The last complete checkpoint is on
disk already (checkpoints are written atomically at epoch ends); ``fit(..., resume=True)`` continues from it. A
SIGTERM that arrives while a checkpoint is being written waits for the write to finish (:func:`deferred_sigterm`),
so the process still exits with status 143 and a complete checkpoint, never a half-written file or a
``RuntimeError`` of torch's zip writer.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

# While > 0, a SIGTERM handled by `sigterm_raises` is recorded instead of raised (a checkpoint write is under way).
_deferring = 0
_pending = False


class TrainingTerminated(SystemExit):
    """Raised inside ``fit`` when the process receives SIGTERM; exits with status 143 (128 + SIGTERM) if uncaught."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """
    Turn SIGTERM into :class:`TrainingTerminated` while the block runs, when it is safe: only in the main thread
    and only if SIGTERM has its default action (a handler the user installed is left alone). The previous handler
    is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def again(signum: int, frame: FrameType | None) -> None:
        logger.warning("SIGTERM received again while stopping: ignored until the cleanup is done.")

    def handler(signum: int, frame: FrameType | None) -> None:
        global _pending
        # Once only: a second SIGTERM while the stack unwinds must not interrupt the restoring `finally` blocks.
        signal.signal(signal.SIGTERM, again)
        if _deferring:
            logger.warning("SIGTERM received during a checkpoint write: stopping once the write is complete.")
            _pending = True
            return
        logger.warning("SIGTERM received: stopping training; the last complete checkpoint (if any) is kept.")
        raise TrainingTerminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) in (handler, again):  # a handler installed meanwhile stays
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred_sigterm() -> Iterator[None]:
    """
    Hold back the :class:`TrainingTerminated` of a SIGTERM received inside the block until the block is done (a
    checkpoint write); raise it then. Outside :func:`sigterm_raises` (SIGTERM with its default action) it has no
    effect: the process is killed at once, and the temporary file the write leaves is removed by the next ``fit``.
    """
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            _pending = False
            logger.warning("SIGTERM received: stopping training; the last complete checkpoint is kept.")
            raise TrainingTerminated()
