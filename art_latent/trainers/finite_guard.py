"""
The deferred finite check of the training loop: NaN/inf in a step's loss terms or gradients stops training with the
last good state, without a host read of the device per step.

The immediate check (``check_finite="immediate"``, the default on the CPU) reads each step's flags on the host
before the step, which on an accelerator synchronises the device once per step. The deferred check
(``check_finite="deferred"``, the default on accelerators) keeps the flags on the device:

* a step whose flags are bad, and every step after it, is *undone on the device*: the optimizer's parameters and its
  state tensors are put back with ``torch.where`` from copies taken just before the step (state the undone steps
  created is dropped at the read), and the trained modules' buffers (BatchNorm statistics, spectral-norm vectors)
  from the copy taken at the start of the batch, or, when earlier steps of the failing batch were taken, from the
  copy taken at the failing step;
* the flags are read on the host every ``log_every`` steps and at the end of the epoch (one read for all of them);
  the first bad step found is reported with its epoch, batch and terms, host-side optimizer state (torch's CPU
  ``step`` counters) is put back to what it was before that step, and the loop raises as the immediate check would.

So the model, the optimizers' state and the BatchNorm statistics end exactly where the immediate check leaves them.
The trade-off: the steps between the failure and the read still run (frozen), so random-number streams and
per-batch method caches (layerwise training's previous-batch gradients) may be up to ``log_every - 1`` steps further
on, and the error comes up to ``log_every - 1`` steps later (the flags are also read before per-step loggers log and
when another exception ends the epoch, so neither sees a frozen step nor hides the divergence). Memory: one more
copy of the parameters and of the optimizer's device state (about three times the parameters' size with Adam). The
first step of each optimizer in a ``fit`` is checked immediately: its state tensors do not exist before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FailedStep:
    """Where the first non-finite step was: the names of its bad terms and its position in the run."""

    terms: list[str]
    epoch: int
    batch: int
    call: int
    global_step: int


@dataclass
class _Entry:
    flags: torch.Tensor
    names: list[str]
    position: tuple[int, int, int, int]  # epoch, batch, call within the batch, global step before the batch
    optimizer: torch.optim.Optimizer
    host_state: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    #: Parameters without optimizer state before this step: an undone step must not leave the state it created.
    fresh: list[torch.Tensor] = field(default_factory=list)


class DeferredFiniteGuard:
    """
    Keeps a run's finite flags on the device and undoes, on the device, every optimizer step from the first bad one
    on (see the module docstring).

    :param device: The device of the flags (the trainer's).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self._pending: list[_Entry] = []
        self._seen: set[int] = set()
        self._shadows: dict[int, list[torch.Tensor]] = {}
        self._restore_buffers = torch.zeros((), dtype=torch.bool, device=device)
        #: The trained modules' buffers as the failing call left them (its forward pass moved them; later calls of
        #: the same batch, which the immediate check never runs, must not).
        self._failed_buffers: list[torch.Tensor] | None = None

    def first_step(self, optimizer: torch.optim.Optimizer) -> bool:
        """
        Whether this is `optimizer`'s first step in this run (to be checked immediately); marks it as seen.

        :param optimizer: The optimizer about to step.
        :return: ``True`` the first time.
        """
        if id(optimizer) in self._seen:
            return False
        self._seen.add(id(optimizer))
        return True

    def start_batch(self) -> None:
        """Before a batch: its buffers are restored at its end when the run had already failed before it."""
        self._restore_buffers = self.bad.clone()

    def _is_device_state(self, value: Any) -> bool:
        # 0-dim CPU tensors (torch's ``step`` counters) are host state: restored from a host copy at the read.
        return (isinstance(value, torch.Tensor) and value.device == self.device
                and not (value.device.type == "cpu" and value.ndim == 0))

    def step(self, optimizer: torch.optim.Optimizer, flags: torch.Tensor, names: list[str],
             position: tuple[int, int, int, int], buffers: list[torch.Tensor]) -> None:
        """
        Record the step's flags and take the step, undone on the device when it or an earlier step was bad.

        :param optimizer: The optimizer to step.
        :param flags: ``(len(names),)`` on the device, positive where a term is not finite.
        :param names: The terms' names.
        :param position: ``(epoch, batch, call within the batch, global step before the batch)``.
        :param buffers: The trained modules' buffers (BatchNorm statistics, spectral-norm vectors) as they are now.
        """
        newly = flags.gt(0).any() & ~self.bad
        if position[2] == 0:  # nothing of this batch was stepped yet: its BatchNorm statistics are rolled back too
            self._restore_buffers = self._restore_buffers | newly
        with torch.no_grad():
            if self._failed_buffers is None or [b.shape for b in self._failed_buffers] != [b.shape for b in buffers]:
                self._failed_buffers = [b.detach().clone() for b in buffers]
            else:
                for kept, buffer in zip(self._failed_buffers, buffers, strict=True):
                    kept.copy_(torch.where(newly, buffer, kept))
        self.bad = self.bad | newly
        entry = _Entry(flags, names, position, optimizer)
        targets: list[torch.Tensor] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                targets.append(param.data)
                if not optimizer.state.get(param):
                    entry.fresh.append(param)
                for key, value in optimizer.state.get(param, {}).items():
                    if self._is_device_state(value):
                        targets.append(value)
                    else:
                        state = optimizer.state[param]
                        entry.host_state.append((state, key, value.clone() if isinstance(value, torch.Tensor)
                                                 else value))
        self._pending.append(entry)
        shadows = self._shadows.get(id(optimizer))
        if shadows is None or [s.shape for s in shadows] != [t.shape for t in targets] \
                or [s.dtype for s in shadows] != [t.dtype for t in targets]:
            shadows = self._shadows[id(optimizer)] = [t.detach().clone() for t in targets]
        else:
            torch._foreach_copy_(shadows, targets)
        optimizer.step()
        with torch.no_grad():
            for target, shadow in zip(targets, shadows, strict=True):
                target.copy_(torch.where(self.bad, shadow, target))

    def end_batch(self, buffers: list[torch.Tensor], saved: list[torch.Tensor] | None) -> None:
        """
        After a batch: put its buffers back to their copy from the batch start when the run has failed before any
        of its steps was taken.

        :param buffers: The trained modules' buffers.
        :param saved: Their copies from the start of the batch.
        """
        if saved is None:
            return
        failed = self._failed_buffers if self._failed_buffers is not None else saved
        with torch.no_grad():
            for buffer, copy, at_failure in zip(buffers, saved, failed, strict=True):
                buffer.copy_(torch.where(self._restore_buffers, copy, torch.where(self.bad, at_failure, buffer)))

    def read(self) -> FailedStep | None:
        """
        Read the pending flags on the host (one synchronisation); on a failure, restore the optimizers' host state to
        what it was before their first undone step.

        :return: The first failed step, or ``None``.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return None
        sizes = [len(entry.names) for entry in pending]
        flat = torch.cat([entry.flags.reshape(-1).float() for entry in pending]).tolist()
        offset = 0
        for index, (entry, size) in enumerate(zip(pending, sizes, strict=True)):
            found = [name for name, value in zip(entry.names, flat[offset:offset + size], strict=True) if value > 0]
            offset += size
            if found:
                restored: set[int] = set()
                for later in pending[index:]:
                    if id(later.optimizer) not in restored:
                        restored.add(id(later.optimizer))
                        for state, key, value in later.host_state:
                            state[key] = value
                        for param in later.fresh:  # state the undone steps created
                            later.optimizer.state.pop(param, None)
                epoch, batch, call, global_step = entry.position
                return FailedStep(found, epoch, batch, call, global_step)
        return None
