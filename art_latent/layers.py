"""
Selection of hidden layers by qualified name, glob pattern, module type or the ``"auto"`` rule.

A *layer* is one call of a module of the model, named as in ``model.named_modules()`` (for example
``"block2.conv.1"``, the module's first call in a forward pass) or with a call index for a module called several
times (``"layer1.0.relu#1"``: its second call, see :mod:`art_latent.capture`); its *activation* is the tensor that
call returned.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from art_latent.capture import CallRecord, ModelTrace, split_ref, trace_model

logger = logging.getLogger(__name__)

LayerSpec = str | type | Sequence[str | type]

#: Modules that transform a conv/linear output element-wise or per channel; the "auto" rule extends a block over them.
_NORMALIZATION_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
#: The module types with weights that count as learnable layers (convolutions and linear layers).
LEARNABLE_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)


def _activation_types() -> tuple[type, ...]:
    """Every activation module class torch defines (ReLU, ELU, GELU, SiLU, Tanh, ...), attention excluded."""
    import torch.nn.modules.activation as act

    types = []
    for name in dir(act):
        obj = getattr(act, name)
        is_module = isinstance(obj, type) and issubclass(obj, nn.Module)
        if is_module and obj not in (nn.Module, nn.MultiheadAttention):
            types.append(obj)
    return tuple(types)


_ACTIVATION_TYPES = _activation_types()


def _is_leaf(module: nn.Module) -> bool:
    return next(iter(module.children()), None) is None


def _has_parameters(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is not None


#: Parameter-free, shape-preserving modules that are not activations.
_PASS_THROUGH_TYPES: tuple[type, ...] = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)


def is_activation(call: CallRecord) -> bool:
    """
    Whether a traced leaf call acts as an activation: any ``torch.nn`` activation class, or a parameter-free leaf
    module whose output has its input's shape other than identity/dropout (HF's ``GELUActivation`` and the other
    ``ACT2FN`` classes, user-written ``Swish`` modules).
    """
    module = call.module
    if isinstance(module, _ACTIVATION_TYPES):
        return True
    if not call.leaf or isinstance(module, _PASS_THROUGH_TYPES) or _has_parameters(module):
        return False
    return call.out_shape is not None and call.out_shape == call.in_shape


def is_normalization(call: CallRecord) -> bool:
    """Whether a traced call is a normalization layer (torch's classes, or a leaf whose class name has "Norm")."""
    module = call.module
    return isinstance(module, _NORMALIZATION_TYPES) or (call.leaf and "Norm" in type(module).__name__)


def trace_execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """
    Run `model` once on `example` and return the call references of the leaf modules in the order they executed.

    Runs under ``torch.no_grad()`` with the model in eval mode; modes and buffers are restored and the hooks removed
    on exit, also on exceptions. A module called twice (a shared activation) appears once per call: ``"relu"`` for
    its first call and ``"relu#1"`` for its second (see :mod:`art_latent.capture`).

    :param model: The network.
    :param example: An input batch the model accepts.
    :return: Call references of leaf modules in execution order.
    """
    return [call.ref for call in eval_trace(model, example).calls if call.leaf]


def eval_trace(model: nn.Module, example: torch.Tensor) -> ModelTrace:
    """:func:`art_latent.capture.trace_model` in eval mode (every module's mode restored)."""
    from art_latent.utils import preserve_mode

    with preserve_mode(model):
        model.eval()
        return trace_model(model, example)


def residual_blocks(trace: ModelTrace) -> list[int]:
    """
    Positions (in ``trace.calls``) of the residual blocks: the outermost calls of module classes of which at least
    one call adds its input, or a shortcut of it, to a tensor it computed (``out += identity``, ``x + f(x)``), and
    that contain a conv/linear module. A class counts as a whole, so a block whose shortcut is a projection (a
    downsampling ``BasicBlock``) or that skips the residual add (a strided ``InvertedResidual``) is a block too.

    :param trace: The trace of one forward pass.
    :return: Positions in execution order.
    """
    calls = trace.calls
    residual_types = {type(call.module) for call in calls if call.residual and not call.leaf}
    learnable_inside: set[int] = set()
    for position, call in enumerate(calls):
        if isinstance(call.module, LEARNABLE_TYPES):
            learnable_inside.update(trace.ancestors(position))
    candidates = {
        position for position, call in enumerate(calls)
        if type(call.module) in residual_types and position in learnable_inside and call.out_shape is not None
    }
    return [p for p in sorted(candidates) if not any(a in candidates for a in trace.ancestors(p))]


def auto_layers(model: nn.Module, example: torch.Tensor | None = None, trace: ModelTrace | None = None) -> list[str]:
    """
    The ``"auto"`` rule: every residual block's output, and the post-activation output of every other hidden
    conv/linear block; the logits are excluded.

    One forward pass is traced (:func:`art_latent.capture.trace_model`, eval mode). Then:

    1. **Residual blocks** (:func:`residual_blocks`: torchvision/timm ``BasicBlock``/``Bottleneck``, HF
       ``ResNetBasicLayer``, ``ConvNextLayer``, ``ViTLayer``, MobileNet's ``InvertedResidual``, a user module with
       ``x + f(x)``) are units: each gives one latent, the block's output (the first tensor of a tuple output).
    2. **Outside the blocks**, leaf modules are read in execution order: every ``Conv*d`` or ``Linear`` starts a
       block that extends over the normalization and activation calls directly after it, and the block's latent is
       the last of them: ``Conv -> BN -> ELU`` gives the ELU, ``Linear -> ReLU`` the ReLU, a bare ``Conv`` the conv
       itself. Activations are torch's activation classes and any parameter-free, shape-preserving leaf module other
       than identity/dropout (HF's ``GELUActivation``); a module called several times is a separate unit per call
       (``"act#1"``). Pooling, dropout, flatten or a new conv end the block.
    3. The block of the last conv/linear call (the logits) is excluded, whatever trails it.

    Activations applied functionally (``F.relu`` inside ``forward``) are not modules and cannot be hooked: outside a
    residual block the latent is then the module that feeds them (the pre-activation).

    :param model: The network.
    :param example: An input batch the model accepts (used for one traced forward pass).
    :param trace: A trace of the model (:func:`eval_trace`) to use instead of tracing `example`.
    :return: Call references in execution order; empty for a model with no hidden conv/linear layer.
    """
    if trace is None:
        if example is None:
            raise ValueError("auto_layers needs an example input (or a trace) to trace the model.")
        trace = eval_trace(model, example)
    calls = trace.calls
    blocks = residual_blocks(trace)
    in_block = set(blocks)
    for position in range(len(calls)):
        if any(a in blocks for a in trace.ancestors(position)):
            in_block.add(position)
    learnable = [p for p, call in enumerate(calls) if call.leaf and isinstance(call.module, LEARNABLE_TYPES)]
    if not learnable:
        return []
    logits = learnable[-1]
    logits_unit = next((a for a in trace.ancestors(logits) if a in blocks), logits)
    units = [p for p in range(len(calls)) if p in blocks or (calls[p].leaf and p not in in_block)]
    latents: list[int] = []
    start: int | None = None
    current: int | None = None

    def close() -> None:
        if current is not None and start != logits_unit:
            latents.append(current)

    for position in units:
        call = calls[position]
        if position in blocks:
            close()
            start = current = None
            if position != logits_unit:
                latents.append(position)
        elif isinstance(call.module, LEARNABLE_TYPES):
            close()
            start = current = position
        elif current is not None and (is_normalization(call) or is_activation(call)):
            current = position
        else:
            close()
            start = current = None
    close()
    refs = [calls[p].ref for p in latents]
    return list(dict.fromkeys(refs))


def resolve_layers(
    model: nn.Module,
    spec: LayerSpec,
    example: torch.Tensor | None = None,
    argument: str = "layers",
    trace: ModelTrace | None = None,
) -> list[str]:
    """
    Resolve a layer specification to a list of call references.

    :param model: The network.
    :param spec: ``"auto"`` (see :func:`auto_layers`), a qualified name from ``model.named_modules()``
                 (``"block2.conv.1"``, the module's first call in a forward pass), a call reference
                 (``"layer1.0.relu#1"``, its second call), a glob pattern (``"block*.conv.*.act"``), a module type
                 (``nn.ELU``) or a list mixing these. Names keep the order given; patterns and types expand in
                 ``named_modules`` order; duplicates are dropped.
    :param example: An input batch, needed for ``"auto"`` only (unless `trace` is given).
    :param argument: The name of the argument `spec` came from, for error messages.
    :param trace: A trace of the model (:func:`eval_trace`) for ``"auto"``.
    :return: Call references (a bare name for a first call).
    :raises ValueError: If a name matches no module, a pattern or type matches nothing, or the result is empty.
    """
    named = [name for name, _ in model.named_modules() if name]
    modules = dict(model.named_modules())
    items: Sequence[str | type]
    if isinstance(spec, (str, type)):
        items = [spec]
    elif isinstance(spec, Sequence):
        items = list(spec)
    else:
        raise ValueError(f"`{argument}` must be 'auto', a name, a pattern, a module type or a list, got {spec!r}.")
    if not items:
        raise ValueError(f"`{argument}` is empty: give 'auto', module names, glob patterns or module types.")
    result: list[str] = []
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, nn.Module):
                raise ValueError(f"`{argument}` type {item!r} is not a torch.nn.Module subclass.")
            matched = [n for n in named if isinstance(modules[n], item)]
            if not matched:
                raise ValueError(f"`{argument}` type {item.__name__} matches no module of the model.")
        elif isinstance(item, str):
            if item == "auto":
                if trace is None and example is None:
                    raise ValueError("layers='auto' needs an example input to trace the model.")
                matched = auto_layers(model, example, trace=trace)
            elif item in modules and item:
                matched = [item]
            elif any(ch in item for ch in "*?["):
                matched = fnmatch.filter(named, item)
                if not matched:
                    raise ValueError(f"`{argument}` pattern {item!r} matches no module name.")
            else:
                try:
                    name, index = split_ref(item)
                except ValueError as error:
                    raise ValueError(f"`{argument}`: {error}") from None
                if name in modules and name:
                    matched = [item if index else name]
                else:
                    close = difflib.get_close_matches(name, named, n=5, cutoff=0.6)
                    close += [n for n in named if (name in n or n.split(".")[-1] == name) and n not in close][:5]
                    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                    raise ValueError(
                        f"`{argument}`: unknown layer name {item!r}, not in model.named_modules().{hint} "
                        f"The model has {len(named)} named modules; see `LatentClassifier.module_names`."
                    )
        else:
            raise ValueError(f"`{argument}` entries must be str or module types, got {type(item).__name__}.")
        result.extend(matched)
    return list(dict.fromkeys(result))


def check_layer_spec(model: nn.Module, spec: LayerSpec, argument: str = "layers") -> None:
    """
    Check the names, patterns and types of a layer specification without running the model (``"auto"`` waits for
    data).

    :param model: The network.
    :param spec: A specification (see :func:`resolve_layers`).
    :param argument: The argument name for error messages.
    :raises ValueError: As :func:`resolve_layers`, for every entry but ``"auto"``.
    """
    items = [spec] if isinstance(spec, (str, type)) else spec
    if isinstance(items, Sequence) and not isinstance(items, str):
        explicit = [item for item in items if not (isinstance(item, str) and item == "auto")]
        if explicit or not items:
            resolve_layers(model, explicit, argument=argument)
    else:
        resolve_layers(model, spec, argument=argument)


def select_layers(
    model: nn.Module,
    layers: LayerSpec | int | Sequence[str | int | type],
    latent: Callable[[], list[str]],
    auto: Callable[[], list[str]],
    argument: str = "layers",
) -> list[str]:
    """
    Resolve a layer selection that may also hold indices into a classifier's resolved latent layers.

    :param model: The network.
    :param layers: A specification (see :func:`resolve_layers`), an int index into `latent`, or a list of these.
    :param latent: The resolved latent layers (called only for an index).
    :param auto: The layers of ``"auto"`` (called only when it is named).
    :param argument: The argument name for error messages.
    :return: Call references, in order, without duplicates.
    :raises TypeError: If an entry is not a str, int or type.
    :raises ValueError: If an index is out of range, or as :func:`resolve_layers`.
    """
    items = [layers] if isinstance(layers, (str, int, type)) else list(layers)
    modules = dict(model.named_modules())
    names = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, type)):
            raise TypeError(
                f"`{argument}`: layers are given by name or pattern (str), module type, or index into "
                f"latent_layers (int), got {item!r}."
            )
        if isinstance(item, type):
            names.extend(resolve_layers(model, item, argument=argument))
        elif item == "auto":
            names.extend(auto())
        elif isinstance(item, int):
            resolved = latent()
            if not -len(resolved) <= item < len(resolved):
                raise ValueError(
                    f"`{argument}`: layer index {item} out of range for {len(resolved)} latent layers "
                    f"(accepted: -{len(resolved)} to {len(resolved) - 1})."
                )
            names.append(resolved[item])
        elif item in modules and item:
            names.append(item)
        else:
            # a call reference, a glob pattern, or a clear ValueError
            names.extend(resolve_layers(model, item, argument=argument))
    return list(dict.fromkeys(names))
