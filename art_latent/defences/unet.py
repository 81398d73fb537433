"""
:class:`DenoisingUNet`: the small U-Net that estimates the adversarial noise inside
:class:`~art_latent.defences.feature_guided.FeatureGuidedDenoiser` (Liao et al.'s DUNET, scaled down).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from art_latent.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["DenoisingUNet"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DenoisingUNet(nn.Module):
    """
    A small U-Net that estimates the noise of its input (Liao et al.'s DUNET, scaled down for 28x28/32x32 images).

    Encoder: a block of two ``conv3x3-BN-ReLU`` at full resolution, then `depth` blocks that halve the resolution with
    a stride-2 convolution (channels ``width * 2**level``). Decoder: per level, upsampling (nearest) to the skip
    connection's size, concatenation with it, two ``conv3x3-BN-ReLU``. A linear ``1x1`` convolution maps back to the
    input channels. Any input size works (odd sizes included).
    """

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 2, identity_init: bool = True) -> None:
        """
        :param in_channels: Channels of the images (1 for Fashion-MNIST, 3 for CIFAR-10).
        :param width: Channels of the full-resolution level; level ``l`` has ``width * 2**l``.
        :param depth: Number of down-/up-sampling levels (>= 1).
        :param identity_init: Zero the output convolution, so the untrained denoiser is the identity
                              (:math:`D(x) = 0`) and fine-tuning starts from the undefended classifier.
        """
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.width = check_int("width", width)
        self.depth = check_int("depth", depth)
        channels = [self.width * 2**level for level in range(self.depth + 1)]
        self.encoder = nn.ModuleList([nn.Sequential(*_conv_bn_relu(self.in_channels, channels[0]),
                                                    *_conv_bn_relu(channels[0], channels[0]))])
        for level in range(1, self.depth + 1):
            self.encoder.append(nn.Sequential(*_conv_bn_relu(channels[level - 1], channels[level], stride=2),
                                              *_conv_bn_relu(channels[level], channels[level])))
        self.decoder = nn.ModuleList()
        for level in range(self.depth, 0, -1):
            merged, out = channels[level] + channels[level - 1], channels[level - 1]
            self.decoder.append(nn.Sequential(*_conv_bn_relu(merged, out), *_conv_bn_relu(out, out)))
        self.output = nn.Conv2d(channels[0], self.in_channels, 1)
        if identity_init:
            nn.init.zeros_(self.output.weight)
            assert self.output.bias is not None  # a Conv2d built with its default bias=True
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param x: Images ``(n, in_channels, h, w)``.
        :return: The noise estimate :math:`D(x)`, same shape.
        """
        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.output(h)
