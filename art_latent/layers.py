"""
Selection of hidden layers by qualified name, glob pattern, module type or the ``"auto"`` rule.

A *layer* is a module of the model, named as in ``model.named_modules()`` (for example ``"block2.conv.1"``); its
*activation* is the tensor the module returns in the forward pass.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Sequence

import torch
from torch import nn

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
_LEARNABLE_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)


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


def trace_execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """
    Run `model` once on `example` and return the names of the leaf modules in the order they executed.

    Runs under ``torch.no_grad()`` with the model in eval mode; the mode of every module is restored and the hooks
    are removed on exit, also on exceptions. A module called twice (a shared activation) is listed once, at its
    first call.

    :param model: The network.
    :param example: An input batch the model accepts.
    :return: Qualified names of leaf modules in execution order.
    """
    from art_latent.utils import preserve_mode

    order: list[str] = []
    seen: set[str] = set()
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, _output):
            if name not in seen:
                seen.add(name)
                order.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name and _is_leaf(module):
                handles.append(module.register_forward_hook(make_hook(name)))
        with preserve_mode(model), torch.no_grad():
            model.eval()
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def auto_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """
    The ``"auto"`` rule: the post-activation output of every hidden conv/linear block, logits excluded.

    The leaf modules are listed in execution order (one traced forward pass). Every ``Conv*d`` or ``Linear`` starts a
    block; the block extends over the normalization (BatchNorm, GroupNorm, LayerNorm, InstanceNorm) and activation
    modules (any ``torch.nn`` activation class) that execute directly after it, and the block's layer is the last
    of them: ``Conv -> BN -> ELU`` gives the ELU, ``Linear -> ReLU`` the ReLU, a bare ``Conv`` the conv itself.
    Anything else (pooling, dropout, flatten, a new conv) ends the block. The last conv/linear block to execute
    produces the logits and is excluded. Activations applied functionally (``F.relu`` inside ``forward``) are not
    modules and cannot be hooked: the block then ends at the module that feeds them.

    :param model: The network.
    :param example: An input batch the model accepts (used for one traced forward pass).
    :return: Qualified module names, in execution order.
    """
    modules = dict(model.named_modules())
    order = trace_execution_order(model, example)
    blocks: list[str] = []
    current: str | None = None
    for name in order:
        module = modules[name]
        if isinstance(module, _LEARNABLE_TYPES):
            if current is not None:
                blocks.append(current)
            current = name
        elif current is not None and isinstance(module, _NORMALIZATION_TYPES + _ACTIVATION_TYPES):
            current = name
        elif current is not None:
            blocks.append(current)
            current = None
    if current is not None:
        blocks.append(current)
    learnable_order = [n for n in order if isinstance(modules[n], _LEARNABLE_TYPES)]
    if not learnable_order:
        raise ValueError("layers='auto' found no Conv or Linear module in the model's forward pass.")
    logits_module = learnable_order[-1]
    # The block that starts at the logits module is dropped, whatever trails it.
    hidden = []
    for block in blocks:
        start = _block_start(order, modules, block)
        if start != logits_module:
            hidden.append(block)
    deduped = list(dict.fromkeys(hidden))
    if not deduped:
        raise ValueError("layers='auto' found no hidden conv/linear block (only the logits layer).")
    return deduped


def _block_start(order: list[str], modules: dict[str, nn.Module], block_end: str) -> str:
    index = order.index(block_end)
    while not isinstance(modules[order[index]], _LEARNABLE_TYPES):
        index -= 1
    return order[index]


def resolve_layers(
    model: nn.Module, spec: LayerSpec, example: torch.Tensor | None = None, argument: str = "layers"
) -> list[str]:
    """
    Resolve a layer specification to a list of qualified module names.

    :param model: The network.
    :param spec: ``"auto"`` (see :func:`auto_layers`), a qualified name from ``model.named_modules()``
                 (``"block2.conv.1"``), a glob pattern (``"block*.conv.*.act"``), a module type (``nn.ELU``) or a
                 list mixing these. Names keep the order given; patterns and types expand in ``named_modules`` order;
                 duplicates are dropped.
    :param example: An input batch, needed for ``"auto"`` only.
    :param argument: The name of the argument `spec` came from, for error messages.
    :return: Qualified module names.
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
                if example is None:
                    raise ValueError("layers='auto' needs an example input to trace the model.")
                matched = auto_layers(model, example)
            elif item in modules and item:
                matched = [item]
            elif any(ch in item for ch in "*?["):
                matched = fnmatch.filter(named, item)
                if not matched:
                    raise ValueError(f"`{argument}` pattern {item!r} matches no module name.")
            else:
                close = difflib.get_close_matches(item, named, n=5, cutoff=0.6)
                close += [n for n in named if (item in n or n.split(".")[-1] == item) and n not in close][:5]
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"`{argument}`: unknown layer name {item!r}, not in model.named_modules().{hint} "
                    f"The model has {len(named)} named modules; see `LatentClassifier.layer_names`."
                )
        else:
            raise ValueError(f"`{argument}` entries must be str or module types, got {type(item).__name__}.")
        result.extend(matched)
    return list(dict.fromkeys(result))
