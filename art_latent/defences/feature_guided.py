"""
:class:`FeatureGuidedDenoiser`: the high-level-representation guided denoiser (HGD, Liao et al. 2018) as an ART
``PreprocessorPyTorch`` that white-box attacks differentiate through, with its own ``save`` / ``load``. Its trainer is
:class:`~art_latent.defences.denoiser.DenoiserTrainer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from torch import nn

from art_latent.defences.unet import DenoisingUNet
from art_latent.io import atomic_path, safe_load

logger = logging.getLogger(__name__)

__all__ = ["FeatureGuidedDenoiser"]


class FeatureGuidedDenoiser(PreprocessorPyTorch):
    r"""
    The high-level-representation guided denoiser of Liao et al. (2018) as an ART preprocessing defence:

    .. math::
        \hat{x} = x - D(x)

    with :math:`D` a :class:`DenoisingUNet` that estimates the adversarial noise. Everything is torch, so
    ``PyTorchClassifier(..., preprocessing_defences=[denoiser])`` (or a :class:`~art_latent.estimator.LatentClassifier`)
    back-propagates through :math:`D`: ``loss_gradient`` and every white-box attack see the defended model, with no
    gradient masking. ``apply_fit=False``: ART's own ``fit`` of the classifier skips it; ``apply_predict=True``:
    ``predict``, ``loss_gradient`` and the attacks apply it. Train it with :class:`DenoiserTrainer`.

    The network starts in eval mode (BatchNorm running statistics, so one input's output does not depend on the rest
    of the batch); :class:`DenoiserTrainer` switches it to train mode during ``fit`` only.

    | Paper link: https://arxiv.org/abs/1712.02976 (Liao et al.); paper 000: https://arxiv.org/abs/2110.05419
    """

    params = ["clip_values"]

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 2,
        clip_values: tuple[float, float] | None = None,
        identity_init: bool = True,
        device_type: str = "gpu",
    ) -> None:
        """
        :param in_channels: Channels of the images (channels first).
        :param width: Channels of the U-Net's full-resolution level (see :class:`DenoisingUNet`).
        :param depth: Down-/up-sampling levels of the U-Net.
        :param clip_values: Optional ``(min, max)`` to clip :math:`\\hat{x}` to (``None``: no clipping, as Liao et
                            al.; clipping zeroes the gradient where it saturates).
        :param identity_init: Start as the identity (zeroed output convolution).
        :param device_type: ``"gpu"`` (CUDA when available) or ``"cpu"``.
        """
        if device_type not in ("gpu", "cpu"):
            raise ValueError(f"`device_type` must be 'gpu' or 'cpu', got {device_type!r}.")
        super().__init__(device_type=device_type, is_fitted=False, apply_fit=False, apply_predict=True)
        self.clip_values = clip_values
        self._check_params()
        self.network = DenoisingUNet(in_channels, width, depth, identity_init).to(self._device)
        self.network.eval()

    def _check_params(self) -> None:
        if self.clip_values is not None:
            if len(self.clip_values) != 2 or not all(isinstance(v, (int, float)) for v in self.clip_values):
                raise ValueError(f"`clip_values` must be None or a (min, max) pair, got {self.clip_values!r}.")
            if not self.clip_values[0] < self.clip_values[1]:
                raise ValueError(f"`clip_values` must have min < max, got {self.clip_values!r}.")

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this denoiser (``device_type`` aside)."""
        net = self.network
        return {"in_channels": net.in_channels, "width": net.width, "depth": net.depth,
                "clip_values": None if self.clip_values is None else tuple(float(v) for v in self.clip_values)}

    def forward(self, x: torch.Tensor, y: Any = None) -> tuple[torch.Tensor, Any]:
        """
        Denoise a batch: :math:`\\hat{x} = x - D(x)` (clipped to `clip_values` when set), differentiable.

        :param x: Images ``(n, in_channels, h, w)`` on :attr:`device`.
        :param y: Labels, returned unchanged.
        :return: ``(x_hat, y)``.
        """
        x_hat = x - self.network(x)
        if self.clip_values is not None:
            x_hat = x_hat.clamp(self.clip_values[0], self.clip_values[1])
        return x_hat, y

    # ------------------------------------------------------------------ torch helpers

    def parameters(self) -> Iterator[nn.Parameter]:
        """The denoiser network's parameters (for an optimizer)."""
        return self.network.parameters()

    def to(self, device: torch.device | str) -> FeatureGuidedDenoiser:
        """
        Move the network to `device` (and record it as the preprocessor's device).

        :param device: A torch device.
        :return: This denoiser.
        """
        self._device = torch.device(device)
        self.network.to(self._device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's ``state_dict``."""
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """
        Load network weights (e.g. from :meth:`state_dict`).

        :param state: A ``state_dict`` of a network with the same configuration.
        """
        self.network.load_state_dict(state)
        self._is_fitted = True

    def save(self, path: str | os.PathLike) -> None:
        """
        Save the denoiser alone (configuration and weights, no classifier) for :meth:`load`.

        :param path: The file to write (``torch.save`` format).
        """
        with atomic_path(path) as tmp:
            torch.save({"config": self.config, "state_dict": self.network.state_dict(), "is_fitted": self.is_fitted},
                       tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device_type: str = "gpu") -> FeatureGuidedDenoiser:
        """
        Rebuild a denoiser written by :meth:`save`.

        :param path: The file.
        :param device_type: ``"gpu"`` or ``"cpu"``.
        :return: The denoiser, in eval mode.
        :raises ValueError: If the file cannot be read safely (:func:`art_latent.io.safe_load`).
        """
        state = safe_load(path, map_location="cpu")
        config = dict(state["config"])
        if config.get("clip_values") is not None:
            config["clip_values"] = tuple(config["clip_values"])
        denoiser = cls(**config, identity_init=False, device_type=device_type)
        denoiser.network.load_state_dict(state["state_dict"])
        denoiser._is_fitted = bool(state.get("is_fitted", True))
        return denoiser

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())}, device={self.device})"
