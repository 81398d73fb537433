"""
Per-call access to module outputs.

A *call reference* names one call of a module in one forward pass: ``"layer1.0.relu"`` is the first call (call 0),
``"layer1.0.relu#1"`` the second. torchvision's ``BasicBlock`` calls one ``nn.ReLU(inplace=True)`` twice, so both
calls need a name.

:func:`trace_model` runs one forward pass without gradients and records every module call: its reference, the
enclosing call, whether the returned tensor was later modified in place (``out += identity``, an in-place ReLU), and
whether the call adds its own input to a computed tensor (a residual connection). :class:`CallHooks` registers forward
hooks that fire on chosen calls only; the estimator and the layerwise trainer build on it. :func:`record_outputs`
records the outputs of chosen calls with them, for one capture or with the hooks kept across captures.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

#: Separates a module name from its call index in a call reference.
CALL_SEP = "#"


def split_ref(ref: str) -> tuple[str, int]:
    """
    Split a call reference into the module name and the call index.

    :param ref: ``"name"`` (call 0) or ``"name#k"`` with ``k >= 0``.
    :return: ``(name, k)``.
    :raises ValueError: If the part after ``#`` is not a non-negative integer.
    """
    name, sep, index = ref.rpartition(CALL_SEP)
    if not sep:
        return ref, 0
    if not index.isdigit():
        raise ValueError(
            f"Layer reference {ref!r}: the part after '{CALL_SEP}' must be a call index >= 0 (e.g. "
            f"'{name}{CALL_SEP}1' for the second call of {name!r} in one forward pass)."
        )
    return name, int(index)


def make_ref(name: str, index: int) -> str:
    """The call reference of call `index` of module `name` (the bare name for call 0)."""
    return name if index == 0 else f"{name}{CALL_SEP}{index}"


def first_tensor(output: Any) -> torch.Tensor | None:
    """
    The tensor that stands for a module's output: the output itself, or the first tensor of a tuple, list, dict or
    HF ``ModelOutput`` (transformer blocks return ``(hidden_states, ...)``); ``None`` if there is none.
    """
    if isinstance(output, torch.Tensor):
        return output
    values: Any
    if isinstance(output, Mapping):
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    return None


def _input_tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


@dataclass
class CallRecord:
    """
    One module call seen by :func:`trace_model`.

    :param ref: The call reference (``"name"`` or ``"name#k"``).
    :param name: The qualified module name.
    :param index: The call index of the module in the forward pass.
    :param module: The module.
    :param parent: Position (in :attr:`ModelTrace.calls`) of the enclosing call, ``None`` at the top level.
    :param leaf: Whether the module has no children.
    :param out_shape: Shape of the output tensor (:func:`first_tensor`), ``None`` if the call returned none.
    :param in_shape: Shape of the first input tensor, ``None`` if there is none.
    :param inplace: The output tensor was modified in place after the module returned it.
    :param residual: The call added one of its inputs (or a shortcut of it) to a tensor it computed.
    """

    ref: str
    name: str
    index: int
    module: nn.Module
    parent: int | None
    leaf: bool
    out_shape: tuple[int, ...] | None = None
    in_shape: tuple[int, ...] | None = None
    inplace: bool = False
    residual: bool = False


@dataclass
class ModelTrace:
    """The calls of one forward pass, in the order they started (:func:`trace_model`)."""

    calls: list[CallRecord] = field(default_factory=list)

    @property
    def inplace_refs(self) -> set[str]:
        """The calls whose output is later modified in place (their capture must copy)."""
        return {call.ref for call in self.calls if call.inplace}

    def call_counts(self) -> dict[str, int]:
        """Module name -> number of calls in the forward pass."""
        counts: dict[str, int] = {}
        for call in self.calls:
            counts[call.name] = counts.get(call.name, 0) + 1
        return counts

    def ancestors(self, position: int) -> Iterator[int]:
        """Positions of the calls enclosing call `position`, innermost first."""
        parent = self.calls[position].parent
        while parent is not None:
            yield parent
            parent = self.calls[parent].parent


_ADD_FUNCS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
              torch.Tensor.__radd__}


class _Frame:
    """An active module call during the trace."""

    def __init__(self, position: int, inputs: list[torch.Tensor]) -> None:
        self.position = position
        self.inputs = inputs  # references keep the ids unique while the call is active
        self.raw_ids = {id(t) for t in inputs}
        self.shortcuts: list[torch.Tensor] = []
        self.shortcut_ids: set[int] = set()


class _ResidualWatcher(TorchFunctionMode):
    """Marks a call residual when it adds one of its inputs (or a child's result on them) to a computed tensor."""

    def __init__(self, stack: list[_Frame], trace: ModelTrace, constants: set[int]) -> None:
        super().__init__()
        self.stack, self.trace, self.constants = stack, trace, constants

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADD_FUNCS and len(args) >= 2:
            a, b = args[0], args[1]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                self._check(a, b)
        return func(*args, **kwargs)

    def _check(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.shape != b.shape or id(a) in self.constants or id(b) in self.constants:
            return
        for frame in reversed(self.stack):
            raw_a, raw_b = id(a) in frame.raw_ids, id(b) in frame.raw_ids
            short_a, short_b = id(a) in frame.shortcut_ids, id(b) in frame.shortcut_ids
            if not (raw_a or raw_b or short_a or short_b):
                continue
            # identity shortcut: an input plus something else; projection shortcut: a child's result on an input
            # plus a tensor that is neither an input nor such a result
            if (raw_a != raw_b) or ((short_a or raw_a) != (short_b or raw_b)):
                self.trace.calls[frame.position].residual = True
            return


def _module_constants(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}


@contextlib.contextmanager
def _state_preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restore buffers (BatchNorm statistics) and the RNG streams after a traced train-mode forward."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def trace_model(model: nn.Module, example: Any) -> ModelTrace:
    """
    Run one forward pass of `model` on `example` and record every module call (:class:`CallRecord`).

    Runs under ``torch.no_grad()`` in the model's current train/eval mode; buffers (BatchNorm running statistics) and
    the random number generators are restored afterwards, and every hook is removed, also on exceptions.

    :param model: The network.
    :param example: An input batch the model accepts.
    :return: The trace.
    """
    trace = ModelTrace()
    stack: list[_Frame] = []
    counts: dict[str, int] = {}
    outputs: list[tuple[int, torch.Tensor, int]] = []
    leaves = {name for name, module in model.named_modules() if next(iter(module.children()), None) is None}

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            index = counts.get(name, 0)
            counts[name] = index + 1
            inputs = _input_tensors(args, kwargs)
            record = CallRecord(make_ref(name, index), name, index, module, stack[-1].position if stack else None,
                                name in leaves, in_shape=tuple(inputs[0].shape) if inputs else None)
            trace.calls.append(record)
            stack.append(_Frame(len(trace.calls) - 1, inputs))

        return hook

    def post_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        frame = stack.pop()
        record = trace.calls[frame.position]
        tensor = first_tensor(output)
        if tensor is not None:
            record.out_shape = tuple(tensor.shape)
            outputs.append((frame.position, tensor, tensor._version))
            if stack and any(id(t) in stack[-1].raw_ids for t in frame.inputs):
                stack[-1].shortcuts.append(tensor)
                stack[-1].shortcut_ids.add(id(tensor))

    handles = []
    named = [(name, module) for name, module in model.named_modules() if name]
    device = example.device if isinstance(example, torch.Tensor) else torch.device("cpu")
    try:
        for name, module in named:
            handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        with _state_preserved(model, device), torch.no_grad(), \
                _ResidualWatcher(stack, trace, _module_constants(model)):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    for position, tensor, version in outputs:
        if tensor._version != version:
            trace.calls[position].inplace = True
    return trace


class CallHooks:
    """
    Forward hooks that fire on chosen calls of chosen modules, with the call counters reset at the start of every
    forward pass of the model.

    ``fn(ref, output)`` is called for each selected call; a non-``None`` return value replaces the module's output
    (used to perturb one call only). Use as a context manager: the hooks are removed on exit, also on exceptions.

    :param model: The network whose modules are hooked.
    :param refs: Call references (``"name"``, ``"name#k"``).
    :param fn: The hook body.
    :param roots: Modules whose forward pass starts a new count (default: `model`; the estimator adds ART's
                  ``ModelWrapper``, which calls the children of an ``nn.Sequential`` directly).
    :param on_end: Called with no argument when the outermost root call returns.
    """

    def __init__(
        self,
        model: nn.Module,
        refs: Sequence[str],
        fn: Callable[[str, Any], Any],
        roots: Sequence[nn.Module] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        self._wanted: dict[str, dict[int, str]] = {}
        for ref in refs:
            name, index = split_ref(ref)
            if name not in modules:
                raise ValueError(f"Layer {ref!r} is not in model.named_modules().")
            self._wanted.setdefault(name, {})[index] = ref
        self._modules = modules
        self._fn, self._on_end = fn, on_end
        self._roots = list(roots) if roots is not None else [model]
        self._counts: dict[str, int] = {}
        self._depth = 0
        self._handles: list[Any] = []

    def __enter__(self) -> CallHooks:
        try:
            for root in self._roots:
                self._handles.append(root.register_forward_pre_hook(self._start))
                self._handles.append(root.register_forward_hook(self._end, always_call=True))
            for name in self._wanted:
                self._handles.append(self._modules[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _start(self, _module: nn.Module, _inputs: Any) -> None:
        if self._depth == 0:
            self._counts = {}
        self._depth += 1

    def _end(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._on_end is not None:
            self._on_end()

    def _hook(self, name: str) -> Callable[..., Any]:
        wanted = self._wanted[name]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            index = self._counts.get(name, 0)
            self._counts[name] = index + 1
            ref = wanted.get(index)
            if ref is None:
                return None
            return self._fn(ref, output)

        return hook


#: Captured tensors that were not copied, with their version counter at capture time.
Versions = dict[str, tuple[torch.Tensor, int]]
#: Capture hooks kept registered across captures: layer names -> (hooks, their slot ``[store, versions]``).
KeptHooks = dict[tuple[str, ...], tuple[CallHooks, list[Any]]]


def recording_hook(slot: list[Any], needs_copy: Callable[[str], bool]) -> Callable[[str, Any], None]:
    """
    The body of capture hooks (:class:`CallHooks`) that record each selected call's output.

    :param slot: ``[store, versions]`` of the capture in progress, or ``[None, None]`` between captures (the hook
                 then records nothing). ``store`` maps call references to outputs; ``versions`` receives the version
                 counter of every output that is not copied.
    :param needs_copy: Whether the output of a call reference must be copied (later code modifies it in place).
    :return: The hook body ``fn(ref, output)``.
    :raises TypeError: (from the hook) If a selected call returns no tensor.
    """

    def record(ref: str, output: Any) -> None:
        store, versions = slot
        if store is None:
            return
        tensor = first_tensor(output)
        if tensor is None:
            raise TypeError(f"Layer {ref!r} returned {type(output).__name__}, which holds no tensor.")
        if needs_copy(ref):
            tensor = tensor.clone()
        else:
            versions[ref] = (tensor, tensor._version)
        store[ref] = tensor

    return record


@contextlib.contextmanager
def record_outputs(
    model: nn.Module,
    refs: list[str],
    needs_copy: Callable[[str], bool],
    roots: Sequence[nn.Module] | None = None,
    kept: KeptHooks | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], Versions]]:
    """
    Record the outputs of calls `refs` while the block runs: every forward pass fills the yielded store.

    :param model: The network.
    :param refs: Call references.
    :param needs_copy: Whether an output must be copied (see :func:`recording_hook`).
    :param roots: Modules whose forward pass starts a new call count (see :class:`CallHooks`).
    :param kept: Hooks kept registered across captures (``None``: hooks are registered for this block and removed on
                 exit). Hooks for `refs` are added to it when missing and stay registered; the caller removes them.
    :return: ``(store, versions)``: call reference -> output, and the version counters of the outputs not copied.
    """
    store: dict[str, torch.Tensor] = {}
    versions: Versions = {}
    if kept is None:
        with CallHooks(model, refs, recording_hook([store, versions], needs_copy), roots=roots):
            yield store, versions
        return
    key = tuple(refs)
    if key not in kept:
        slot: list[Any] = [None, None]
        hooks = CallHooks(model, refs, recording_hook(slot, needs_copy), roots=roots)
        hooks.__enter__()
        kept[key] = (hooks, slot)
    slot = kept[key][1]
    outer = list(slot)
    slot[:] = [store, versions]
    try:
        yield store, versions
    finally:
        slot[:] = outer
