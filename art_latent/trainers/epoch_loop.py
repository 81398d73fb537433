"""
The epochs and steps of :class:`~art_latent.trainers.base.LatentTrainer`'s loop: resume, progress, per-step
metrics and logging, mid-epoch checkpoints, the finite checks and what a diverged step restores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.context import Batch, RunOptions, TrainingDivergedError
from art_latent.trainers.distributed import DistributedContext, convert_sync_batchnorm
from art_latent.trainers.finite_guard import DeferredFiniteGuard
from art_latent.trainers.interrupts import sigterm_raises
from art_latent.trainers.parts import TrainerParts
from art_latent.trainers.sample_state import SampleStore
from art_latent.utils import preserve_mode, preserve_requires_grad

logger = logging.getLogger(__name__)


def _summary(record: dict[str, float]) -> str:
    """One line for the log: ``loss 0.412, accuracy 0.871, ..., lr 0.001 (12.3 s)``."""
    items = [f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "time_s")]
    return ", ".join(items) + (f" ({record['time_s']:.1f} s)" if "time_s" in record else "")


class EpochLoopMixin(TrainerParts):
    """
    Runs the epochs and steps of a ``fit``: a part of
    :class:`~art_latent.trainers.base.LatentTrainer`, not used on its own.
    """

    def _loop(
        self,
        epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]],
        val: tuple[torch.Tensor, torch.Tensor] | None,
        run: RunOptions,
    ) -> list[dict[str, float]]:
        model = self._classifier.model
        callbacks, verbose, checkpoint = list(run.callbacks or []), run.verbose, run.checkpoint
        # Each fit records its own method's layers (empty: the latent attack falls back to latent_layers).
        self._classifier.regularized_layers = self.regularized_layers
        self._dist = DistributedContext.resolve(self.distributed, self.device)
        self._global_batch_size = 0
        if self._dist is not None:
            if self.sync_batchnorm:
                convert_sync_batchnorm(model, self.device)
            self._dist.broadcast_module(model)
            verbose = verbose and self._dist.is_main
        self._scaler = torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None
        deferred = self.check_finite == "deferred" or (self.check_finite is True and self.device.type != "cpu")
        self._guard = DeferredFiniteGuard(self.device) if deferred and self._scaler is None else None
        self._checkpoint = checkpoint
        self._every_steps = run.every_steps
        path, every = (None, 1) if checkpoint is None else (checkpoint[0] / ckpt.CHECKPOINT_NAME, checkpoint[1])
        self.history = []
        self._stop = False
        self._write_once = None
        self._referenced_blob = ""
        self.global_step = 0
        self._step_loggers = [c for c in callbacks if getattr(c, "every_n_steps", None)]
        self._callbacks = callbacks
        self._resume_mid = None
        self.carried = {}
        spec = self.sample_state()
        self._samples = None if spec is None else SampleStore(spec, self.device, self.sample_state_dir)
        if self._samples is not None:
            self._samples.by_index = self._samples_by_index
        if self._samples is not None and self._samples.stored and self._build_samples is None:
            self._samples.make_per_batch("an ART DataGenerator's samples cannot be found again; give fit_generator "
                                         "a DataLoader over art_latent.data.IndexedDataset(dataset) instead")
        try:
            return self._loop_epochs(epoch_batches, run, callbacks, verbose, val, path, every)
        finally:
            if self._samples is not None:
                self._samples.close()
            self._samples, self._build_samples, self._samples_by_index = None, None, False
            self.carried = {}

    def _loop_epochs(self, epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]], run: RunOptions,
                     callbacks: list[Any], verbose: bool, val: tuple[torch.Tensor, torch.Tensor] | None,
                     path: Path | None, every: int) -> list[dict[str, float]]:
        model, checkpoint = self._classifier.model, self._checkpoint
        nb_epochs, scheduler = run.nb_epochs, run.scheduler
        start_epoch = 0
        if run.resumes and path is not None:
            start_epoch, self._stop = self._load_checkpoint(path, scheduler)
            logger.info("Resumed from %s after epoch %d%s.", path, start_epoch,
                        "" if self._resume_mid is None else f" and {self._resume_mid['step']} steps of the next")
            if self._stop:
                logger.info("The checkpointed run was stopped by a callback after epoch %d: nothing to resume.",
                            start_epoch)
                return self.history
        elif run.resume:
            logger.info("No checkpoint in %s yet: training from the start.", checkpoint[0] if checkpoint else None)
        for callback in callbacks:
            start = getattr(callback, "on_fit_start", None)
            if callable(start):
                start(self)
        with sigterm_raises(), preserve_mode(model), preserve_requires_grad(model), self.fit_context():
            epochs = tqdm(range(start_epoch, nb_epochs), desc=type(self).__name__, disable=not verbose, unit="epoch")
            for epoch in epochs:
                record = self._run_epoch(epoch, epoch_batches, verbose, val, scheduler)
                self.on_epoch_end(epoch, record)
                self.history.append(record)
                epochs.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("epoch", "lr", "time_s")})
                logger.info("%s epoch %d/%d: %s", type(self).__name__, epoch + 1, nb_epochs, _summary(record))
                due = path is not None and (epoch + 1 == nb_epochs or (epoch + 1) % every == 0)
                try:
                    for callback in callbacks:
                        if callback(self, epoch, record) is True:
                            self._stop = True
                except BaseException:
                    if path is not None and due:  # a callback that raises (or SIGTERM in one) must not cost the epoch
                        self._write(path, epoch + 1, scheduler)
                    raise
                # After the callbacks, so that what they change (learning rates, RNG draws) is in the checkpoint.
                if path is not None and (due or self._stop):
                    self._write(path, epoch + 1, scheduler)
                if self._stop:
                    logger.info("Stopped by a callback after epoch %d.", epoch + 1)
                    break
        return self.history

    def _run_epoch(
        self,
        epoch: int,
        epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]],
        verbose: bool,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        scheduler: Any,
    ) -> dict[str, float]:
        started = time.perf_counter()
        mid, self._resume_mid = self._resume_mid, None
        samples = self._samples
        if samples is not None and samples.due(epoch):
            # Before the epoch's random state is recorded: a resume inside the epoch restores the rows instead.
            assert self._build_samples is not None
            self._build_samples(epoch)
        if mid is not None:  # resuming inside this epoch: its start is replayed, then its first steps skipped
            ckpt.set_rng_state(mid["epoch_rng"])
            self._shuffle_generator.set_state(mid["epoch_shuffle_rng"].cpu())
        epoch_start = (ckpt.rng_state(), self._shuffle_generator.get_state()) if self._every_steps else None
        self.train_mode()
        nb_batches, batches = epoch_batches(epoch)
        sums: dict[str, torch.Tensor] = {}
        count = first = 0
        if mid is not None:
            first, count, sums = int(mid["step"]), int(mid["count"]), dict(mid["sums"])
            if self._dist is not None and not self._dist.is_main:  # the checkpoint's sums span every process
                count, sums = 0, {k: torch.zeros_like(v) for k, v in sums.items()}
            if nb_batches is not None and first >= nb_batches:
                raise ValueError(f"The checkpoint resumes epoch {epoch + 1} after step {first}, but the epoch has "
                                 f"{nb_batches} batches: resume with the same data and batch size.")
            for _ in range(first):
                if next(batches, None) is None:
                    raise ValueError(f"The checkpoint resumes epoch {epoch + 1} after step {first}, but the epoch has "
                                     "fewer batches now: resume with the same data and batch size.")
            ckpt.set_rng_state(mid["rng"])
        bar = tqdm(batches, total=nb_batches, initial=first, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not verbose)
        guard = self._guard
        current = (epoch, -1)
        # The capture hooks live during the batches only: user code run between epochs (callbacks, validation,
        # checkpoint writes, a deepcopy of the model) sees none.
        with self._classifier.keep_hooks():
            try:
                for step, batch in enumerate(bar, start=first):
                    # Samples, not rows: per-sample state may expand each sample into several rows (one per pair),
                    # and the gradient weights of data-parallel training compare this with the global sample count.
                    self._local_batch_size = len(batch["y"])
                    if samples is not None and (samples.per_batch or samples.by_index):
                        batch = samples.complete(batch)
                    else:
                        batch.pop("index", None)
                    n = len(batch["y"])
                    self._position = current = (epoch, step)
                    if self.check_finite:
                        self._snapshot_buffers()
                        if guard is not None:
                            guard.start_batch()
                    try:
                        loss, logits, logs = self.optimization_step(batch)
                        if guard is not None:
                            guard.end_batch(self._buffers(), self._saved_buffers)
                            if (step + 1) % self.log_every == 0:
                                self._read_guard()
                        mid_due = self._every_steps is not None and (step + 1) % self._every_steps == 0 \
                            and (nb_batches is None or step + 1 < nb_batches)
                        log_due = any((self.global_step + 1) % c.every_n_steps == 0 for c in self._step_loggers)
                        if mid_due or (log_due and guard is not None):
                            self._read_guard()  # a pending failure must reach neither a checkpoint nor a logger
                    except TrainingDivergedError as error:
                        self._diverge_at_position(error, scheduler, current)
                    count += n
                    self.global_step += 1
                    if self._step_loggers:
                        self._log_step(loss, logits, batch["y"], logs)
                    with torch.no_grad():
                        metrics = {"loss": loss.detach() * n, "accuracy": (logits.argmax(1) == batch["y"]).sum()}
                        metrics.update({k: v.detach() * n for k, v in logs.items()})
                        for key, value in metrics.items():
                            sums[key] = sums[key] + value if key in sums else value.float()
                    if verbose and (step + 1) % self.log_every == 0:
                        bar.set_postfix({k: f"{v.item() / count:.4f}" for k, v in sums.items()})
                    if mid_due and self._checkpoint is not None and epoch_start is not None:
                        total, totals = self._epoch_totals(count, sums)
                        self._write(self._checkpoint[0] / ckpt.CHECKPOINT_NAME, epoch, scheduler, mid={
                            "step": step + 1, "count": total, "sums": totals, "epoch_rng": epoch_start[0],
                            "epoch_shuffle_rng": epoch_start[1]})
            except TrainingDivergedError:
                raise
            except BaseException:
                if guard is not None:  # a divergence still unread is the run's first failure: it is reported
                    try:
                        self._read_guard()
                    except TrainingDivergedError as error:
                        self._diverge_at_position(error, scheduler, current)
                raise
        if guard is not None:
            try:
                self._read_guard()
            except TrainingDivergedError as error:
                self._diverge_at_position(error, scheduler, current)
        if self._dist is not None:
            count, sums = self._epoch_totals(count, sums)
            self._dist.average_buffers(self._classifier.model)
        if count == 0:
            raise ValueError(f"Epoch {epoch + 1} had no training batch.")
        record: dict[str, float] = {"epoch": epoch + 1}
        record.update({k: v.item() / count for k, v in sums.items()})
        bad = [k for k, v in record.items() if not math.isfinite(v)]
        if bad:  # without check_finite, the first place a divergence shows
            raise self.divergence_error(
                f"The epoch means of {bad} in epoch {epoch + 1} are not finite: training diverged "
                f"({self.divergence_advice(bad)}). The last checkpoint is kept.", bad, epoch + 1
            )
        record["lr"] = float(self._classifier.optimizer.param_groups[0]["lr"])
        if val is not None:
            record.update(self.evaluate(*val))
        record["time_s"] = time.perf_counter() - started
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(record.get("val_loss", record["loss"]))
            else:
                scheduler.step()
        return record

    def _epoch_totals(self, count: int, sums: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
        """The sample count and metric sums over every process (this process's own without data parallelism)."""
        if self._dist is None:
            return count, dict(sums)
        keys = sorted(sums)
        totals = self._dist.sum_(torch.stack([sums[k] for k in keys] + [torch.tensor(float(count),
                                                                                      device=self.device)]))
        return int(totals[-1].item()), dict(zip(keys, totals[:-1], strict=True))

    def _diverge_at_position(self, error: TrainingDivergedError, scheduler: Any, current: tuple[int, int]) -> None:
        # The buffers go back to the current batch's start unless an earlier step of the failing batch was taken:
        # the failing batch's forward pass moved BatchNorm statistics (a deferred failure found in a later batch
        # froze them at that batch's start).
        if not self._steps_taken or self._position != current:
            self._restore_buffers()
        diverged = self._diverged(error, *self._position, scheduler)
        raise diverged from diverged.__cause__

    def _log_step(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                  logs: dict[str, torch.Tensor]) -> None:
        due = [c for c in self._step_loggers if self.global_step % c.every_n_steps == 0]
        if not due:
            return
        with torch.no_grad():  # one host read for the due step (opt-in: every_n_steps)
            values = torch.stack([loss.detach().float(), (logits.argmax(1) == y).float().mean(),
                                  *(v.detach().float().reshape(()) for v in logs.values())]).tolist()
        entry = dict(zip(["loss", "accuracy", *logs], values, strict=True))
        entry["lr"] = float(self._classifier.optimizer.param_groups[0]["lr"])
        for callback in due:
            callback.on_train_step(self, self.global_step, entry)

    def _buffers(self) -> list[torch.Tensor]:
        return [b for module in self.trained_modules() for b in module.buffers()]

    def _snapshot_buffers(self) -> None:
        # Copied into buffers allocated once: the last good BatchNorm statistics, restored on divergence.
        self._steps_taken = 0
        saved = self._saved_buffers
        buffers = self._buffers()
        if saved is None or [s.shape for s in saved] != [b.shape for b in buffers]:
            self._saved_buffers = [b.detach().clone() for b in buffers]
            return
        with torch.no_grad():
            for copy, buffer in zip(saved, buffers, strict=True):
                copy.copy_(buffer)

    def _restore_buffers(self) -> None:
        saved = self._saved_buffers
        if saved is None:
            return
        with torch.no_grad():
            for buffer, copy in zip(self._buffers(), saved, strict=True):
                buffer.copy_(copy)

    def _diverged(self, error: TrainingDivergedError, epoch: int, step: int, scheduler: Any) -> TrainingDivergedError:
        saved = None
        unsaved: OSError | None = None
        if self._checkpoint is not None:
            # The failing step was not taken: model and optimizers hold the state after the previous batch.
            saved = self._checkpoint[0] / ckpt.EMERGENCY_NAME
            try:
                self._write(saved, epoch, scheduler, batch=step)
            except OSError as failure:  # a full disk must not hide the divergence
                unsaved, saved = failure, None
        where = f"epoch {epoch + 1}, batch {step + 1}"
        taken = self._steps_taken
        if taken:  # e.g. AFD's classification step ran before its discriminator step failed
            state = (f"The failing optimizer step was not taken, but {taken} earlier optimizer step(s) of this batch "
                     "were; the state after them is")
        else:
            state = "The optimizer step was not taken; the last good state (before this batch) is"
        if saved is not None:
            kept = f"saved to {saved}"
        elif unsaved is not None:
            kept = f"kept in memory only: writing {ckpt.EMERGENCY_NAME} failed ({unsaved})"
        else:
            kept = "kept in memory (no `checkpoint_dir` to save it to)"
        diverged = self.divergence_error(
            f"Training diverged at {where}: {error} ({self.divergence_advice(error.terms)}). {state} {kept}.",
            error.terms, epoch + 1, step + 1, saved,
        )
        diverged.__cause__ = unsaved
        return diverged

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
        """
        Clean (and, with a ``validation_attack``, robust) accuracy and loss on tensors, in eval mode.

        :param x: Inputs on the device.
        :param y: Class indices on the device.
        :param batch_size: Evaluation batch size.
        :return: ``{"val_loss", "val_accuracy"[, "val_robust_accuracy"]}``.
        """
        model = self._classifier.model
        correct = torch.zeros((), device=self.device)
        robust = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        with preserve_mode(model):
            model.eval()
            for begin in range(0, len(y), batch_size):
                xb, yb = x[begin : begin + batch_size], y[begin : begin + batch_size]
                with torch.no_grad():
                    logits = model(self._preprocess(xb))
                    loss += self._classifier._loss(logits, yb) * len(yb)
                    correct += (logits.argmax(1) == yb).sum()
                if self.validation_attack is not None:
                    x_adv = self.validation_attack.generate(xb, yb)
                    with torch.no_grad():
                        robust += (model(self._preprocess(x_adv)).argmax(1) == yb).sum()
        result = {"val_loss": loss.item() / len(y), "val_accuracy": correct.item() / len(y)}
        if self.validation_attack is not None:
            result["val_robust_accuracy"] = robust.item() / len(y)
        return result
