"""
:class:`LatentClassifier`: ART's ``PyTorchClassifier`` with differentiable access to named hidden layers.

The class is here; what it builds on has its own modules: :mod:`art_latent.model_output` (where the logits are in a
model output), :mod:`art_latent.capture` (call references, the traced forward pass, recording layer outputs with
hooks) and :mod:`art_latent.layers` (resolving a layer specification).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from art.estimators.classification.pytorch import PyTorchClassifier

from art_latent.capture import KeptHooks, ModelTrace, Versions, record_outputs, split_ref, trace_model
from art_latent.layers import LayerSpec, check_layer_spec, resolve_layers, select_layers
from art_latent.model_output import OutputKey, check_output, logits_wrapper_class, select_logits
from art_latent.utils import preserve_mode

#: The number of samples of the first batch that a traced forward pass runs on.
_TRACE_SAMPLES = 4

logger = logging.getLogger(__name__)


class LatentClassifier(PyTorchClassifier):
    """
    A :class:`~art.estimators.classification.PyTorchClassifier` that exposes named hidden layers.

    Everything ART does with a ``PyTorchClassifier`` (``predict``, ``fit``, ``loss_gradient``, ``get_activations``,
    attacks, metrics, ``save``, ``clone_for_refitting``) works unchanged, with ART's meaning. On top of it:

    * :attr:`latent_layers` — the hidden layers a latent defense regularizes, resolved from ``layers`` at first use;
    * :meth:`forward_with_latents` — **one** forward pass returning the logits and the activations of those layers,
      differentiable w.r.t. the input and the parameters, through ART's preprocessing, in the model's current
      train/eval mode;
    * :meth:`latents` — the context manager that registers the forward hooks and always removes them;
    * :meth:`get_activations` — ART's method, also accepting any qualified module name or call reference, without
      leaking hooks or leaving the model in eval mode.

    A layer is one *call* of a module: ``"layer1.0.relu"`` is its first call in a forward pass, ``"layer1.0.relu#1"``
    its second (torchvision's ``BasicBlock`` calls one ReLU twice). A captured activation is what the module returned
    at that call, even when later code modifies the tensor in place (``out += identity``, ``nn.ReLU(inplace=True)``):
    one traced forward pass per train/eval mode finds those calls, and only their outputs are copied.

    The model's ``forward`` returns the logits as one tensor, or, with `output_key` / `logits_fn`, an output they are
    picked from (a tuple, dict or HF ``ModelOutput``).
    """

    estimator_params = PyTorchClassifier.estimator_params + ["layers", "output_key", "logits_fn"]

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss,
        input_shape: tuple[int, ...],
        nb_classes: int,
        optimizer: torch.optim.Optimizer | None = None,
        use_amp: bool = False,
        opt_level: str = "O1",
        loss_scale: float | str | None = "dynamic",
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        layers: LayerSpec = "auto",
        output_key: OutputKey | None = None,
        logits_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        """
        Create a classifier; every argument but `layers`, `output_key` and `logits_fn` is ``PyTorchClassifier``'s.

        :param model: PyTorch model whose ``forward`` returns logits (or an output `output_key` / `logits_fn` picks
                      them from).
        :param loss: The loss used for training and loss gradients (labels as class indices).
        :param input_shape: The shape of one input sample, e.g. ``(1, 28, 28)``.
        :param nb_classes: The number of classes.
        :param optimizer: The optimizer the trainers step.
        :param use_amp: ART's apex option (kept for signature compatibility).
        :param opt_level: ART's apex option.
        :param loss_scale: ART's apex option.
        :param channels_first: Set channels first or last.
        :param clip_values: ``(min, max)`` of valid input values.
        :param preprocessing_defences: ART preprocessing defence(s) applied before the model.
        :param postprocessing_defences: ART postprocessing defence(s).
        :param preprocessing: ``(subtrahend, divisor)`` standardisation applied before the model.
        :param device_type: ``"gpu"`` (uses CUDA when available) or ``"cpu"``.
        :param layers: Hidden layers exposed as :attr:`latent_layers`: ``"auto"`` (default, see
                       :func:`art_latent.layers.auto_layers`: every residual block's output and the post-activation
                       output of every other hidden conv/linear block, logits excluded), qualified names from
                       ``model.named_modules()``, call references (``"layer1.0.relu#1"``), glob patterns
                       (``"block*.conv.*"``), module types (``torch.nn.ELU``) or a list of these. ``"auto"`` is
                       resolved at first use, on the first batch the classifier sees (or a zeros batch of
                       `input_shape`); names are checked here.
        :param output_key: Where the logits are in a model output that is not a tensor: a key of a dict or HF
                           ``ModelOutput`` (``"logits"``) or an index into a tuple (``0``).
        :param logits_fn: A function from the model output to the logits tensor (instead of `output_key`).
        :raises TypeError: If `model` is not a ``torch.nn.Module``, or `output_key` / `logits_fn` have the wrong type.
        :raises ValueError: If `layers` names no module of the model, or both `output_key` and `logits_fn` are given.
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self._output_key, self._logits_fn = check_output(output_key, logits_fn)
        self._traces: dict[bool, ModelTrace] = {}
        self._forced_copies: set[str] = set()
        #: Capture hooks kept registered by :meth:`keep_hooks`: layer names -> (hooks, the armed store and versions).
        self._kept: KeptHooks | None = None
        self._layers: LayerSpec = layers
        self._latent_layers: list[str] | None = None
        #: The layers the last latent trainer regularized (set by its ``fit``); the latent attack's default.
        self.regularized_layers: list[str] = []
        super().__init__(
            model=model,
            loss=loss,
            input_shape=input_shape,
            nb_classes=nb_classes,
            optimizer=optimizer,
            use_amp=use_amp,
            opt_level=opt_level,
            loss_scale=loss_scale,
            channels_first=channels_first,
            clip_values=clip_values,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
            preprocessing=preprocessing,
            device_type=device_type,
        )
        check_layer_spec(self.model, layers)

    @classmethod
    def from_classifier(cls, classifier: PyTorchClassifier, layers: LayerSpec = "auto", **kwargs: Any
                        ) -> LatentClassifier:
        """
        Wrap an existing ART ``PyTorchClassifier`` (same model object, optimizer, preprocessing and defences).

        :param classifier: The ART classifier.
        :param layers: See :class:`LatentClassifier`.
        :param kwargs: ``output_key`` or ``logits_fn``, see :class:`LatentClassifier`.
        :return: A new :class:`LatentClassifier` sharing the model and optimizer of `classifier`.
        :raises TypeError: If `classifier` is not a ``PyTorchClassifier``.
        """
        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(
                f"`classifier` must be an ART PyTorchClassifier, got {type(classifier).__name__}; "
                "art_latent defends PyTorch models only."
            )
        return cls(
            classifier.model,
            classifier._loss,
            classifier.input_shape,
            classifier.nb_classes,
            optimizer=classifier._optimizer,
            channels_first=classifier.channels_first,
            clip_values=classifier.clip_values,
            preprocessing_defences=classifier.preprocessing_defences,
            postprocessing_defences=classifier.postprocessing_defences,
            preprocessing=classifier.preprocessing,
            device_type="cpu" if classifier.device.type == "cpu" else "gpu",
            layers=layers,
            **kwargs,
        )

    # ------------------------------------------------------------------ logits

    @property
    def output_key(self) -> OutputKey | None:
        """The key or index that picks the logits out of the model output (``None``: the output is the logits)."""
        return self._output_key

    @output_key.setter
    def output_key(self, value: OutputKey | None) -> None:
        self._output_key, _ = check_output(value, None if value is not None else self._logits_fn)

    @property
    def logits_fn(self) -> Callable[[Any], torch.Tensor] | None:
        """The function that maps the model output to the logits (``None``: not used)."""
        return self._logits_fn

    @logits_fn.setter
    def logits_fn(self, value: Callable[[Any], torch.Tensor] | None) -> None:
        _, self._logits_fn = check_output(None if value is not None else self._output_key, value)

    def select_logits(self, output: Any) -> torch.Tensor:
        """
        The logits in a model output, picked with `output_key` / `logits_fn`.

        :param output: What the model's ``forward`` returned.
        :return: The logits tensor.
        :raises TypeError: If the output is not a tensor and neither `output_key` nor `logits_fn` says where the
                           logits are, or they do not lead to a tensor.
        :raises ValueError: If the number of logits is not `nb_classes`.
        """
        return select_logits(output, self._output_key, self._logits_fn, self.nb_classes)

    def model_logits(self, x_preprocessed: torch.Tensor) -> torch.Tensor:
        """
        The logits of the model on already preprocessed inputs (one forward pass, no hooks of this classifier).

        :param x_preprocessed: Model inputs, after ART's preprocessing.
        :return: The logits.
        """
        return self.select_logits(self.model(x_preprocessed))

    def _make_model_wrapper(self, model: torch.nn.Module) -> torch.nn.Module:
        # ART's ModelWrapper returns [output] and ART reads [-1]; ours picks the logits there (and says clearly when
        # a tuple / ModelOutput arrives without output_key), so every ART code path sees a tensor.
        wrapper = super()._make_model_wrapper(model)
        cls = getattr(self, "_logits_wrapper", None)
        if cls is None or cls.__base__ is not type(wrapper):
            cls = logits_wrapper_class(type(wrapper), self.select_logits)
            self._logits_wrapper = cls
        wrapper.__class__ = cls
        return wrapper

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_logits_wrapper", None)
        state["_traces"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_output_key", None)
        state.setdefault("_logits_fn", None)
        state.setdefault("_traces", {})
        state.setdefault("_forced_copies", set())
        state.setdefault("regularized_layers", [])
        super().__setstate__(state)

    # ------------------------------------------------------------------ layers

    def _preprocess_example(self, x: torch.Tensor) -> torch.Tensor:
        if self.all_framework_preprocessing:
            x_pre, _ = self._apply_preprocessing(x, y=None, fit=False, no_grad=True)
            return x_pre
        x_np, _ = self._apply_preprocessing(x.detach().cpu().numpy(), y=None, fit=False)
        return torch.as_tensor(np.asarray(x_np, dtype=np.float32), device=self._device)

    def _example_input(self) -> torch.Tensor:
        """A zeros batch of `input_shape`, in input space (before preprocessing)."""
        return torch.zeros((2, *self.input_shape), dtype=torch.float32, device=self._device)

    def trace(self, x_preprocessed: torch.Tensor | None = None, training: bool | None = None) -> ModelTrace:
        """
        The traced forward pass of the model in a train/eval mode (:func:`art_latent.capture.trace_model`), made once
        per mode on the first inputs seen (at most 4 samples; no gradients; BatchNorm statistics and RNG restored).

        :param x_preprocessed: Model inputs (after preprocessing) to trace on if no trace exists yet; default: a zeros
                               batch of `input_shape`.
        :param training: The mode (default: the model's current mode).
        :return: The trace.
        :raises RuntimeError: If the model cannot run on the example.
        """
        mode = self.model.training if training is None else training
        found = self._traces.get(mode)
        if found is not None:
            return found
        example = self._preprocess_example(self._example_input()) if x_preprocessed is None else x_preprocessed
        example = example[:_TRACE_SAMPLES].detach()
        try:
            with preserve_mode(self.model):
                self.model.train(mode)
                traced = trace_model(self.model, example)
        except Exception as error:
            source = "a zeros batch of input_shape" if x_preprocessed is None else "the first batch"
            raise RuntimeError(
                f"Could not trace the model on {source} (shape {tuple(example.shape)}) to find its layers: {error}. "
                "Pass `layers` as explicit names, or call forward_with_latents on real inputs first."
            ) from error
        self._traces[mode] = traced
        return traced

    def _resolve(self, spec: LayerSpec, x_preprocessed: torch.Tensor | None = None) -> list[str]:
        needs_trace = spec == "auto" or (not isinstance(spec, (str, type)) and "auto" in list(spec))
        trace = self.trace(x_preprocessed, training=False) if needs_trace else None
        return resolve_layers(self.model, spec, trace=trace)

    def _ensure_layers(self, x_preprocessed: torch.Tensor | None = None) -> list[str]:
        if self._latent_layers is None:
            self._latent_layers = self._resolve(self._layers, x_preprocessed)
            if not self._latent_layers:
                logger.info("layers=%r found no hidden layer in the model.", self._layers)
        return self._latent_layers

    @property
    def layers(self) -> LayerSpec:
        """The layer specification this classifier was built with (see :class:`LatentClassifier`)."""
        return self._layers

    @layers.setter
    def layers(self, spec: LayerSpec) -> None:
        check_layer_spec(self.model, spec)
        self._layers = spec
        self._latent_layers = None

    @property
    def latent_layers(self) -> list[str]:
        """
        The resolved hidden layers (call references), in order. ``"auto"`` is resolved on the first batch seen, or
        on a zeros batch of `input_shape` when this is read first; empty for a model without hidden layers.
        """
        return list(self._ensure_layers())

    def require_latent_layers(self, layers: LayerSpec | int | Sequence[str | int | type] | None = None,
                              argument: str = "layers") -> list[str]:
        """
        The layers a latent method regularizes, refusing an empty list with a clear error.

        :param layers: A specification (see :meth:`forward_with_latents`); default: :attr:`latent_layers`.
        :param argument: The argument name for the error message.
        :return: Call references.
        :raises ValueError: If there is no layer.
        """
        names = self.layer_refs(layers, argument=argument)
        if not names:
            raise ValueError(
                f"`{argument}`: the model has no hidden layer to regularize (layers={self._layers!r} found none); "
                "name the layers explicitly."
            )
        return names

    @property
    def module_names(self) -> list[str]:
        """Every qualified module name of the model (``model.named_modules()``, the root excluded)."""
        return [name for name, _ in self.model.named_modules() if name]

    def layer_refs(
        self,
        layers: LayerSpec | int | Sequence[str | int | type] | None = None,
        argument: str = "layers",
        x_preprocessed: torch.Tensor | None = None,
    ) -> list[str]:
        """
        The call references a layer selection names (possibly empty; :meth:`require_latent_layers` refuses that).

        :param layers: A specification (see :meth:`forward_with_latents`; ``"auto"`` is resolved on this model
                       whatever the classifier's own `layers`); default: :attr:`latent_layers`.
        :param argument: The argument name for error messages.
        :param x_preprocessed: A preprocessed batch for resolving ``"auto"``, and the classifier's own `layers` when
                               they are first needed (default or an int index); default: zeros of `input_shape`.
        :return: Call references, in order, without duplicates.
        """
        if layers is None:
            return list(self._ensure_layers(x_preprocessed))
        return select_layers(self.model, layers, latent=lambda: self._ensure_layers(x_preprocessed),
                             auto=lambda: self._resolve("auto", x_preprocessed), argument=argument)

    # ----------------------------------------------------------------- forward

    def needs_copy(self, ref: str) -> bool:
        """
        Whether a capture of `ref` must be copied: a traced forward pass showed that later code modifies its output in
        place (or no trace of the current mode exists yet, or a data-dependent in-place change was seen).
        """
        trace = self._traces.get(self.model.training)
        return trace is None or ref in trace.inplace_refs or ref in self._forced_copies

    @contextlib.contextmanager
    def latents(self, layers: str | int | Sequence[str | int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """
        Register forward hooks that record the outputs of `layers`; the hooks are removed on exit, also on exceptions.

        Inside the block, every forward pass of the model fills the yielded dict (call reference -> output tensor;
        each forward pass starts the call counts anew). Outputs are copied where a traced forward pass showed that
        later code modifies them in place, or when no trace of the current mode exists yet.

        :param layers: Names, call references (or indices into :attr:`latent_layers`); default: :attr:`latent_layers`.
        :return: The dict that the hooks fill.
        """
        with self._hooked(self.layer_refs(layers)) as (store, _):
            yield store

    @contextlib.contextmanager
    def keep_hooks(self) -> Iterator[None]:
        """
        Keep the capture hooks registered while the block runs, instead of registering and removing them at every
        :meth:`forward_with_latents` (the trainers' ``fit`` does this: hooks are registered once per ``fit``). Outside
        a capture the kept hooks only count calls; they are all removed on exit, also on exceptions.
        """
        if self._kept is not None:  # nested: the outer block keeps them
            yield
            return
        self._kept = {}
        try:
            yield
        finally:
            kept, self._kept = self._kept, None
            for hooks, _slot in kept.values():
                hooks.remove()

    @contextlib.contextmanager
    def _hooked(self, names: list[str]) -> Iterator[tuple[dict[str, torch.Tensor], Versions]]:
        with record_outputs(self.model, names, self.needs_copy, roots=[self.model, self._model],
                            kept=self._kept) as recorded:
            yield recorded

    def forward_with_latents(
        self, x: torch.Tensor, layers: str | int | Sequence[str | int] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """
        One forward pass returning the logits and the hidden activations.

        Differentiable w.r.t. `x` and the parameters; ART's preprocessing (standardisation and PyTorch preprocessing
        defences) is applied first, as in ``loss_gradient``. Runs in the model's current train/eval mode and does not
        change it. Each activation is what its module returned at that call, whatever the model does to the tensor
        in place afterwards.

        :param x: Input batch (a tensor on :attr:`device`, in input space, shape ``(n, *input_shape)``).
        :param layers: Names, call references (or indices into :attr:`latent_layers`); default: :attr:`latent_layers`.
        :return: ``(logits, activations)`` with ``activations`` a dict call reference -> tensor in the order of
                 `layers`.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}; use get_activations for numpy.")
        if self.all_framework_preprocessing:
            x_pre, _ = self._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        else:  # numpy preprocessing defences (ART's SpatialSmoothing, ...): not differentiable, as in ART
            x_pre = self._preprocess_example(x)
        names = self.layer_refs(layers, x_preprocessed=x_pre)
        if names:
            self.trace(x_pre)  # once per mode: which captures must be copied
        for _attempt in range(2):
            with self._hooked(names) as (store, versions):
                logits = self.model_logits(x_pre)
            modified = [ref for ref, (tensor, version) in versions.items() if tensor._version != version]
            if not modified:
                break
            # The traced forward did not show this (data-dependent in-place code): copy from now on and redo it.
            logger.warning("Layers %s were modified in place after their module returned, which the traced forward "
                           "pass did not show; they are copied from now on and this forward pass is repeated.",
                           modified)
            self._forced_copies.update(modified)
        missing = [name for name in names if name not in store]
        if missing:
            calls = self._traces.get(self.model.training)
            counts = calls.call_counts() if calls is not None else {}
            detail = ", ".join(f"{ref!r} (module called {counts.get(split_ref(ref)[0], 0)} times)" for ref in missing)
            raise RuntimeError(f"Layers {detail} did not run in the forward pass; they cannot be regularized.")
        return logits, {name: store[name] for name in names}

    def get_activations(
        self,
        x: np.ndarray | torch.Tensor,
        layer: int | str | None = None,
        batch_size: int = 128,
        framework: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """
        Return the output of `layer` for input `x`, computed in eval mode; the model's mode is restored afterwards.

        :param x: Input samples (numpy or tensor).
        :param layer: As in ART: an index into :attr:`layer_names` or one of its names; also any qualified name from
                      ``model.named_modules()`` or a call reference (``"layer1.0.relu#1"``); default: the last latent
                      layer.
        :param batch_size: Batch size for the numpy path.
        :param framework: If true, return a tensor that is differentiable w.r.t. `x` (one pass, no batching).
        :return: The activations, first dimension the number of samples.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
        if isinstance(layer, int) and not isinstance(layer, bool):
            top = self.layer_names
            if not -len(top) <= layer < len(top):
                raise ValueError(f"`layer` index {layer} out of range for {len(top)} layers in `layer_names` "
                                 f"(accepted: -{len(top)} to {len(top) - 1}).")
            name = top[layer]
        else:
            name = self.layer_refs(-1 if layer is None else layer, argument="layer")[0]
        with preserve_mode(self.model):
            self.model.eval()
            if framework:
                x_t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
                return self.forward_with_latents(x_t.to(self._device), [name])[1][name]
            x_np = np.asarray(x, dtype=np.float32)
            outputs = []
            with torch.no_grad():
                for begin in range(0, len(x_np), batch_size):
                    batch = torch.from_numpy(x_np[begin : begin + batch_size]).to(self._device)
                    outputs.append(self.forward_with_latents(batch, [name])[1][name].cpu().numpy())
        return np.concatenate(outputs) if outputs else np.empty((0,), dtype=np.float32)

    def __repr__(self) -> str:
        # ART's repr (its tests look for "art.estimators.classification.pytorch.PyTorchClassifier"), inside ours
        extra = f", layers={self._layers!r}"
        if self._output_key is not None:
            extra += f", output_key={self._output_key!r}"
        if self._logits_fn is not None:
            extra += f", logits_fn={self._logits_fn!r}"
        if self._latent_layers is not None:
            extra += f", latent_layers={self._latent_layers}"
        ours = f"{type(self).__module__}.{type(self).__name__}"
        base = super().__repr__()
        if base.startswith(ours):
            base = f"{PyTorchClassifier.__module__}.{PyTorchClassifier.__name__}" + base[len(ours):]
        return f"{ours}({base}{extra})"
