"""
VGG with batch normalisation and ELU activations, the classifier of Schwartz & Ditzler's hidden-layer defense paper.

Every block is ``Sequential(conv=Sequential(ConvUnit, ...), pool=MaxPool2d)`` so that hidden layers have readable
qualified names: ``block2.conv.1`` is the (post-activation) output of the second convolution of block 2.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

logger = logging.getLogger(__name__)

VGG_CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
}
VGG_BLOCK_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


def check_positive_int(value: object, name: str) -> int:
    """
    Check an architecture size (a channel count, a class count, an input size).

    :param value: The value.
    :param name: The argument's name, for the message.
    :return: `value`.
    :raises ValueError: Unless it is an integer >= 1 (not a bool).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def make_activation(activation: Callable[[], nn.Module]) -> nn.Module:
    """
    Build an activation module from its factory.

    :param activation: A callable returning a ``torch.nn.Module`` (``nn.ReLU``).
    :return: The module.
    :raises TypeError: If the factory does not return a module.
    """
    module = activation()
    if not isinstance(module, nn.Module):
        raise TypeError(f"`activation` must build a torch.nn.Module, got {type(module).__name__}.")
    return module


def pooled_size(size: int, nb_pools: int) -> int:
    """
    Spatial size after `nb_pools` ``MaxPool2d(2, ceil_mode=True)`` layers.

    :param size: Input height or width.
    :param nb_pools: Number of pooling layers.
    :return: Output height or width.
    """
    for _ in range(nb_pools):
        size = math.ceil(size / 2)
    return size


class ConvUnit(nn.Sequential):
    """
    ``Conv2d(3x3, padding 1, no bias) -> BatchNorm2d -> activation``, with children named ``conv``, ``bn`` and ``act``.

    The unit's output is the post-activation feature map, so hooking the unit or its ``act`` child is equivalent.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: Callable[[], nn.Module] = nn.ELU) -> None:
        """
        Create a convolution unit.

        :param in_channels: Number of input channels.
        :param out_channels: Number of output channels.
        :param activation: Callable returning the activation module, e.g. ``nn.ELU``.
        """
        in_channels = check_positive_int(in_channels, "in_channels")
        out_channels = check_positive_int(out_channels, "out_channels")
        super().__init__(
            OrderedDict(
                # No bias: the following batch norm subtracts the batch mean, which cancels it (its gradient is 0).
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
                act=make_activation(activation),
            )
        )


class VGG(nn.Module):
    """
    VGG-16 (or VGG-11) with batch normalisation after every convolution, ELU activations and one hidden dense layer.

    Layout (paper 000, Schwartz & Ditzler): five blocks of 2, 2, 3, 3, 3 convolution units (1, 1, 2, 2, 2 for
    ``vgg11``) with 64, 128, 256, 512, 512 channels times `width`, each block ending with a 2x2 max-pooling in ceil
    mode (28 -> 14 -> 7 -> 4 -> 2 -> 1, 32 -> 16 -> 8 -> 4 -> 2 -> 1), then ``classifier``: flatten, a dense layer of
    ``fc_units * width`` units with the activation, and the logits layer. ``forward`` returns logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: float = 1.0,
        input_size: int = 28,
        config: str = "vgg16",
        activation: Callable[[], nn.Module] = nn.ELU,
        fc_units: int = 512,
    ) -> None:
        """
        Create a VGG model.

        :param in_channels: Number of input channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        :param num_classes: Number of classes, i.e. of logits.
        :param width: Multiplier of every channel count and of `fc_units`; each layer keeps at least one unit.
        :param input_size: Height and width of the (square) input images.
        :param config: ``vgg16`` or ``vgg11``.
        :param activation: Callable returning the activation module used after every convolution and the dense layer.
        :param fc_units: Units of the hidden dense layer before scaling by `width`.
        """
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        input_size = check_positive_int(input_size, "input_size")
        fc_units = check_positive_int(fc_units, "fc_units")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
            raise ValueError(f"`width` must be a positive finite number, got {width!r}.")
        if config not in VGG_CONFIGS:
            raise ValueError(f"Unknown VGG config {config!r}; accepted values: {', '.join(sorted(VGG_CONFIGS))}.")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = float(width)
        self.input_size = input_size
        self.config = config
        self.block_channels = tuple(max(1, round(c * width)) for c in VGG_BLOCK_CHANNELS)
        self.fc_units = max(1, round(fc_units * width))

        channels = in_channels
        for index, (nb_units, out_channels) in enumerate(
            zip(VGG_CONFIGS[config], self.block_channels, strict=True), start=1
        ):
            units = []
            for _ in range(nb_units):
                units.append(ConvUnit(channels, out_channels, activation))
                channels = out_channels
            block = nn.Sequential(
                OrderedDict(conv=nn.Sequential(*units), pool=nn.MaxPool2d(kernel_size=2, ceil_mode=True))
            )
            self.add_module(f"block{index}", block)

        self.feature_size = pooled_size(input_size, len(VGG_BLOCK_CHANNELS))
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc=nn.Linear(channels * self.feature_size**2, self.fc_units),
                act=make_activation(activation),
                logits=nn.Linear(self.fc_units, num_classes),
            )
        )

    @property
    def blocks(self) -> list[nn.Sequential]:
        """
        The five convolution blocks, in order.
        """
        return [getattr(self, f"block{index}") for index in range(1, len(VGG_BLOCK_CHANNELS) + 1)]

    def conv_unit_names(self) -> list[str]:
        """
        Qualified names of all convolution units in forward order, e.g. ``["block1.conv.0", "block1.conv.1", ...]``.

        :return: The names, usable with ``named_modules`` and as hidden-layer identifiers.
        """
        return [
            f"block{index}.conv.{unit}"
            for index, block in enumerate(self.blocks, start=1)
            for unit in range(len(cast(nn.Sequential, block.conv)))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Compute the logits.

        :param x: Images of shape ``(N, in_channels, input_size, input_size)``.
        :return: Logits of shape ``(N, num_classes)``.
        """
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)
