"""
:class:`LatentClassifier`: ART's ``PyTorchClassifier`` with differentiable access to named hidden layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from art.estimators.classification.pytorch import PyTorchClassifier

from art_latent.layers import LayerSpec, resolve_layers
from art_latent.utils import preserve_mode

logger = logging.getLogger(__name__)


class LatentClassifier(PyTorchClassifier):
    """
    A :class:`~art.estimators.classification.PyTorchClassifier` that exposes named hidden layers.

    Everything ART does with a ``PyTorchClassifier`` (``predict``, ``fit``, ``loss_gradient``, attacks, metrics,
    ``save``, ``clone_for_refitting``) works unchanged. On top of it:

    * :attr:`latent_layers` — the hidden layers a latent defense regularizes, resolved from ``layers``;
    * :meth:`forward_with_latents` — **one** forward pass returning the logits and the activations of those layers,
      differentiable w.r.t. the input and the parameters, through ART's preprocessing, in the model's current
      train/eval mode;
    * :meth:`latents` — the context manager that registers the forward hooks and always removes them;
    * :meth:`get_activations` — ART's method, overridden to accept any qualified name from ``named_modules()``,
      without leaking hooks or leaving the model in eval mode.

    The model's ``forward`` must return the logits as one tensor.
    """

    estimator_params = PyTorchClassifier.estimator_params + ["layers"]

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
    ) -> None:
        """
        Create a classifier; every argument but `layers` is ``PyTorchClassifier``'s.

        :param model: PyTorch model whose ``forward`` returns logits.
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
                       :func:`art_latent.layers.auto_layers`: the post-activation output of every hidden conv/linear
                       block, logits excluded), qualified names from ``model.named_modules()``, glob patterns
                       (``"block*.conv.*"``), module types (``torch.nn.ELU``) or a list of these.
        :raises TypeError: If `model` is not a ``torch.nn.Module``.
        :raises ValueError: If `layers` names no module of the model.
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
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
        self._layers: LayerSpec = layers
        self._latent_layers: list[str] = self._resolve(layers)

    @classmethod
    def from_classifier(cls, classifier: PyTorchClassifier, layers: LayerSpec = "auto") -> LatentClassifier:
        """
        Wrap an existing ART ``PyTorchClassifier`` (same model object, optimizer, preprocessing and defences).

        :param classifier: The ART classifier.
        :param layers: See :class:`LatentClassifier`.
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
        )

    # ------------------------------------------------------------------ layers

    def _example_input(self) -> torch.Tensor:
        return torch.zeros((1, *self.input_shape), dtype=torch.float32, device=self._device)

    def _resolve(self, spec: LayerSpec) -> list[str]:
        needs_example = spec == "auto" or (not isinstance(spec, (str, type)) and "auto" in list(spec))
        example = None
        if needs_example:
            example, _ = self._apply_preprocessing(self._example_input(), y=None, fit=False, no_grad=True)
        return resolve_layers(self.model, spec, example)

    @property
    def layers(self) -> LayerSpec:
        """The layer specification this classifier was built with (see :class:`LatentClassifier`)."""
        return self._layers

    @layers.setter
    def layers(self, spec: LayerSpec) -> None:
        self._latent_layers = self._resolve(spec)
        self._layers = spec

    @property
    def latent_layers(self) -> list[str]:
        """The resolved qualified module names of the hidden layers, in order."""
        return list(self._latent_layers)

    @property
    def layer_names(self) -> list[str]:
        """Every qualified module name of the model (ART's version lists top-level children only)."""
        return [name for name, _ in self.model.named_modules() if name]

    def _module_names(
        self, layers: LayerSpec | int | Sequence[str | int | type] | None, argument: str = "layers"
    ) -> list[str]:
        if layers is None:
            return self.latent_layers
        items = [layers] if isinstance(layers, (str, int, type)) else list(layers)
        modules = dict(self.model.named_modules())
        names = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int, type)):
                raise TypeError(
                    f"`{argument}`: layers are given by name or pattern (str), module type, or index into "
                    f"latent_layers (int), got {item!r}."
                )
            if isinstance(item, type) or item == "auto":
                names.extend(self._resolve(item) if item == "auto" else resolve_layers(self.model, item,
                                                                                         argument=argument))
            elif isinstance(item, int):
                if not -len(self._latent_layers) <= item < len(self._latent_layers):
                    raise ValueError(
                        f"`{argument}`: layer index {item} out of range for {len(self._latent_layers)} latent layers "
                        f"(accepted: -{len(self._latent_layers)} to {len(self._latent_layers) - 1})."
                    )
                names.append(self._latent_layers[item])
            elif item in modules and item:
                names.append(item)
            else:
                # a glob pattern, or a clear ValueError
                names.extend(resolve_layers(self.model, item, argument=argument))
        return list(dict.fromkeys(names))

    # ----------------------------------------------------------------- forward

    @contextlib.contextmanager
    def latents(self, layers: str | int | Sequence[str | int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """
        Register forward hooks that record the outputs of `layers`; the hooks are removed on exit, also on exceptions.

        Inside the block, every forward pass of the model fills the yielded dict (name -> output tensor, the last
        call's output for a module called more than once).

        :param layers: Names (or indices into :attr:`latent_layers`); default: :attr:`latent_layers`.
        :return: The dict that the hooks fill.
        """
        with self._hooked(self._module_names(layers)) as store:
            yield store

    @contextlib.contextmanager
    def _hooked(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        modules = dict(self.model.named_modules())
        store: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(name: str):
            def hook(_module, _inputs, output):
                store[name] = output

            return hook

        try:
            for name in names:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            yield store
        finally:
            for handle in handles:
                handle.remove()

    def forward_with_latents(
        self, x: torch.Tensor, layers: str | int | Sequence[str | int] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """
        One forward pass returning the logits and the hidden activations.

        Differentiable w.r.t. `x` and the parameters; ART's preprocessing (standardisation and PyTorch preprocessing
        defences) is applied first, as in ``loss_gradient``. Runs in the model's current train/eval mode and does not
        change it.

        :param x: Input batch (a tensor on :attr:`device`, in input space, shape ``(n, *input_shape)``).
        :param layers: Names (or indices into :attr:`latent_layers`); default: :attr:`latent_layers`.
        :return: ``(logits, activations)`` with ``activations`` a dict name -> tensor in the order of `layers`.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}; use get_activations for numpy.")
        names = self._module_names(layers)
        x_pre, _ = self._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        with self._hooked(names) as store:
            logits = self.model(x_pre)
        missing = [name for name in names if name not in store]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run in the forward pass; they cannot be regularized.")
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
        :param layer: A qualified name from ``model.named_modules()`` (nested names work) or an index into
                      :attr:`latent_layers`; default: the last latent layer.
        :param batch_size: Batch size for the numpy path.
        :param framework: If true, return a tensor that is differentiable w.r.t. `x` (one pass, no batching).
        :return: The activations, first dimension the number of samples.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
        name = self._module_names(-1 if layer is None else layer, argument="layer")[0]
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
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, clip_values={self.clip_values}, latent_layers={self._latent_layers})"
        )
