"""
One optimizer update of :class:`~art_latent.trainers.base.LatentTrainer`: autocast, backward (loss-scaled for fp16),
the finite check, data-parallel gradient averaging and the step. Methods with several optimizers call these helpers.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from art_latent.trainers.context import Batch
from art_latent.trainers.parts import TrainerParts

logger = logging.getLogger(__name__)

_MIN_LOSS_SCALE = 1.0  # GradScaler starts at 2**16 and halves on every step it skips


class OptimizationMixin(TrainerParts):
    """
    One optimizer update: a part of :class:`~art_latent.trainers.base.LatentTrainer`, not used on its own.
    """

    def _resolve_amp(self, amp: bool | str) -> torch.dtype | None:
        if amp is False or amp is None:
            return None
        if amp is True:
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if amp not in dtypes:
            raise ValueError(f"`amp` must be False, True, 'bf16' or 'fp16', got {amp!r}.")
        return dtypes[amp]

    def optimization_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """
        One optimizer update: zero the gradients, :meth:`~art_latent.trainers.base.LatentTrainer.training_step`
        under autocast (with ``amp``), backward (loss-scaled for fp16), step. Methods with several optimizers (e.g. a
        discriminator) override this.

        :param batch: The batch.
        :return: What :meth:`~art_latent.trainers.base.LatentTrainer.training_step` returned.
        """
        optimizer = self._classifier.optimizer
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, logits, logs = self.training_step(batch)
        self.backward_and_step(loss, optimizer, terms=logs)
        return loss, logits, logs

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` with the trainer's ``amp`` dtype, or a no-op context without ``amp``."""
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        name: str = "loss",
        terms: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """
        Back-propagate `loss` and step `optimizer`, through the fp16 ``GradScaler`` when there is one. With
        ``check_finite``, the loss, the `terms` and the gradients are checked before the step (see
        :class:`~art_latent.trainers.context.TrainingDivergedError`).

        :param loss: The scalar loss.
        :param optimizer: The optimizer to step.
        :param name: The loss's name in error messages (methods with several optimizers name their steps).
        :param terms: Further scalar terms to check, by name (the logs of
                      :meth:`~art_latent.trainers.base.LatentTrainer.training_step`).
        """
        scaler = self._scaler
        (loss if scaler is None else scaler.scale(loss)).backward()
        self.sync_gradients(optimizer)
        if self.check_finite:
            flags, names = self._finite_flags(loss, optimizer, name, terms or {}, gradients=scaler is None)
            guard = self._guard
            if guard is not None and scaler is None and not guard.first_step(optimizer):
                guard.step(optimizer, flags, names, (*self._position, self._steps_taken, self.global_step),
                           self._buffers())
                self._steps_taken += 1
                return
            if guard is not None:
                self._read_guard()  # earlier steps first: the first failure is the one reported
            found = [n for n, b in zip(names, flags.tolist(), strict=True) if b > 0]  # the one host read
            if found:
                raise self.divergence_error(f"non-finite {', '.join(found)}", terms=found)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # skipped by the scaler when the gradients are not finite
            scaler.update()
            if self.check_finite and scaler.get_scale() < _MIN_LOSS_SCALE:
                # Each skipped step halves the scale: below 1 the gradients were not finite for 16+ steps in a row.
                raise self.divergence_error(
                    f"non-finite gradient of {name} for many steps in a row (the fp16 loss scale fell to "
                    f"{scaler.get_scale():.3g})", terms=[f"gradient of {name}"])
        self._steps_taken += 1

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """
        Under data-parallel training, average the gradients of `optimizer`'s parameters across processes (weighted
        by the per-process batch sizes); a no-op otherwise. Methods that step an optimizer themselves call this
        between backward and step (:meth:`backward_and_step` does).

        :param optimizer: The optimizer about to step.
        """
        if self._dist is None:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        local = self._local_batch_size
        total = self._global_batch_size or local * self._dist.world_size
        self._dist.average_gradients(params, local, total)

    def _finite_flags(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        name: str,
        terms: dict[str, torch.Tensor],
        gradients: bool,
    ) -> tuple[torch.Tensor, list[str]]:
        """
        The finite flags of a step, on the device: one per name, positive where the term is not finite (summed over
        processes under data-parallel training).
        """
        names = [name, *(f"{name}/{key}" if name != "loss" else key for key in terms)]
        values = [loss.detach().float(), *(v.detach().float() for v in terms.values())]
        flags = [torch.isfinite(v).all() for v in values]
        if gradients:  # with a GradScaler, inf gradients are expected now and then: the scaler skips those steps
            grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad
                     for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                names.append(f"gradient of {name}")
                # The max-norm cannot overflow on finite entries (a 2-norm can) and propagates NaN.
                largest = torch.nn.utils.get_total_norm(grads, norm_type=math.inf)
                flags.append(torch.isfinite(largest).to(flags[0].device))
        bad = (~torch.stack(flags)).float()
        if self._dist is not None:  # every process must stop at the same step, or the others hang in an all-reduce
            bad = self._dist.sum_(bad)
        return bad, names

    def _read_guard(self) -> None:
        """
        Read the deferred finite flags (one host read); raise the first failure as the immediate check would have,
        with the loop's position set back to the failing step.
        """
        failed = self._guard.read() if self._guard is not None else None
        if failed is None:
            return
        self._position = (failed.epoch, failed.batch)
        self._steps_taken = failed.call
        self.global_step = failed.global_step
        raise self.divergence_error(f"non-finite {', '.join(failed.terms)}", terms=failed.terms)
