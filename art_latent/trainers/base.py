"""
:class:`LatentTrainer`: the one training loop every art_latent defense reuses.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from art.data_generators import DataGenerator, PyTorchDataGenerator
from art.defences.trainer.trainer import Trainer
from art.estimators.classification.pytorch import PyTorchClassifier

from art_latent.estimator import LatentClassifier
from art_latent.perturbations import PerturbationSource
from art_latent.trainers.batches import LoaderBatches
from art_latent.trainers.checkpointing import CheckpointingMixin
from art_latent.trainers.context import Batch, Callback, LoopContext, TrainingDivergedError
from art_latent.trainers.distributed import DistributedContext
from art_latent.trainers.epoch_loop import EpochLoopMixin
from art_latent.trainers.fingerprint import data_digest, describe_setting
from art_latent.trainers.finite_guard import DeferredFiniteGuard
from art_latent.trainers.fit_inputs import FitInputsMixin
from art_latent.trainers.optimization import OptimizationMixin
from art_latent.trainers.sample_state import SampleState, SampleStore
from art_latent.trainers.training_attack import checked_attack_source
from art_latent.validation import check_int

logger = logging.getLogger(__name__)


class LatentTrainer(OptimizationMixin, FitInputsMixin, EpochLoopMixin, CheckpointingMixin, Trainer):
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
        refuse = argument == "attack" and self.allows_targeted_attack is False
        return checked_attack_source(attack, fast, argument, self._classifier, refuse, type(self).__name__)

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
        return {key: describe_setting(value) for key, value in sorted(vars(self).items())
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
        run = self._run_options(nb_epochs, scheduler, callbacks, verbose, checkpoint_dir, checkpoint_every, resume,
                                checkpoint_every_steps)
        if not isinstance(drop_last, bool):
            raise ValueError(f"`drop_last` must be True or False, got {drop_last!r}.")
        if not isinstance(shuffle, bool):
            raise ValueError(f"`shuffle` must be True or False, got {shuffle!r}.")
        x_np, y_np = self._check(x, y)
        val = self._validation_tensors(validation_data)
        self._check_fit_params(x_np, y_np, batch_size)
        self._check_last_batch(len(x_np) * self.rows_per_sample(), batch_size, drop_last)
        self.check_model(x_np[:batch_size])
        self._fingerprint = {"data": data_digest(x_np, y_np), "settings": self.resume_settings(),
                             "batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last,
                             **self._run_settings(scheduler)}
        return self._fit_arrays(x_np, y_np, in_memory, batch_size, shuffle, drop_last, val, run)

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
        run = self._run_options(nb_epochs, scheduler, callbacks, verbose, checkpoint_dir, checkpoint_every, resume,
                                checkpoint_every_steps)
        if loader is not None:
            return self._fit_loader(loader, validation_data, run)
        assert isinstance(generator, DataGenerator)  # the loader branch took everything else
        return self._fit_art_generator(generator, validation_data, run)

    # ------------------------------------------------------------------ the loop

    def rows_per_sample(self) -> int:
        """
        How many rows each training sample becomes in the per-epoch data of ``fit`` (HLDR: one pair per budget):
        used to check the last batch before any work. Default: the :meth:`sample_state`'s rows when it is stored, else
        1.
        """
        spec = self.sample_state()
        return spec.rows if spec is not None and spec.refresh != "batch" else 1

    def checkpointed_networks(self) -> dict[str, torch.nn.Module]:
        """
        Networks besides the classifier's model whose ``state_dict`` the method stores in its ``state_dict()``, by
        key (AFD's discriminator, the denoiser's network): their keys and shapes are checked before a resume
        changes anything. Default: none.
        """
        return {}

    @property
    def regularized_layers(self) -> list[str]:
        """
        The hidden layers (call references) this method regularizes or perturbs; recorded on the classifier as
        ``classifier.regularized_layers`` when ``fit`` starts, where evaluation (the latent adaptive attack) finds
        them. Default: ``self.layers`` when the method has such a list, else none.
        """
        layers = getattr(self, "layers", None)
        return list(layers) if isinstance(layers, (list, tuple)) else []

    def trained_modules(self) -> list[torch.nn.Module]:
        """
        The modules whose parameters and buffers this method trains (their BatchNorm statistics are restored when a
        step diverges): the classifier's model by default; methods that train other networks extend the list.
        """
        return [self._classifier.model]

    def stop_training(self) -> None:
        """Ask ``fit`` to stop after the current epoch (for callbacks)."""
        self._stop = True
