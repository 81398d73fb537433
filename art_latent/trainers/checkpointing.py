"""
The checkpoints of :class:`~art_latent.trainers.base.LatentTrainer`: the arguments, writing (with the per-sample
state written once per change), the checks a resume makes before it changes anything, loading, and the backup a
failed resume restores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from art_latent.io import remove_stale_temporaries
from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.context import WRITE_ONCE
from art_latent.trainers.fingerprint import describe_setting
from art_latent.trainers.parts import TrainerParts
from art_latent.utils import user_stacklevel
from art_latent.validation import check_int

logger = logging.getLogger(__name__)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CheckpointingMixin(TrainerParts):
    """
    Writes, checks and loads the checkpoints of a ``fit``: a part of
    :class:`~art_latent.trainers.base.LatentTrainer`, not used on its own.
    """

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
                    f"{saved['optimizer']}; the checkpoint's options replace them.", UserWarning,
                    stacklevel=user_stacklevel())
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
                    "will not reproduce an uninterrupted one.", UserWarning, stacklevel=user_stacklevel())
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
                UserWarning, stacklevel=user_stacklevel())
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
                              UserWarning, stacklevel=user_stacklevel())
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

    def _run_settings(self, scheduler: Any) -> dict[str, Any]:
        """What the fingerprint records besides the data and the method: classifier, optimizer, scheduler."""
        clf = self._classifier
        return {
            "lr": self._learning_rates(),
            "optimizer": [describe_setting({k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")})
                          for g in clf.optimizer.param_groups],
            "scheduler": None if scheduler is None else f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
            "classifier": {"loss": describe_setting(clf._loss), "clip_values": describe_setting(clf.clip_values),
                           "preprocessing": describe_setting(list(clf.preprocessing_operations)),
                           "input_shape": list(clf.input_shape), "nb_classes": clf.nb_classes},
        }

    def _learning_rates(self) -> list[float]:
        return [float(g["lr"]) for g in self._classifier.optimizer.param_groups if "lr" in g]
