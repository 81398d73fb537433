"""The interface of every perturbation source: :class:`PerturbationSource`."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch

from art_latent.perturbations.budgets import Budget

__all__ = ["PerturbationSource"]


class PerturbationSource(abc.ABC):
    """
    Makes perturbed versions of a batch, on the model's device.

    Implementations return a detached tensor of the same shape, dtype and device as `x`, and leave every module's
    train/eval flag and every parameter's ``.grad`` as they found them, also when an exception is raised.
    """

    if TYPE_CHECKING:
        # Read-only for the type checker, so subclasses may define it as a property (ARTAttackSource,
        # GaussianNoiseSource) or as a plain attribute (TorchGradientAttack).
        @property
        def eps(self) -> float | None:
            """The source's own budget, used when :meth:`generate` gets no override; `None` where it is meaningless."""
    else:
        #: The source's own budget, used when :meth:`generate` gets no override; `None` where it is meaningless.
        eps: float | None = None

    @abc.abstractmethod
    def generate(self, x: torch.Tensor, y: torch.Tensor, eps: Budget | None = None) -> torch.Tensor:
        """
        Perturb a batch.

        :param x: Float inputs of shape ``(B, *input_shape)`` on the model's device, in input space (before any ART
                  preprocessing such as standardisation).
        :param y: Labels as ``int64`` class indices ``(B,)`` or one-hot ``(B, nb_classes)``, on the same device.
        :param eps: Overrides the source's budget: a float for the whole batch or a tensor ``(B,)`` with one budget
                    per sample. Rows with budget 0 are returned exactly equal to `x`.
        :return: Detached perturbed inputs, same shape, dtype and device as `x`.
        """
        raise NotImplementedError
