"""
Statistical noise sources: :class:`GaussianNoiseSource` (clipped Gaussian noise with per-sample budgets) and
:class:`NoiseSource` (the Gaussian, salt, pepper, salt-and-pepper and speckle noises of LSA, paper 004).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from art_latent.perturbations import budgets
from art_latent.perturbations.base import PerturbationSource
from art_latent.perturbations.budgets import Budget
from art_latent.validation import check_range

__all__ = ["NOISE_KINDS", "GaussianNoiseSource", "NoiseSource"]

#: The kinds of :class:`NoiseSource`.
NOISE_KINDS = ("gaussian", "salt", "pepper", "s&p", "speckle")


class GaussianNoiseSource(PerturbationSource):
    """
    Adds Gaussian noise ``x + sigma * N(0, 1)``, clipped to `clip_values` when given.
    """

    def __init__(
        self,
        sigma: float,
        clip_values: tuple[float | np.ndarray, float | np.ndarray] | None = None,
        generator: torch.Generator | int | None = None,
    ) -> None:
        """
        Create a :class:`.GaussianNoiseSource` instance.

        :param sigma: Standard deviation of the noise; the budget that an `eps` override replaces.
        :param clip_values: Optional ``(min, max)`` of the input range (floats or arrays broadcastable to one input).
        :param generator: ``torch.Generator`` (or integer seed of a new CPU generator); `None` uses torch's global one.
        """
        if sigma < 0:
            raise ValueError("The noise level `sigma` has to be non-negative.")
        if clip_values is not None and len(clip_values) != 2:
            raise ValueError("`clip_values` must be a (min, max) pair.")
        self.sigma = float(sigma)
        self.clip_values = clip_values
        self.generator = budgets.make_generator(generator)
        self._bounds: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def eps(self) -> float:
        """
        The noise standard deviation.
        """
        return self.sigma

    def generate(self, x: torch.Tensor, y: torch.Tensor | None = None, eps: Budget | None = None) -> torch.Tensor:
        """
        Add noise to a batch.

        :param x: Inputs ``(B, *input_shape)``.
        :param y: Unused; accepted for the common interface.
        :param eps: Override of `sigma`, a float or a tensor ``(B,)``.
        :return: Detached noisy inputs; rows with sigma 0 are `x` unchanged.
        """
        x = x.detach()
        if eps is None or isinstance(eps, (int, float, np.floating, np.integer)):
            scale = self.sigma if eps is None else float(eps)
            if not math.isfinite(scale) or scale < 0:
                raise ValueError("Perturbation budgets `eps` must be finite and non-negative.")
            if scale == 0:
                return x.clone()
            return self._clip(x + scale * budgets.sample("randn", tuple(x.shape), x, self.generator))
        if budgets.on_device(eps):
            # not read on the host: no synchronisation
            sigma_b = budgets.broadcastable(budgets.device_budget(eps, x.shape[0]), x)
        else:
            sigma = budgets.per_sample_budget(eps, x.shape[0])
            if not (sigma > 0).any():
                return x.clone()
            sigma_b = budgets.broadcastable(sigma, x)
        noisy = self._clip(x + sigma_b * budgets.sample("randn", tuple(x.shape), x, self.generator))
        return torch.where(sigma_b > 0, noisy, x)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """
        Clip to ``clip_values``, with the bounds made once per device and dtype (no copy per call).

        :param x: Noisy inputs.
        :return: Clipped inputs.
        """
        if self.clip_values is None:
            return x
        key = (x.device, x.dtype)
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = (
                torch.as_tensor(np.asarray(self.clip_values[0]), dtype=x.dtype, device=x.device),
                torch.as_tensor(np.asarray(self.clip_values[1]), dtype=x.dtype, device=x.device),
            )
        return torch.maximum(torch.minimum(x, bounds[1]), bounds[0])



class NoiseSource(PerturbationSource):
    """
    The statistical perturbations of LSA (paper 004, §4.1.3): Gaussian, salt, pepper, salt-and-pepper and speckle
    noise, on device. Defaults are those of ``skimage.util.random_noise`` (the "default parameters" of the paper):

    * ``"gaussian"``: :math:`x + n`, :math:`n \\sim \\mathcal{N}(\\text{mean}, \\text{var})`, var = 0.01;
    * ``"speckle"``: :math:`x + x\\,n`, same :math:`n`;
    * ``"salt"`` / ``"pepper"``: each entry is set, with probability ``amount`` = 0.05, to the top (salt) or the
      bottom (pepper) of ``clip_values`` (1 and 0 without clip values);
    * ``"s&p"``: salt or pepper with probability ``amount``, salt with probability ``salt_vs_pepper`` among them.

    The result is clipped to ``clip_values`` when given (as skimage clips to the image range).
    """

    def __init__(
        self,
        kind: str,
        var: float = 0.01,
        mean: float = 0.0,
        amount: float = 0.05,
        salt_vs_pepper: float = 0.5,
        clip_values: tuple[float, float] | None = (0.0, 1.0),
        generator: torch.Generator | int | None = None,
    ) -> None:
        """
        :param kind: One of ``"gaussian"``, ``"salt"``, ``"pepper"``, ``"s&p"``, ``"speckle"``.
        :param var: Variance of the Gaussian / speckle noise (> 0).
        :param mean: Mean of the Gaussian / speckle noise.
        :param amount: Fraction of entries replaced by salt / pepper, in [0, 1].
        :param salt_vs_pepper: Fraction of salt among the replaced entries of ``"s&p"``, in [0, 1].
        :param clip_values: ``(min, max)`` of the inputs (scalars), or ``None``.
        :param generator: ``torch.Generator`` or integer seed for the draws; ``None`` uses torch's global one.
        """
        kind = str(kind).lower()
        if kind not in NOISE_KINDS:
            raise ValueError(f"Noise `kind` must be one of {NOISE_KINDS}, got {kind!r}.")
        self.kind = kind
        self.var = check_range("var", var, 0.0, math.inf, low_open=True, high_open=True)
        self.mean = check_range("mean", mean, -math.inf, math.inf, low_open=True, high_open=True)
        self.amount = check_range("amount", amount, 0.0, 1.0)
        self.salt_vs_pepper = check_range("salt_vs_pepper", salt_vs_pepper, 0.0, 1.0)
        if clip_values is not None:
            low, high = (float(np.min(clip_values[0])), float(np.max(clip_values[1])))
            if not low < high:
                raise ValueError(f"`clip_values` must be (min, max) with min < max, got {clip_values!r}.")
            self.clip_values: tuple[float, float] | None = (low, high)
        else:
            self.clip_values = None
        self.generator = budgets.make_generator(generator)

    def __repr__(self) -> str:
        if self.kind in ("gaussian", "speckle"):
            return f"NoiseSource({self.kind!r}, var={self.var}, mean={self.mean})"
        return f"NoiseSource({self.kind!r}, amount={self.amount})"

    def _draw(self, shape: tuple[int, ...], like: torch.Tensor, normal: bool) -> torch.Tensor:
        sampler = torch.randn if normal else torch.rand
        if self.generator is None:
            return sampler(shape, dtype=like.dtype, device=like.device)
        return sampler(shape, dtype=like.dtype, device=self.generator.device, generator=self.generator).to(like.device)

    def generate(self, x: torch.Tensor, y: torch.Tensor | None = None, eps: Budget | None = None) -> torch.Tensor:
        """
        Perturb a batch.

        :param x: Inputs ``(B, ...)``.
        :param y: Unused.
        :param eps: Not supported (statistical noise has no budget); must be ``None``.
        :return: Detached noisy inputs.
        """
        if eps is not None:
            raise ValueError(f"{self!r} has no budget: `eps` must be None.")
        x = x.detach()
        low, high = self.clip_values if self.clip_values is not None else (0.0, 1.0)
        shape = tuple(x.shape)
        if self.kind in ("gaussian", "speckle"):
            noise = self.mean + math.sqrt(self.var) * self._draw(shape, x, normal=True)
            out = x + noise if self.kind == "gaussian" else x + x * noise
            return out.clamp(low, high) if self.clip_values is not None else out
        flip = self._draw(shape, x, normal=False) < self.amount
        if self.kind == "salt":
            return torch.where(flip, torch.full_like(x, high), x)
        if self.kind == "pepper":
            return torch.where(flip, torch.full_like(x, low), x)
        salt = self._draw(shape, x, normal=False) < self.salt_vs_pepper
        values = torch.where(salt, torch.full_like(x, high), torch.full_like(x, low))
        return torch.where(flip, values, x)
