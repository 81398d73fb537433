"""
:class:`LatentTrainer`: the one training loop every art_latent defense reuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.data_generators import DataGenerator, PyTorchDataGenerator
from art.defences.trainer.trainer import Trainer
from art.estimators.classification.pytorch import PyTorchClassifier
from tqdm.auto import tqdm

from art_latent.capture import split_ref
from art_latent.estimator import LatentClassifier
from art_latent.io import remove_stale_temporaries
from art_latent.perturbations import PerturbationSource, as_perturbation_source, attacked_model
from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.batches import LoaderBatches
from art_latent.trainers.distributed import DistributedContext, convert_sync_batchnorm
from art_latent.trainers.finite_guard import DeferredFiniteGuard
from art_latent.trainers.interrupts import sigterm_raises
from art_latent.trainers.sample_state import SampleState, SampleStore
from art_latent.utils import preserve_mode, preserve_requires_grad
from art_latent.validation import check_budget_units, check_data, check_int

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
#: The key of :meth:`LatentTrainer.state_dict` for per-sample tensors written once per run (see there).
WRITE_ONCE = "write_once"
_MIN_LOSS_SCALE = 1.0  # GradScaler starts at 2**16 and halves on every step it skips
Callback = Callable[["LatentTrainer", int, dict[str, float]], Any]


class TrainingDivergedError(FloatingPointError):
    """
    A loss term or a gradient became NaN/inf. ``fit`` raises it before the optimizer step, so the model and the
    optimizers still hold the last good state; the message names the epoch, the batch and the term.
    """

    def __init__(self, message: str, terms: Sequence[str] = (), epoch: int | None = None,
                 batch: int | None = None, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.terms = list(terms)
        self.epoch = epoch
        self.batch = batch
        self.checkpoint = checkpoint


def _is_targeted(attack: Any) -> bool:
    for candidate in (attack, getattr(attack, "attack", None)):
        targeted = getattr(candidate, "targeted", False)
        if isinstance(targeted, bool) and targeted:
            return True
    return False


_NOT_SETTINGS = frozenset({"verbose", "training", "batch_size", "history", "global_step"})


def _describe(value: Any, depth: int = 0) -> Any:
    """
    A setting as plain data for the resume fingerprint: numbers, strings and containers as they are (numpy scalars
    as Python numbers, small arrays as lists), tensors by shape, other objects by type and, two levels deep, their
    public non-callable attributes (an attack's eps, eps_step, random_eps, decay, ...; a loss's label_smoothing).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_describe(v, depth) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, depth) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}:{data_digest(value)}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    described: dict[str, Any] = {"type": f"{type(value).__module__}.{type(value).__qualname__}"}
    if isinstance(value, torch.optim.Optimizer):  # its state changes every step: type and options only
        described["defaults"] = _describe(value.defaults, depth + 1)
        return described
    if depth >= 2 or isinstance(value, torch.nn.Module) and depth >= 1:
        return described
    for key, item in sorted(getattr(value, "__dict__", {}).items()):
        if key.startswith("_") or key in _NOT_SETTINGS or callable(item) and not isinstance(item, torch.nn.Module):
            continue
        if isinstance(item, torch.nn.Module | torch.optim.Optimizer) or key in ("estimator", "classifier", "model"):
            continue  # the model itself is checked by its weights
        described[key] = _describe(item, depth + 1)
    return described


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summary(record: dict[str, float]) -> str:
    """One line for the log: ``loss 0.412, accuracy 0.871, ..., lr 0.001 (12.3 s)``."""
    items = [f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "time_s")]
    return ", ".join(items) + (f" ({record['time_s']:.1f} s)" if "time_s" in record else "")


def data_digest(*arrays: np.ndarray) -> str:
    """
    A BLAKE2b digest of arrays' dtypes, shapes and bytes: the training data's identity in a checkpoint.

    :param arrays: The arrays (e.g. ``x``, ``y``).
    :return: Hex digest.
    """
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8).data if array.size else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class LoopContext:
    """
    What the training loop is doing, for a method's hooks (:attr:`LatentTrainer.loop`): read it instead of the loop's
    private attributes.
    """

    #: The device the batches are on.
    device: torch.device
    #: The fp16 ``GradScaler`` of this ``fit`` (``amp="fp16"``), else ``None``: gradients seen in tensor hooks are
    #: scaled by it.
    scaler: torch.amp.GradScaler | None
    #: The data-parallel context (``broadcast_module``, ``sum_``, ``world_size``, ...), or ``None``.
    distributed: DistributedContext | None
    #: The 0-based epoch and batch of the step in progress.
    epoch: int
    batch: int
    #: Optimizer steps completed in the run (resumes included).
    global_step: int


class LatentTrainer(Trainer):
    """
    The training loop shared by every art_latent defense; on its own it trains with the classifier's loss (plain
    fine-tuning, the undefended baseline).

    ``fit`` owns batching, device placement, epochs, progress bars, validation, history, callbacks, schedulers and
    checkpoint/resume. A defense overrides :meth:`training_step`; what it keeps per training sample (precomputed
    adversarial pairs, fixed noise) it declares in :meth:`sample_state`, and what it carries from one step to the
    next (a previous batch's gradients) it keeps in :attr:`carried`: the loop stores, refreshes, checkpoints and
    restores both.

    ``fit(x, y)`` keeps the training set on the classifier's device; a loader's batches are copied there one at a
    time. Per batch nothing is copied to the host: metrics are accumulated on the device and read once per epoch (and
    at each progress-bar refresh when `verbose`).
    """

    #: The exception raised on a non-finite loss or gradient (methods may raise a subclass).
    divergence_error: type[TrainingDivergedError] = TrainingDivergedError
    #: Whether the training attack may be a targeted one (a method that documents a use for it sets ``True``).
    allows_targeted_attack: bool = False
    #: Attributes that do not change what a run computes: a resumed run may set them differently.
    resume_ignores: frozenset[str] = frozenset({"history", "log_every", "check_finite", "distributed", "global_step",
                                                "sample_state_dir", "carried"})
    #: The argument that named :attr:`regularized_layers` (for error messages).
    layers_argument: str = "layers"

    def __init__(
        self,
        classifier: LatentClassifier | PyTorchClassifier,
        validation_attack: Any = None,
        seed: int | None = None,
        log_every: int = 20,
        amp: bool | str = False,
        distributed: bool | str = "auto",
        sync_batchnorm: bool = False,
        check_finite: bool | str = True,
        sample_state_dir: str | os.PathLike | None = None,
    ) -> None:
        """
        :param classifier: The classifier to train; a plain ART ``PyTorchClassifier`` is wrapped in a
                           :class:`~art_latent.LatentClassifier` sharing its model and optimizer.
        :param validation_attack: An ART evasion attack or :class:`~art_latent.perturbations.PerturbationSource`
                                  used for the robust validation accuracy in ``history`` (none by default).
        :param seed: Seeds torch, numpy (ART's random initialisations) and the shuffling, for reproducible runs.
        :param log_every: Refresh the progress bar's postfix every this many batches (each refresh reads the
                          running metrics from the device once).
        :param amp: Mixed precision with ``torch.autocast``: ``False`` (default), ``"bf16"``, ``"fp16"`` (with a
                    ``GradScaler``; meant for CUDA) or ``True`` (fp16 on CUDA, bf16 on CPU).
        :param distributed: Data-parallel training across processes: ``"auto"`` (default: when started by
                            ``torchrun`` or inside an initialised process group of several processes), ``True``
                            (required) or ``False``. See :mod:`art_latent.trainers.distributed`.
        :param sync_batchnorm: Under data-parallel training, convert BatchNorm layers to ``SyncBatchNorm`` so batch
                               statistics span all processes (CUDA only). Without it each process normalises with its
                               own batch statistics and running statistics are averaged after every epoch.
        :param check_finite: Check every loss term and the gradients for NaN/inf at each optimizer step and stop
                             with a :class:`TrainingDivergedError` naming the epoch, batch and term, leaving the last
                             good state (and, with a ``checkpoint_dir``, saving it as ``emergency.pt``): the failing
                             step and every later one are not taken. ``"immediate"`` reads the check on the host
                             before each step (one synchronisation per step); ``"deferred"`` keeps it on the device,
                             undoes failing steps there and reads it every ``log_every`` steps and at the end of
                             each epoch (see :mod:`art_latent.trainers.finite_guard` for the trade-off); ``True``
                             (default) is immediate on the CPU and deferred on accelerators. ``False`` checks only
                             the epoch's mean loss.
        :param sample_state_dir: A directory for memory-mapped files holding the method's per-sample state (e.g.
                                 HLDR's precomputed pairs) when training from a loader, for data sets whose pairs do
                                 not fit in host memory; default: host memory. See
                                 :mod:`art_latent.trainers.sample_state`.
        """
        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(
                f"`classifier` must be an art_latent LatentClassifier or ART PyTorchClassifier, got "
                f"{type(classifier).__name__}: art_latent defends PyTorch models only."
            )
        if not isinstance(classifier, LatentClassifier):
            logger.info("Wrapping the PyTorchClassifier in a LatentClassifier (shared model and optimizer).")
            classifier = LatentClassifier.from_classifier(classifier)
        if classifier.optimizer is None:
            raise ValueError("The classifier has no optimizer: pass `optimizer=` when creating it.")
        super().__init__(classifier)
        self._classifier: LatentClassifier = classifier
        # "attack" is the sentinel of methods with a training attack: set_attack() fills it in.
        self._validation_uses_attack = isinstance(validation_attack, str) and validation_attack == "attack"
        self.validation_attack: PerturbationSource | None = (
            None if validation_attack is None or self._validation_uses_attack
            else self._attack_source(validation_attack, True, "validation_attack")
        )
        self.attack: PerturbationSource | None = None
        self.seed = None if seed is None else check_int("seed", seed, minimum=0, maximum=2**32 - 1)  # numpy's range
        self.log_every = check_int("log_every", log_every)
        self.history: list[dict[str, float]] = []
        self._stop = False
        self.amp = amp
        self._amp_dtype = self._resolve_amp(amp)
        if distributed not in (True, False, "auto"):
            raise ValueError(f"`distributed` must be 'auto', True or False, got {distributed!r}.")
        self.distributed = distributed
        self.sync_batchnorm = bool(sync_batchnorm)
        if isinstance(check_finite, np.bool_):
            check_finite = bool(check_finite)
        if check_finite not in (True, False, "immediate", "deferred") or isinstance(check_finite, (int, float)) \
                and not isinstance(check_finite, bool):
            raise ValueError(f"`check_finite` must be True, False, 'immediate' or 'deferred', got {check_finite!r}.")
        self.check_finite: bool | str = check_finite
        if sample_state_dir is not None and not isinstance(sample_state_dir, str | os.PathLike):
            raise ValueError(f"`sample_state_dir` must be a directory path or None, got {sample_state_dir!r}.")
        self.sample_state_dir = None if sample_state_dir is None else os.fspath(sample_state_dir)
        #: Tensors a method carries from one step to the next (layerwise training's previous-batch perturbations):
        #: emptied at the start of every fit, written into every checkpoint and restored by a resume.
        self.carried: dict[str, torch.Tensor] = {}
        self._samples: SampleStore | None = None
        self._build_samples: Callable[[int], None] | None = None
        self._samples_by_index = False  # batches take their per-sample rows by index (a loader)
        self._guard: DeferredFiniteGuard | None = None
        self._position = (0, 0)
        self._steps_taken = 0
        self._saved_buffers: list[torch.Tensor] | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._every_steps: int | None = None
        self._resume_mid: dict[str, Any] | None = None
        self._callbacks: list[Any] = []
        self._dist: DistributedContext | None = None
        # (identity of the method's write-once tensors, the file reference of their last write)
        self._write_once: tuple[Any, dict[str, Any]] | None = None
        self._referenced_blob: Any = ""  # the state file checkpoint.pt was last written with ("": not known)
        self._fingerprint: dict[str, Any] | None = None
        #: Optimizer steps taken in the run so far (resumes included); the x-axis of the loggers.
        self.global_step = 0
        self._step_loggers: list[Any] = []
        self._global_batch_size = 0
        self._local_batch_size = 0

    def set_attack(self, attack: Any, fast: bool = True) -> PerturbationSource:
        """
        Set the method's training attack (any ART evasion attack or perturbation source; ART's FGSM/BIM/PGD on the
        torch fast path when `fast`); it is also the validation attack when ``validation_attack="attack"``.

        :param attack: The attack.
        :param fast: Use the on-device torch path where it reproduces the attack.
        :return: The perturbation source, also stored as ``self.attack``.
        """
        self.attack = self._attack_source(attack, fast, "attack")
        if self._validation_uses_attack:
            self.validation_attack = self.attack
        return self.attack

    def _attack_source(self, attack: Any, fast: bool, argument: str) -> PerturbationSource:
        if argument == "attack" and self.allows_targeted_attack is False and _is_targeted(attack):
            raise ValueError(
                f"`{argument}` is a targeted attack ({type(attack).__name__} with targeted=True): its examples move "
                f"towards the label they are given, which {type(self).__name__} uses as the true label, so training "
                "on them would not defend against anything. Use an untargeted attack (targeted=False), as ART's "
                "AdversarialTrainer requires."
            )
        source = as_perturbation_source(attack, fast=fast, argument=argument)
        check_budget_units(argument, getattr(source, "eps", None), self._classifier.clip_values, "eps")
        model = attacked_model(attack) or attacked_model(source)
        if model is not None and model is not self._classifier.model:
            warnings.warn(
                f"`{argument}` follows the gradients of another model than the trainer's classifier: its examples "
                "are a transfer attack, not adversarial for the model being trained. Build the attack on the "
                "trainer's classifier unless a transfer attack is intended.",
                UserWarning,
                stacklevel=4,
            )
        return source

    def _resolve_amp(self, amp: bool | str) -> torch.dtype | None:
        if amp is False or amp is None:
            return None
        if amp is True:
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if amp not in dtypes:
            raise ValueError(f"`amp` must be False, True, 'bf16' or 'fp16', got {amp!r}.")
        return dtypes[amp]

    # ------------------------------------------------------------------ hooks for methods

    @property
    def classifier(self) -> LatentClassifier:
        """The classifier being trained."""
        return self._classifier

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files (always, except the non-zero ranks of data-parallel training)."""
        return self._dist is None or self._dist.is_main

    @property
    def device(self) -> torch.device:
        """The classifier's device."""
        return self._classifier.device

    @property
    def loop(self) -> LoopContext:
        """The loop's state for the method's hooks: device, fp16 scaler, data-parallel context, position."""
        return LoopContext(self.device, self._scaler, self._dist, *self._position, self.global_step)

    def sample_state(self) -> SampleState | None:
        """
        What the method keeps per training sample and when it is remade (precomputed pairs, fixed noise), or
        ``None`` (default). The loop makes, stores, finds by sample index, refreshes, checkpoints and restores it;
        each batch given to :meth:`training_step` holds its rows. See :mod:`art_latent.trainers.sample_state`.
        """
        return None

    def prepare_data(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """
        Build the per-sample tensors the epochs iterate over (on the device). Called once at the start of ``fit``
        (for work on the whole training set before the first epoch, such as AT-LR's layer analysis; per-sample state
        is declared in :meth:`sample_state` instead).

        :param x: Training inputs.
        :param y: Class indices.
        :return: A dict of tensors with the same first dimension; ``"x"`` and ``"y"`` at least.
        """
        return {"x": x, "y": y}

    def prepare_generator(self, generator: DataGenerator, resuming: bool) -> None:
        """
        Called once at the start of ``fit_generator``, after validation and seeding, before the first epoch: the
        generator counterpart of :meth:`prepare_data` for methods that need data once (AT-LR's layer analysis).
        Batches drawn here are not given back to the generator. Default: nothing.

        :param generator: The ART ``DataGenerator``.
        :param resuming: Whether ``fit_generator`` resumes from a checkpoint (whose method state is loaded next).
        """

    def on_epoch_start(self, epoch: int, data: Batch) -> Batch:
        """
        Called before each epoch of ``fit``; may return new per-sample tensors (e.g. regenerated adversarial pairs).

        :param epoch: The epoch index (0-based).
        :param data: The current per-sample tensors.
        :return: The tensors for this epoch.
        """
        return data

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """
        Called after every epoch's metrics are read (and validation ran), before the record is appended to the history
        and the checkpoint is written: methods add entries to `record` or raise on a diverged state here.

        :param epoch: The epoch index (0-based).
        :param record: The epoch's history record (mutable).
        """

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """
        Compute the loss of one batch (the model is in train mode, gradients are zero).

        :param batch: ``"x"``, ``"y"`` and whatever :meth:`prepare_data` added, indexed for this batch.
        :return: ``(loss, logits, logs)``: the scalar loss to back-propagate, the logits of the clean inputs
                 ``batch["x"]`` (for the training accuracy) and a dict of detached scalar tensors to average over
                 the epoch (e.g. ``"regularizer"``).
        """
        logits = self._classifier.model_logits(self._preprocess(batch["x"]))
        loss = self._classifier._loss(logits, batch["y"])
        return loss, logits, {}

    def optimization_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """
        One optimizer update: zero the gradients, :meth:`training_step` under autocast (with ``amp``), backward
        (loss-scaled for fp16), step. Methods with several optimizers (e.g. a discriminator) override this.

        :param batch: The batch.
        :return: What :meth:`training_step` returned.
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
        :class:`TrainingDivergedError`).

        :param loss: The scalar loss.
        :param optimizer: The optimizer to step.
        :param name: The loss's name in error messages (methods with several optimizers name their steps).
        :param terms: Further scalar terms to check, by name (the logs of :meth:`training_step`).
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

    def train_mode(self) -> None:
        """
        Put the model in training mode; called at the start of every epoch (validation switches to eval). Methods
        that keep some layers frozen during ``fit`` (Deep Defense's BatchNorm) override this.
        """
        self._classifier.model.train()

    def fit_context(self) -> contextlib.AbstractContextManager:
        """
        A context manager entered around the whole training loop (after validation, before the first epoch) and
        always exited, also on exceptions: methods register hooks or freeze layers here. Default: nothing.
        """
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        """
        Extra state of the method to checkpoint (besides model, optimizer, history and RNG states). Per-sample tensors
        that never change once made (precomputed pairs, fixed noise) go under the key ``"write_once"`` as a dict of
        tensors: they are written once, to their own file, instead of into every checkpoint (keep returning the same
        tensor objects while they do not change).
        """
        return {}

    def resume_settings(self) -> dict[str, Any]:
        """
        The settings a checkpoint must have been written with to be resumed: every public attribute of the trainer
        (hyper-parameters, budgets, layers, seed, the attack's type and budget) except :attr:`resume_ignores`.
        Methods may override it. Compared, with the data's digest, when ``fit(..., resume=True)`` finds a checkpoint.
        """
        return {key: _describe(value) for key, value in sorted(vars(self).items())
                if not key.startswith("_") and key not in self.resume_ignores and not inspect.isroutine(value)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    # ------------------------------------------------------------------ helpers for methods

    def divergence_advice(self, terms: Sequence[str]) -> str:
        """
        What to try when `terms` became non-finite (part of the :class:`TrainingDivergedError` message).

        :param terms: The names of the non-finite terms.
        :return: Advice, one sentence.
        """
        return "lower the learning rate or the regularization weight"

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return self._classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)[0]

    def _resident(self, x: np.ndarray, in_memory: bool | None) -> bool:
        """Whether ``fit(x, y)`` keeps its data on the device (see its `in_memory`)."""
        if in_memory is not None:
            return in_memory
        if self.device.type != "cuda":
            return True
        spec = self.sample_state()
        rows = 0 if spec is None or spec.refresh == "batch" else spec.rows
        needed = x.nbytes * (1 + 2 * rows)  # the inputs, and per stored row an input and its pair
        free = torch.cuda.mem_get_info(self.device)[0]
        if needed * 2 > free:
            logger.info("The training data and per-sample rows (~%.0f MiB) would take over half of the device's free "
                        "memory (%.0f MiB): they stay in host memory, batches are copied per step.", needed / 2**20,
                        free / 2**20)
            return False
        return True

    def _host_batch(self, data: Batch, rows: torch.Tensor) -> Batch:
        """A batch of ``fit(x, y, in_memory=False)``: rows of the host data and per-sample store, on the device."""
        samples = self._samples
        if samples is not None and samples.stored:
            sample = rows % len(data["y"])  # row c * n + i is copy c of sample i
            batch = samples.rows(rows, {k: self._host_rows(data[k], sample) for k in samples.spec.repeats})
            if samples.spec.rows == 1:  # one row per sample: the batch is the samples' x and y with their rows
                batch.update({k: self._host_rows(v, rows) for k, v in data.items() if k not in batch})
            return batch
        return {k: self._host_rows(v, rows) for k, v in data.items()}

    def _host_rows(self, tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        picked = tensor[rows]
        if self.device.type == "cuda":
            picked = picked.pin_memory()
        return picked.to(self.device, non_blocking=True)

    def _to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(x)).to(self.device),
            torch.from_numpy(np.ascontiguousarray(y)).to(self.device),
        )

    def _check(self, x: Any, y: Any, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
        clf = self._classifier
        return check_data(x, y, clf.input_shape, clf.nb_classes, clf.clip_values, name=name)

    # ------------------------------------------------------------------ fit

    def fit(  # pylint: disable=W0221
        self,
        x: np.ndarray | Iterable[Any],
        y: np.ndarray | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = 128,
        nb_epochs: int = 20,
        scheduler: Any = None,
        callbacks: Sequence[Callback] | None = None,
        verbose: bool = True,
        shuffle: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        drop_last: bool = False,
        checkpoint_every_steps: int | None = None,
        in_memory: bool | None = None,
        **kwargs: Any,
    ) -> list[dict[str, float]]:
        """
        Train the classifier.

        :param x: Training inputs ``(n, *input_shape)``, floating, within the classifier's ``clip_values``; or a torch
                  ``DataLoader`` (or re-iterable of ``(x, y)`` batches) with `y` left out, which trains as
                  :meth:`fit_generator` does (the loader then decides batch size, order and the last batch:
                  `batch_size`, `shuffle` and `drop_last` must be left at their defaults).
        :param y: Labels as class indices ``(n,)`` or one-hot ``(n, nb_classes)``.
        :param validation_data: ``(x_val, y_val)`` evaluated after every epoch (clean accuracy, and robust accuracy
                                when the trainer has a ``validation_attack``).
        :param batch_size: Samples per step.
        :param nb_epochs: Number of epochs.
        :param scheduler: Anything with ``.step()`` (a ``torch.optim.lr_scheduler`` object), stepped once per epoch;
                          ``ReduceLROnPlateau`` receives the validation loss (training loss without validation).
        :param callbacks: Callables ``callback(trainer, epoch, logs)`` run after each epoch; one returning ``True``
                          stops training. Objects with ``state_dict()`` / ``load_state_dict(state)`` have their
                          state checkpointed and restored on resume (see :mod:`art_latent.callbacks`).
        :param verbose: Show progress bars.
        :param shuffle: Shuffle the samples every epoch.
        :param checkpoint_dir: Directory for ``checkpoint.pt``: model, optimizer(s), scheduler, GradScaler, RNG states
                               (torch, CUDA, numpy, Python), epoch, history and method state, written atomically
                               (an interrupted run leaves the last complete one) and read with
                               ``torch.load(weights_only=True)``. A divergence writes ``emergency.pt`` there.
        :param checkpoint_every: Write the checkpoint every this many epochs (and after the last epoch).
        :param resume: Continue from ``checkpoint_dir/checkpoint.pt`` when it exists (start afresh when it does
                       not); the resumed run ends with the weights an uninterrupted run would have. The checkpoint must
                       have been written for the same data and method settings (:meth:`resume_settings`), else it is
                       refused before anything is changed; its learning rates replace the optimizer's (a warning says
                       so when they differ), and a different `batch_size` is used but warned about.
        :param drop_last: Drop the last batch of each epoch when it is smaller than `batch_size`. Without it, a model
                          with BatchNorm layers and a last batch of one sample is refused before training (BatchNorm
                          cannot normalise one sample in training mode).
        :param checkpoint_every_steps: Also write the checkpoint every this many optimizer steps inside an epoch
                                       (default: at epoch ends only). A resume then continues from that step with
                                       the weights, optimizer, data order, random state and epoch metrics an
                                       uninterrupted run has there.
        :param in_memory: Keep the training set and the method's per-sample state on the classifier's device and
                          slice batches there (``True``: the fastest path when it fits), or keep them in host memory
                          and copy each batch to the device without blocking (``False``: for data larger than the
                          device; the per-sample rows are made on the device in chunks). ``None`` (default): on the
                          device unless an accelerator's free memory is less than twice what the data and its
                          per-sample rows are estimated to take. The batches and their order are the same either
                          way, and so are the updates when the per-sample rows are deterministic (FGSM pairs); random
                          rows (random starts, noise) are drawn in chunks of 1,024 samples on the host path, so they
                          differ for larger data.
        :return: The history: one dict per epoch.
        """
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments for fit: {', '.join(f'`{k}`' for k in sorted(kwargs))}.")
        if in_memory not in (None, True, False):
            raise ValueError(f"`in_memory` must be True, False or None, got {in_memory!r}.")
        if y is None:
            if isinstance(x, np.ndarray | torch.Tensor):
                raise ValueError("`y` is missing: give labels, or pass a DataLoader of (x, y) batches as `x`.")
            if (batch_size, shuffle, drop_last) != (128, True, False):
                raise ValueError("With a DataLoader as `x`, the loader decides the batches: leave `batch_size`, "
                                 "`shuffle` and `drop_last` at their defaults and set them on the DataLoader.")
            return self.fit_generator(
                LoaderBatches(x, argument="x").loader, nb_epochs=nb_epochs, validation_data=validation_data,
                scheduler=scheduler, callbacks=callbacks, verbose=verbose, checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every, resume=resume, checkpoint_every_steps=checkpoint_every_steps)
        batch_size = check_int("batch_size", batch_size)
        nb_epochs = check_int("nb_epochs", nb_epochs)
        if not isinstance(drop_last, bool):
            raise ValueError(f"`drop_last` must be True or False, got {drop_last!r}.")
        if not isinstance(shuffle, bool):
            raise ValueError(f"`shuffle` must be True or False, got {shuffle!r}.")
        self._check_scheduler_and_callbacks(scheduler, callbacks)
        checkpoint = self._check_checkpoint_args(checkpoint_dir, checkpoint_every, resume)
        self._every_steps = self._check_every_steps(checkpoint_every_steps, checkpoint)
        x_np, y_np = self._check(x, y)
        val = self._validation_tensors(validation_data)
        self._check_fit_params(x_np, y_np, batch_size)
        self._check_last_batch(len(x_np) * self.rows_per_sample(), batch_size, drop_last)
        self.check_model(x_np[:batch_size])
        self._fingerprint = {"data": data_digest(x_np, y_np), "settings": self.resume_settings(),
                             "batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last,
                             **self._run_settings(scheduler)}
        self._seed_everything()
        resident = self._resident(x_np, in_memory)
        if resident:
            x_t, y_t = self._to_device(x_np, y_np)
        else:  # host memory, pinned for copies without blocking
            x_t, y_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_np, y_np))
            if self.device.type == "cuda":
                x_t, y_t = x_t.pin_memory(), y_t.pin_memory()

        def build_samples(epoch: int) -> None:
            samples = self._samples
            assert samples is not None
            if resident:
                samples.build(epoch, x_t, y_t)
                return
            chunk = max(batch_size, 1024)
            samples.fill(epoch, len(x_t), ((x_t[s : s + chunk].to(self.device, non_blocking=True),
                                            y_t[s : s + chunk].to(self.device, non_blocking=True),
                                            torch.arange(s, min(s + chunk, len(x_t))))
                                           for s in range(0, len(x_t), chunk)))

        self._build_samples, self._samples_by_index = build_samples, False
        state: list[Batch] = []  # the per-sample tensors, made by prepare_data at the first epoch

        def epoch_batches(epoch: int) -> tuple[int, Iterator[Batch]]:
            if not state:
                state.append(self.prepare_data(x_t, y_t))  # host tensors when not resident
            data = state[0] = self.on_epoch_start(epoch, state[0])
            samples = self._samples
            n = len(data["y"])
            if samples is not None and samples.stored:
                assert samples.data is not None
                samples.place(resident, {"x": x_t, "y": y_t})  # rows a checkpoint of the other in_memory restored
                if resident:
                    data = samples.merge(data, samples.data)
                n = samples.spec.rows * len(x_t)
            # The order is drawn on the host; per-sample tensors a method keeps on the host (e.g. HLDR's budget of
            # each pair, read without a device synchronisation) are indexed with the host copy.
            order_host = torch.randperm(n, generator=self._shuffle_generator) if shuffle else torch.arange(n)
            order = order_host.to(self.device)
            on_host = {k for k, v in data.items() if v.device != order.device}
            world = 1 if self._dist is None else self._dist.world_size
            step = batch_size * world  # every process takes its contiguous part of each global batch
            # A last global batch too small to give every process a sample is dropped under data-parallel training.
            starts = [s for s in range(0, n, step) if world == 1 or min(step, n - s) >= world]
            if drop_last and n - starts[-1] < step and len(starts) > 1:
                starts = starts[:-1]
            last = min(step, n - starts[-1]) // world
            if last == 1 and self._has_batchnorm():
                raise ValueError(
                    f"The last batch of every epoch would hold one sample ({n} samples per epoch, batch_size="
                    f"{batch_size}{f' x {world} processes' if world > 1 else ''}): BatchNorm cannot normalise a "
                    "single sample in training mode. Pass `drop_last`=True or another `batch_size`."
                )

            def batches() -> Iterator[Batch]:
                for start in starts:
                    index, index_host = order[start : start + step], order_host[start : start + step]
                    self._global_batch_size = len(index)
                    if self._dist is not None:
                        index, index_host = self._dist.shard(index), self._dist.shard(index_host)
                    if resident:
                        yield {k: v[index_host if k in on_host else index] for k, v in data.items()}
                    else:
                        yield self._host_batch(data, index_host)

            return len(starts), batches()

        return self._loop(epoch_batches, nb_epochs, scheduler, callbacks, verbose, val, checkpoint, resume)

    def fit_generator(  # pylint: disable=W0221
        self,
        generator: DataGenerator | Iterable[Any],
        nb_epochs: int = 20,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        scheduler: Any = None,
        callbacks: Sequence[Callback] | None = None,
        verbose: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        checkpoint_every_steps: int | None = None,
        **kwargs: Any,
    ) -> list[dict[str, float]]:
        """
        Train on batches from an ART ``DataGenerator`` (``get_batch()``, ``size``, ``batch_size``), a torch
        ``DataLoader`` or any re-iterable of ``(x, y)`` batches (numpy or tensors; an epoch is one pass over it; ART's
        ``PyTorchDataGenerator`` is iterated through its ``DataLoader``, without ``get_batch``'s numpy copies). See
        :mod:`art_latent.trainers.batches` for how batches are checked and moved to the device.

        Each batch is validated and moved to the device; methods that precompute per-sample tensors in
        :meth:`prepare_data` build them per batch instead (see the method's documentation).

        :param generator: An ART ``DataGenerator`` yielding numpy ``(x, y)`` batches, or a ``DataLoader`` /
                          re-iterable of ``(x, y)`` batches (a sampler without a length works: the progress bar
                          then has no total).
        :param nb_epochs: Number of epochs; an epoch is ``ceil(generator.size / generator.batch_size)`` batches of a
                          ``DataGenerator``, or one pass over a loader.
        :param validation_data: See :meth:`fit`.
        :param scheduler: See :meth:`fit`.
        :param callbacks: See :meth:`fit`.
        :param verbose: Show progress bars.
        :param checkpoint_dir: See :meth:`fit`.
        :param checkpoint_every: See :meth:`fit`.
        :param resume: See :meth:`fit`.
        :param checkpoint_every_steps: See :meth:`fit`; the resumed epoch replays the first batches of the epoch
                                       from the generator (not trained on), so it resumes exactly when the generator
                                       gives the same batches again (a DataLoader shuffling with torch's generator
                                       does).
        :return: The history: one dict per epoch.
        """
        if kwargs:
            raise TypeError(
                f"Unexpected keyword arguments for fit_generator: {', '.join(f'`{k}`' for k in sorted(kwargs))}."
            )
        loader = None
        if isinstance(generator, PyTorchDataGenerator):
            loader = LoaderBatches(generator.iterator)  # its DataLoader's tensors, not get_batch()'s numpy copies
        elif not isinstance(generator, DataGenerator):
            loader = LoaderBatches(generator)  # raises TypeError for what is neither
        nb_epochs = check_int("nb_epochs", nb_epochs)
        self._check_scheduler_and_callbacks(scheduler, callbacks)
        checkpoint = self._check_checkpoint_args(checkpoint_dir, checkpoint_every, resume)
        self._every_steps = self._check_every_steps(checkpoint_every_steps, checkpoint)
        if loader is not None:
            return self._fit_loader(loader, nb_epochs, validation_data, scheduler, callbacks, verbose, checkpoint,
                                    resume)
        assert isinstance(generator, DataGenerator)  # the loader branch took everything else
        if generator.size is None or generator.batch_size is None:
            raise ValueError("The DataGenerator must know its `size` and `batch_size`.")
        if generator.size <= 0 or generator.batch_size <= 0:
            raise ValueError(
                f"The DataGenerator's `size` and `batch_size` must be positive, got {generator.size} and "
                f"{generator.batch_size}."
            )
        if generator.size % generator.batch_size == 1 and self._has_batchnorm():
            raise ValueError(
                f"The DataGenerator's last batch would hold one sample (size {generator.size}, batch_size "
                f"{generator.batch_size}): BatchNorm cannot normalise a single sample in training mode. Use another "
                "batch_size."
            )
        val = self._validation_tensors(validation_data)
        self._fingerprint = {"data": {"generator": f"{type(generator).__module__}.{type(generator).__qualname__}",
                                      "size": int(generator.size), "batch_size": int(generator.batch_size)},
                             "settings": self.resume_settings(), "batch_size": int(generator.batch_size),
                             **self._run_settings(scheduler)}
        self._seed_everything()
        resuming = resume and checkpoint is not None and (checkpoint[0] / ckpt.CHECKPOINT_NAME).exists()
        self.prepare_generator(generator, resuming)
        # an ART DataGenerator's samples cannot be found again: made per batch
        self._build_samples, self._samples_by_index = None, False
        nb_batches = math.ceil(generator.size / generator.batch_size)
        checked: list[bool] = []

        def epoch_batches(epoch: int) -> tuple[int, Iterator[Batch]]:
            def gen() -> Iterator[Batch]:
                for _ in range(nb_batches):
                    x_np, y_np = self._check(*generator.get_batch())
                    if not checked:  # the model contract, on the first batch (before its training step)
                        self.check_model(x_np)
                        checked.append(True)
                    x_b, y_b = self._to_device(x_np, y_np)
                    yield {"x": x_b, "y": y_b}

            return nb_batches, gen()

        return self._loop(epoch_batches, nb_epochs, scheduler, callbacks, verbose, val, checkpoint, resume)

    def _check_every_steps(self, value: int | None, checkpoint: tuple[Path, int] | None) -> int | None:
        if value is None:
            return None
        value = check_int("checkpoint_every_steps", value)
        if checkpoint is None:
            raise ValueError("`checkpoint_every_steps` needs a `checkpoint_dir`.")
        return value

    def _dist_requested(self) -> bool:
        import torch.distributed as dist

        if self.distributed is False or not dist.is_available():
            return False
        return (dist.is_initialized() and dist.get_world_size() > 1) or int(os.environ.get("WORLD_SIZE", "1")) > 1

    def _validation_tensors(self, validation_data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        if validation_data is None:
            return None
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
        return self._to_device(*self._check(validation_data[0], validation_data[1], name="validation_data[0]"))

    def _fit_loader(
        self,
        loader: LoaderBatches,
        nb_epochs: int,
        validation_data: Any,
        scheduler: Any,
        callbacks: Sequence[Callback] | None,
        verbose: bool,
        checkpoint: tuple[Path, int] | None,
        resume: bool,
    ) -> list[dict[str, float]]:
        """``fit_generator`` on a DataLoader or re-iterable: one pass over it per epoch (see :mod:`.batches`)."""
        if loader.size is not None and loader.batch_size and not loader.drop_last \
                and loader.size % loader.batch_size == 1 and self._has_batchnorm():
            raise ValueError(
                f"The last batch of `generator` would hold one sample (data set of {loader.size}, batch_size "
                f"{loader.batch_size}): BatchNorm cannot normalise a single sample in training mode. Use "
                "drop_last=True in the DataLoader or another batch_size.")
        val = self._validation_tensors(validation_data)
        self._fingerprint = {"data": loader.describe(), "settings": self.resume_settings(),
                             "batch_size": loader.batch_size, **self._run_settings(scheduler)}
        self._seed_everything()
        resuming = resume and checkpoint is not None and (checkpoint[0] / ckpt.CHECKPOINT_NAME).exists()
        if resuming:
            warnings.warn("Resuming a run that trains from a loader: its data is identified by the loader's class, "
                          "data set size and batch size only, not by content (reading it all to hash it would cost "
                          "an epoch). Resume only with the same data.", UserWarning, stacklevel=3)
        self.prepare_generator(loader, resuming)
        clf = self._classifier
        checked: list[bool] = []

        if self._dist_requested() and not loader.sharded:
            warnings.warn("Data-parallel training from a loader without a DistributedSampler: every process trains "
                          "on all of the data. Give each process DataLoader(..., sampler=DistributedSampler(...)).",
                          UserWarning, stacklevel=3)

        def checked_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
            for x_b, y_b, index in loader.epoch(self._check, self.device, clf.nb_classes, tuple(clf.input_shape)):
                if not checked:  # the model contract, on the first batch (before any work on it)
                    self.check_model(x_b.detach().cpu().numpy())
                    checked.append(True)
                yield x_b, y_b, index

        def build_samples(epoch: int) -> None:
            samples = self._samples
            assert samples is not None
            loader.set_epoch(epoch)
            batches = checked_batches()
            first = next(batches, None)
            if first is None:
                raise ValueError("`generator` yields no batch.")
            if first[2] is None or loader.size is None:
                why = "the loader yields no sample indices" if first[2] is None else "its data set has no length"
                samples.make_per_batch(f"{why}; to make them once per sample, iterate a DataLoader over "
                                       "art_latent.data.IndexedDataset(dataset), which yields (x, y, index)")
                return
            samples.fill(epoch, loader.size, itertools.chain([first], batches))

        self._build_samples, self._samples_by_index = build_samples, True

        def epoch_batches(epoch: int) -> tuple[int | None, Iterator[Batch]]:
            loader.set_epoch(epoch)  # a DistributedSampler's shuffling, seeded per epoch

            def gen() -> Iterator[Batch]:
                for x_b, y_b, index in checked_batches():
                    yield {"x": x_b, "y": y_b} if index is None else {"x": x_b, "y": y_b, "index": index}

            return loader.nb_batches, gen()

        return self._loop(epoch_batches, nb_epochs, scheduler, callbacks, verbose, val, checkpoint, resume)

    # ------------------------------------------------------------------ the loop

    @staticmethod
    def _check_checkpoint_args(
        checkpoint_dir: str | os.PathLike | None, checkpoint_every: int, resume: bool
    ) -> tuple[Path, int] | None:
        every = check_int("checkpoint_every", checkpoint_every)
        if not isinstance(resume, bool):
            raise ValueError(f"`resume` must be True or False, got {resume!r}.")
        if checkpoint_dir is None:
            if resume:
                raise ValueError("`resume=True` needs a `checkpoint_dir`.")
            return None
        if not isinstance(checkpoint_dir, str | os.PathLike):
            raise TypeError(f"`checkpoint_dir` must be a path, got {type(checkpoint_dir).__name__}.")
        if not os.fspath(checkpoint_dir).strip():
            raise ValueError("`checkpoint_dir` is empty: give a directory (None disables checkpoints).")
        if "\0" in os.fsdecode(os.fspath(checkpoint_dir)):
            raise ValueError(f"`checkpoint_dir` {os.fspath(checkpoint_dir)!r} contains a null byte.")
        directory = Path(checkpoint_dir)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"`checkpoint_dir` {str(directory)!r} exists and is not a directory.")
        for name in (ckpt.CHECKPOINT_NAME, ckpt.EMERGENCY_NAME):
            if (directory / name).exists() and not (directory / name).is_file():
                raise ValueError(f"`checkpoint_dir` {str(directory)!r} holds a {name} that is not a file.")
        try:  # found now, not after the first epoch
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as error:
            raise ValueError(f"`checkpoint_dir` {str(directory)!r} is not writable: {error}") from error
        remove_stale_temporaries(directory, (ckpt.CHECKPOINT_NAME, ckpt.EMERGENCY_NAME, ckpt.STATE_PREFIX))
        ckpt.remove_unreferenced_blobs(directory)
        return directory, every

    def _check_scheduler_and_callbacks(self, scheduler: Any, callbacks: Any) -> None:
        if scheduler is not None:
            if not callable(getattr(scheduler, "step", None)):
                raise TypeError(f"`scheduler` must have a .step() method, got {type(scheduler).__name__}.")
            bound = getattr(scheduler, "optimizer", None)
            if isinstance(bound, torch.optim.Optimizer) and bound is not self._classifier.optimizer:
                raise ValueError(
                    "`scheduler` is bound to another optimizer than the classifier's: it would change learning rates "
                    "nobody trains with. Build it on `trainer.classifier.optimizer`."
                )
        if callbacks is not None:
            if callable(callbacks) or not isinstance(callbacks, list | tuple):
                raise TypeError(
                    f"`callbacks` must be a list of callables, got {type(callbacks).__name__}; wrap a single "
                    "callback in a list: callbacks=[fn]."
                )
            for callback in callbacks:
                if not callable(callback):
                    raise TypeError(f"`callbacks` must hold callables, got {type(callback).__name__}.")

    def _learning_rates(self) -> list[float]:
        return [float(g["lr"]) for g in self._classifier.optimizer.param_groups if "lr" in g]

    def _run_settings(self, scheduler: Any) -> dict[str, Any]:
        """What the fingerprint records besides the data and the method: classifier, optimizer, scheduler."""
        clf = self._classifier
        return {
            "lr": self._learning_rates(),
            "optimizer": [_describe({k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")})
                          for g in clf.optimizer.param_groups],
            "scheduler": None if scheduler is None else f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
            "classifier": {"loss": _describe(clf._loss), "clip_values": _describe(clf.clip_values),
                           "preprocessing": _describe(list(clf.preprocessing_operations)),
                           "input_shape": list(clf.input_shape), "nb_classes": clf.nb_classes},
        }

    def rows_per_sample(self) -> int:
        """
        How many rows each training sample becomes in the per-epoch data of ``fit`` (HLDR: one pair per budget):
        used to check the last batch before any work. Default: the :meth:`sample_state`'s rows when it is stored, else
        1.
        """
        spec = self.sample_state()
        return spec.rows if spec is not None and spec.refresh != "batch" else 1

    def _check_last_batch(self, n: int, batch_size: int, drop_last: bool) -> None:
        if n % batch_size == 1 and not (drop_last and n > batch_size) and self._has_batchnorm():
            raise ValueError(
                f"The last batch of every epoch would hold one sample ({n} samples per epoch, batch_size="
                f"{batch_size}): BatchNorm cannot normalise a single sample in training mode. Pass `drop_last`=True "
                "or another `batch_size`."
            )

    def checkpointed_networks(self) -> dict[str, torch.nn.Module]:
        """
        Networks besides the classifier's model whose ``state_dict`` the method stores in its ``state_dict()``, by
        key (AFD's discriminator, the denoiser's network): their keys and shapes are checked before a resume
        changes anything. Default: none.
        """
        return {}

    def _has_batchnorm(self) -> bool:
        return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for module in self.trained_modules() for m in module.modules())

    def check_model(self, x: np.ndarray) -> None:
        """
        The model contract, checked with one forward pass in eval mode on the first samples before any other work
        (no BatchNorm statistic moves): the model has a trainable parameter, returns logits of shape
        ``(n, nb_classes)`` (through ``output_key`` / ``logits_fn`` when set), and every layer the method
        regularizes runs. Methods may extend it.

        :param x: A few training inputs (numpy, validated).
        :raises ValueError: Naming ``nb_classes``, the model's output or the layer.
        :raises TypeError: If the output is not a tensor and nothing says where the logits are.
        """
        clf = self._classifier
        model = clf.model
        if not any(p.requires_grad for module in self.trained_modules() for p in module.parameters()):
            raise ValueError("The `classifier`'s model has no trainable parameter (none, or all with requires_grad="
                             "False): there is nothing to train.")
        sample = torch.from_numpy(np.ascontiguousarray(x[:8])).to(self.device)
        with preserve_mode(model), torch.no_grad():
            model.eval()
            x_pre = self._preprocess(sample)
            output = model(x_pre)
            logits = clf.select_logits(output)
        expected = (len(sample), clf.nb_classes)
        binary = clf.nb_classes == 2 and tuple(logits.shape) == (len(sample), 1)  # ART's one-output binary convention
        if not binary and (logits.ndim != 2 or tuple(logits.shape) != expected):
            raise ValueError(
                f"The model returns logits of shape {tuple(logits.shape)} for {len(sample)} inputs, but the classifier "
                f"has `nb_classes`={clf.nb_classes}: expected {expected}. Set `nb_classes` to the model's number of "
                "outputs (or fix the model's last layer)."
            )
        layers = self.regularized_layers
        if layers:
            counts = clf.trace(x_pre, training=False).call_counts()
            for ref in layers:
                name, index = split_ref(ref)
                if counts.get(name, 0) <= index:
                    ran = counts.get(name, 0)
                    raise ValueError(
                        f"`{self.layers_argument}`: {ref!r} never runs in the model's forward pass (module {name!r} is "
                        f"called {ran} time(s)): it cannot be regularized. Choose layers that run, e.g. "
                        f"{clf.latent_layers[:4]}."
                    )

    def _check_fit_params(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        """Method-specific checks of the training data, before any work (override to add)."""

    def _seed_everything(self) -> None:
        self._shuffle_generator = torch.Generator()
        if self.seed is None:
            self._shuffle_generator.seed()
            return
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)  # ART's attacks draw their random initialisations from numpy
        self._shuffle_generator.manual_seed(self.seed)

    @property
    def regularized_layers(self) -> list[str]:
        """
        The hidden layers (call references) this method regularizes or perturbs; recorded on the classifier as
        ``classifier.regularized_layers`` when ``fit`` starts, where evaluation (the latent adaptive attack) finds
        them. Default: ``self.layers`` when the method has such a list, else none.
        """
        layers = getattr(self, "layers", None)
        return list(layers) if isinstance(layers, (list, tuple)) else []

    def _loop(
        self,
        epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]],
        nb_epochs: int,
        scheduler: Any,
        callbacks: Sequence[Callback] | None,
        verbose: bool,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        checkpoint: tuple[Path, int] | None,
        resume: bool,
    ) -> list[dict[str, float]]:
        model = self._classifier.model
        callbacks = list(callbacks or [])
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
            return self._loop_epochs(nb_epochs, epoch_batches, scheduler, callbacks, verbose, val, path, every,
                                     resume)
        finally:
            if self._samples is not None:
                self._samples.close()
            self._samples, self._build_samples, self._samples_by_index = None, None, False
            self.carried = {}

    def _loop_epochs(self, nb_epochs: int, epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]],
                     scheduler: Any, callbacks: list[Any], verbose: bool, val: tuple[torch.Tensor, torch.Tensor] | None,
                     path: Path | None, every: int, resume: bool) -> list[dict[str, float]]:
        model, checkpoint = self._classifier.model, self._checkpoint
        start_epoch = 0
        if resume and path is not None and path.exists():
            start_epoch, self._stop = self._load_checkpoint(path, scheduler)
            logger.info("Resumed from %s after epoch %d%s.", path, start_epoch,
                        "" if self._resume_mid is None else f" and {self._resume_mid['step']} steps of the next")
            if self._stop:
                logger.info("The checkpointed run was stopped by a callback after epoch %d: nothing to resume.",
                            start_epoch)
                return self.history
        elif resume:
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

    def trained_modules(self) -> list[torch.nn.Module]:
        """
        The modules whose parameters and buffers this method trains (their BatchNorm statistics are restored when a
        step diverges): the classifier's model by default; methods that train other networks extend the list.
        """
        return [self._classifier.model]

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

    def stop_training(self) -> None:
        """Ask ``fit`` to stop after the current epoch (for callbacks)."""
        self._stop = True

    # ------------------------------------------------------------------ checkpoints

    def _write(self, path: Path, epoch: int, scheduler: Any, batch: int | None = None,
               mid: dict[str, Any] | None = None) -> None:
        """
        Write a checkpoint after `epoch` complete epochs (and `batch` more batches, for an emergency checkpoint; `mid`:
        the position and metrics of a resumable checkpoint inside the next epoch).
        """
        if self._dist is None or self._dist.is_main:
            method = dict(self.state_dict())
            once = method.pop(WRITE_ONCE, None)
            samples = self._samples
            identity = None  # what tells, without hashing them, that the rows are those already written
            # Rows made once per run are written once; an epoch's rows only where the epoch goes on after the write.
            if samples is not None and (samples.spec.refresh == "never" or mid is not None or batch is not None):
                once, identity = samples.state_dict(), samples.generation
            reference = None
            if once is not None:  # never-changing per-sample tensors: their own file, written once per run
                written = self._write_once
                if written is None or identity is None or written[0] != identity:
                    previous = None if written is None else written[1]
                    if previous is None or not ckpt.blob_matches(previous, once, path.parent):
                        previous = ckpt.save_blob(once, path.parent)
                    written = self._write_once = (identity, previous)
                reference = written[1]
            optimizer = self._classifier.optimizer
            state = {
                "format": ckpt.FORMAT_VERSION,
                "trainer": type(self).__name__,
                "epoch": epoch,
                "batch": batch,
                "model": self._classifier.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "optimizer_class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
                "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
                "scheduler_class": None if scheduler is None else type(scheduler).__qualname__,
                "scaler": self._scaler.state_dict() if self._scaler is not None else None,
                "history": self.history,
                "stopped": self._stop,
                "rng": ckpt.rng_state(),
                "shuffle_rng": self._shuffle_generator.get_state(),
                "global_step": self.global_step,
                "method": method,
                "write_once": reference,
                "fingerprint": self._fingerprint,
                "settings_now": self.resume_settings(),
                "mid_epoch": mid,
                "callbacks": self._callback_states(),
                "carried": {key: value.detach().cpu() for key, value in self.carried.items()},
            }
            ckpt.save_atomic(state, path)
            name = None if reference is None else reference.get("file")
            if batch is None and name != self._referenced_blob:  # the state file it replaces is no longer referred to
                ckpt.remove_unreferenced_blobs(path.parent)
                self._referenced_blob = name
        if self._dist is not None:
            self._dist.barrier()

    def _check_resumable(self, state: dict[str, Any], path: Path, scheduler: Any) -> None:
        """Everything a resume needs, checked before any state is changed (a refused resume changes nothing)."""
        if state["trainer"] != type(self).__name__:
            raise ValueError(f"Checkpoint {path} was written by {state['trainer']}, not {type(self).__name__}.")
        if state["batch"] is not None:
            raise ValueError(f"{path} is an emergency checkpoint (mid-epoch); resume from {ckpt.CHECKPOINT_NAME}.")
        self._check_mid_epoch_entries(state, path)
        saved, current = state.get("fingerprint"), self._fingerprint
        if saved is not None and current is not None:
            problems = []
            if saved.get("data") != current.get("data"):
                problems.append(f"the training data differ (checkpoint: {saved.get('data')}, now: "
                                f"{current.get('data')})")
            before, now = saved.get("settings", {}), current.get("settings", {})
            # A callback may have changed a setting during the run: the same trainer object then holds the value of
            # the last checkpoint, a new one the value the run started with. Both resume.
            written = state.get("settings_now") or before
            for key in sorted(set(before) | set(now)):
                if now.get(key) not in (before.get(key), written.get(key)):
                    problems.append(f"`{key}` was {_short(before.get(key))}, now {_short(now.get(key))}")
            for key in ("shuffle", "drop_last"):
                if key in saved and saved.get(key) != current.get(key):
                    problems.append(f"`{key}` was {saved[key]!r}, now {current.get(key)!r}")
            if "classifier" in saved and saved["classifier"] != current.get("classifier"):
                changed = [k for k in saved["classifier"] if saved["classifier"][k] != current["classifier"].get(k)]
                problems.append(f"the classifier's {', '.join(changed)} differ")
            if "scheduler" in saved and saved["scheduler"] != current.get("scheduler"):
                problems.append(f"the scheduler was {saved['scheduler']}, now {current.get('scheduler')} (the "
                                "learning-rate schedule would change)")
            if problems:
                raise ValueError(
                    f"Cannot resume from {path}: it was written for another run: {'; '.join(problems)}. Resume with "
                    "the same data and settings, or start a new run (another checkpoint_dir, or resume=False)."
                )
            if "optimizer" in saved and saved["optimizer"] != current.get("optimizer"):
                warnings.warn(
                    f"Resuming {path}: the optimizer's options {current.get('optimizer')} differ from the run's "
                    f"{saved['optimizer']}; the checkpoint's options replace them.", UserWarning, stacklevel=5)
            if state.get("mid_epoch") is not None and (saved.get("batch_size") != current.get("batch_size")
                                                       or saved.get("drop_last") != current.get("drop_last")):
                raise ValueError(
                    f"Cannot resume from {path} inside an epoch with batch_size={current.get('batch_size')}: it was "
                    f"written with batch_size={saved.get('batch_size')} (and drop_last={saved.get('drop_last')}), "
                    "and the steps already taken are counted in batches. Resume with the same batch size, or from an "
                    "epoch checkpoint.")
            if saved.get("batch_size") != current.get("batch_size"):
                warnings.warn(
                    f"Resuming {path} with batch_size={current.get('batch_size')}, but it was written with "
                    f"batch_size={saved.get('batch_size')}: training continues with the new batch size, so the run "
                    "will not reproduce an uninterrupted one.", UserWarning, stacklevel=5)
        networks = {"model": (self._classifier.model, state["model"])}
        networks.update({key: (module, state["method"].get(key))
                         for key, module in self.checkpointed_networks().items()})
        for key, (module, weights) in networks.items():
            current_state = module.state_dict()
            if not isinstance(weights, dict):
                raise ValueError(f"Checkpoint {path} has no state for the {key}. Nothing was loaded.")
            missing = sorted(set(current_state) - set(weights))
            unexpected = sorted(set(weights) - set(current_state))
            shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(current_state[k].shape)}" for k in current_state
                      if k in weights and tuple(weights[k].shape) != tuple(current_state[k].shape)]
            if missing or unexpected or shapes:
                details = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}" for label, items in
                           (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
                what = "this model" if key == "model" else f"this trainer's {key}"
                raise ValueError(f"Checkpoint {path} does not fit {what} (another architecture?): "
                                 f"{'; '.join(details)}. Nothing was loaded.")
        optimizer = self._classifier.optimizer
        kind = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        saved_kind = state.get("optimizer_class")
        groups, saved_groups = optimizer.param_groups, state["optimizer"]["param_groups"]
        if saved_kind is not None and saved_kind != kind:
            raise ValueError(f"Checkpoint {path} holds the state of a {saved_kind}, but the classifier's optimizer is "
                             f"a {kind}. Nothing was loaded.")
        if len(groups) != len(saved_groups) or any(len(g["params"]) != len(s["params"])
                                                   for g, s in zip(groups, saved_groups, strict=False)):
            raise ValueError(f"Checkpoint {path}: the optimizer's parameter groups "
                             f"{[len(g['params']) for g in groups]} differ from the saved "
                             f"{[len(g['params']) for g in saved_groups]}. Nothing was loaded.")
        if saved_kind is None and any(set(g) != set(s) for g, s in zip(groups, saved_groups, strict=True)):
            raise ValueError(f"Checkpoint {path} holds the state of another optimizer type (its options "
                             f"{sorted(set(saved_groups[0]) - {'params'})} differ). Nothing was loaded.")
        saved_scheduler = state.get("scheduler_class")
        if scheduler is not None and saved_scheduler is not None and saved_scheduler != type(scheduler).__qualname__:
            raise ValueError(f"Checkpoint {path} holds the state of a {saved_scheduler} scheduler, not of a "
                             f"{type(scheduler).__qualname__}. Nothing was loaded.")
        if saved is not None and current is not None and saved.get("lr") != current.get("lr"):
            warnings.warn(
                f"Resuming {path}: the run started with learning rate(s) {saved.get('lr')}, the optimizer given now "
                f"has {current.get('lr')}; the checkpoint's learning rates (and schedule) replace them. To change "
                "the learning rate of a resumed run, set it in a callback after the first resumed epoch.",
                UserWarning, stacklevel=5)
            current["lr"] = saved.get("lr")  # what the run started with, in its later checkpoints too

    @staticmethod
    def _check_mid_epoch_entries(state: dict[str, Any], path: Path) -> None:
        """The entries of a checkpoint inside an epoch and of callback states, checked before anything is loaded."""
        bad = f"Checkpoint {path} is malformed: "
        mid = state.get("mid_epoch")
        if mid is not None:
            if not isinstance(mid, dict) or set(mid) != {"step", "count", "sums", "epoch_rng", "epoch_shuffle_rng"}:
                raise ValueError(bad + "its `mid_epoch` entry is not a position inside an epoch. Nothing was loaded.")
            step, count, sums = mid["step"], mid["count"], mid["sums"]
            if not (isinstance(step, int) and not isinstance(step, bool) and step >= 1
                    and isinstance(count, int) and not isinstance(count, bool) and count >= step):
                raise ValueError(bad + f"`mid_epoch` step {step!r} / sample count {count!r} are not positive "
                                 "integers with count >= step. Nothing was loaded.")
            if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     and v.numel() == 1 for k, v in sums.items()):
                raise ValueError(bad + "`mid_epoch` sums are not scalar tensors by name. Nothing was loaded.")
            rng, now = mid["epoch_rng"], state.get("rng")
            if not isinstance(rng, dict) or not isinstance(now, dict) or set(rng) != set(now) \
                    or any(type(rng[k]) is not type(now[k]) for k in now) \
                    or not isinstance(mid["epoch_shuffle_rng"], torch.Tensor):
                raise ValueError(bad + "`mid_epoch` random states are not random states. Nothing was loaded.")
        callbacks = state.get("callbacks")
        if callbacks is not None and (not isinstance(callbacks, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("class"), str) and "state" in v
                for k, v in callbacks.items())):
            raise ValueError(bad + "its `callbacks` entry is not callback states by position. Nothing was loaded.")

    def _load_checkpoint(self, path: Path, scheduler: Any) -> tuple[int, bool]:
        state = ckpt.load(path, map_location=self.device)
        self._check_resumable(state, path, scheduler)
        method = dict(state["method"])
        once = None
        if state.get("write_once") is not None:  # verified (SHA-256) before it is read
            once = ckpt.load_blob(state["write_once"], path.parent, map_location="cpu")
        samples = self._samples
        if samples is not None:  # checkpoints of format 2 held the rows in the method's state
            legacy = method.pop("pairs", None)
            if once is None and legacy is None and isinstance(method.get("x_noisy"), torch.Tensor):
                legacy = {"x_noisy": method.pop("x_noisy")}
            once = once if once is not None else legacy
        elif once is not None:
            method[WRITE_ONCE] = once
        carried = state.get("carried") or {}
        if not isinstance(carried, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in carried.items()):
            raise ValueError(f"Checkpoint {path} is malformed: its `carried` entry is not tensors by name. Nothing "
                             "was loaded.")
        backup = self._backup(scheduler)
        try:
            self._classifier.model.load_state_dict(state["model"])
            self._classifier.optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            if self._scaler is not None and state["scaler"] is not None:
                self._scaler.load_state_dict(state["scaler"])
            self.load_state_dict(method)
            self._load_callback_states(state.get("callbacks") or {})
            if samples is not None and once is not None:
                samples.load_state_dict(once)
            self.carried.update({key: value.to(self.device) for key, value in carried.items()})
        except BaseException:
            self._restore_backup(backup, scheduler)
            if samples is not None:
                samples.close()
            self.carried = {}
            raise
        self._restore_changed_settings(state)
        self.history = list(state["history"])
        ckpt.set_rng_state(state["rng"])
        self._shuffle_generator.set_state(state["shuffle_rng"].cpu())
        self.global_step = int(state.get("global_step", 0))
        # Not rewritten unless the method makes new tensors (checked by content at the next write).
        self._write_once = None if state.get("write_once") is None else (None, state["write_once"])
        mid = state.get("mid_epoch")
        self._resume_mid = None if mid is None else {**mid, "rng": state["rng"]}  # the random state at that step
        return int(state["epoch"]), bool(state.get("stopped", False))

    def _callback_states(self) -> dict[str, Any]:
        # Callback objects with state (state_dict / load_state_dict), by position in `callbacks`, with their class.
        return {str(index): {"class": f"{type(c).__module__}.{type(c).__qualname__}", "state": c.state_dict()}
                for index, c in enumerate(self._callbacks) if callable(getattr(c, "state_dict", None))}

    def _load_callback_states(self, saved: dict[str, Any]) -> None:
        for index, callback in enumerate(self._callbacks):
            load = getattr(callback, "load_state_dict", None)
            if not callable(load):
                continue
            entry = saved.get(str(index))
            name = f"{type(callback).__module__}.{type(callback).__qualname__}"
            if entry is None or entry.get("class") != name:
                warnings.warn(f"The checkpoint holds no state for callbacks[{index}] ({name}): it starts afresh.",
                              UserWarning, stacklevel=4)
                continue
            load(entry["state"])

    def _restore_changed_settings(self, state: dict[str, Any]) -> None:
        # Plain settings a callback changed during the run (e.g. a ramped regularization weight) are those of the
        # checkpoint, as in the uninterrupted run.
        start = (state.get("fingerprint") or {}).get("settings", {})
        for key, value in (state.get("settings_now") or {}).items():
            if value != start.get(key) and isinstance(value, bool | int | float | str) and hasattr(self, key) and (
                    isinstance(getattr(self, key), bool | int | float | str)):
                logger.info("Resuming with %s = %r, as a callback had set it in the checkpointed run.", key, value)
                setattr(self, key, value)

    def _backup(self, scheduler: Any) -> dict[str, Any]:
        cpu = ckpt.cpu_copy
        return {"modules": [cpu(m.state_dict()) for m in self._checkpointed_modules()],
                "optimizer": cpu(self._classifier.optimizer.state_dict()),
                "scheduler": cpu(scheduler.state_dict()) if hasattr(scheduler, "state_dict") else None,
                "method": cpu({k: v for k, v in self.state_dict().items() if k != WRITE_ONCE})}

    def _checkpointed_modules(self) -> list[torch.nn.Module]:
        modules = [self._classifier.model]
        return modules + [m for m in self.trained_modules() if all(m is not other for other in modules)]

    def _restore_backup(self, backup: dict[str, Any], scheduler: Any) -> None:
        for module, saved in zip(self._checkpointed_modules(), backup["modules"], strict=True):
            module.load_state_dict(saved)
        self._classifier.optimizer.load_state_dict(backup["optimizer"])
        if backup["scheduler"] is not None:
            scheduler.load_state_dict(backup["scheduler"])
        with contextlib.suppress(Exception):
            self.load_state_dict(backup["method"])
