"""
Model builders for the architecture test matrix, and hand-written reference activations.

Every builder returns a randomly initialised model (nothing is downloaded) small enough for a forward+backward on
a batch of 8 in a few milliseconds on a CPU. Default inputs are ``1x28x28`` (Fashion-MNIST); every builder takes
``in_channels`` (and the HF ones ``image_size``) for ``3x32x32``.

* :func:`resnet_tv`: a ResNet written exactly like torchvision's ``torchvision/models/resnet.py`` (``BasicBlock``,
  ``Bottleneck``, ``ResNet``, ``_make_layer``, ``conv3x3``, ``conv1x1``): one ``nn.ReLU(inplace=True)`` per block
  called two (basic) or three (bottleneck) times, ``out += identity`` in place, torchvision's attribute names.
* :func:`user_cnn`: a user-written CNN with a residual connection, ``mul_`` and ``+=`` in place, an in-place ReLU
  module called four times in one forward and a functional ``F.relu``.
* :func:`hf_resnet`, :func:`hf_vit`, :func:`hf_convnext`: ``transformers`` image classifiers from tiny configs; they
  return ``ModelOutput`` objects (logits under ``.logits``).

The reference functions (``*_reference`` and the dispatcher :func:`reference_activations`) recompute the true
output of many submodules by calling the submodules step by step, without hooks: on a copy of the model whose
module hooks are dropped, in eval mode, under ``no_grad``, on a clone of the input, storing a clone of every
tensor (so later in-place operations cannot change a stored value). The original model (its mode, its hooks) is
not touched. Keys are qualified names from ``model.named_modules()``; the k-th call (0-based) of a module called
several times in one forward is ``"name#k"`` (a plain name is the first call). Module outputs that are tuples are
stored as their first element (documented per model). :func:`reference_forward` also returns the logits, which
tests should compare with ``model(x)`` in eval mode to check the reference itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Activations = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------------------------------------------
# torchvision's ResNet (structure copied from torchvision/models/resnet.py; width and number of stages configurable)
# ---------------------------------------------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        # Both self.conv1 and self.downsample layers downsample the input when stride != 1
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    # Bottleneck in torchvision places the stride for downsampling at 3x3 convolution(self.conv2)
    # while original implementation places the stride at the first 1x1 convolution(self.conv1)
    # according to "Deep residual learning for image recognition" https://arxiv.org/abs/1512.03385.
    # This variant is also known as ResNet V1.5 and improves accuracy according to
    # https://ngc.nvidia.com/catalog/model-scripts/nvidia:resnet_50_v1_5_for_pytorch.

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        # Both self.conv2 and self.downsample layers downsample the input when stride != 1
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with a configurable stem width (``width``, 64 in torchvision) and 1-4 stages."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: list[bool] | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if not 1 <= len(layers) <= 4:
            raise ValueError(f"`layers` must have 1 to 4 entries, got {layers!r}")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer

        self.inplanes = width
        self.dilation = 1
        if replace_stride_with_dilation is None:
            # each element in the tuple indicates if we should replace
            # the 2x2 stride with a dilated convolution instead
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None "
                             f"or a 3-element tuple, got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        for i in range(1, len(layers)):  # layer2..layer4, as in torchvision
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2**i, layers[i], stride=2,
                                                            dilate=replace_stride_with_dilation[i - 1]))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * block.expansion, num_classes)
        self.num_stages = len(layers)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        # Zero-initialize the last BN in each residual branch,
        # so that the residual branch starts with zeros, and each residual block behaves like an identity.
        # This improves the model by 0.2~0.3% according to https://arxiv.org/abs/1706.02677
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )

        layers = []
        layers.append(block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                            previous_dilation, norm_layer))
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))

        return nn.Sequential(*layers)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        # See note [TorchScript super()]
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)


def resnet_tv(block: str = "basic", layers: Sequence[int] = (1, 1), num_classes: int = 10, in_channels: int = 1,
              width: int = 8, zero_init_residual: bool = False) -> ResNet:
    """
    A small torchvision-style ResNet (random init as in torchvision).

    Stem: 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2 (28x28 -> 7x7, 32x32 -> 8x8); stage ``i`` has
    ``width * 2**i`` planes (x4 for bottlenecks) and stride 2 from the second stage on. With ``block="basic"`` the
    first block of ``layer1`` has an identity shortcut (no ``downsample``); every later stage's first block has a
    ``downsample`` Sequential(conv1x1, bn). With ``"bottleneck"`` ``layer1.0`` also has a ``downsample``.

    :param block: ``"basic"`` (BasicBlock) or ``"bottleneck"`` (Bottleneck).
    :param layers: Blocks per stage, 1 to 4 stages (``layer1``..``layer4``).
    """
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if block not in blocks:
        raise ValueError(f"`block` must be 'basic' or 'bottleneck', got {block!r}")
    return ResNet(blocks[block], list(layers), num_classes=num_classes, in_channels=in_channels, width=width,
                  zero_init_residual=zero_init_residual)


# ---------------------------------------------------------------------------------------------------------------
# A user-written CNN
# ---------------------------------------------------------------------------------------------------------------


class UserCNN(nn.Module):
    """
    A CNN as users write them: a residual connection added in place, an in-place ``mul_``, one in-place ReLU module
    (``act``) called four times per forward, a functional ``F.relu`` and a functional pooling/flatten.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)  # reused: act#0..act#3
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(2 * width * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.branch_scale = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))  # act#0, in place on bn1's output
        identity = x
        out = self.act(self.conv2(x))  # act#1, in place on conv2's output
        out = self.conv3(out)
        out.mul_(self.branch_scale)  # in place on conv3's output
        out += identity  # in-place residual
        out = self.act(out)  # act#2
        out = self.pool(out)
        out = F.relu(self.conv4(out))  # functional activation
        out = torch.flatten(self.gap(out), 1)
        out = self.act(self.fc1(out))  # act#3, in place on fc1's output
        return self.fc2(out)


def user_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> UserCNN:
    """A :class:`UserCNN` (random init)."""
    return UserCNN(in_channels=in_channels, num_classes=num_classes, width=width)


# ---------------------------------------------------------------------------------------------------------------
# transformers models
# ---------------------------------------------------------------------------------------------------------------


def hf_resnet(in_channels: int = 1, num_labels: int = 10, hidden_sizes: Sequence[int] = (8, 16),
              depths: Sequence[int] = (1, 1), layer_type: str = "basic", **config: object) -> nn.Module:
    """
    ``transformers.ResNetForImageClassification`` (random init). ``embedding_size == hidden_sizes[0]`` and
    ``downsample_in_first_stage=False``, so ``resnet.encoder.stages.0.layers.0`` has an ``nn.Identity`` shortcut;
    later stages start with a ``ResNetShortCut`` (conv1x1 stride 2 + BN). 28x28 -> embedder 7x7 -> stage 1 4x4.
    """
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(num_channels=in_channels, embedding_size=hidden_sizes[0], hidden_sizes=list(hidden_sizes),
                       depths=list(depths), layer_type=layer_type, num_labels=num_labels,
                       downsample_in_first_stage=False, **config)
    return ResNetForImageClassification(cfg)


def hf_vit(in_channels: int = 1, num_labels: int = 10, image_size: int = 28, patch_size: int = 7,
           hidden_size: int = 16, num_hidden_layers: int = 2, num_attention_heads: int = 2,
           intermediate_size: int = 32, **config: object) -> nn.Module:
    """
    ``transformers.ViTForImageClassification`` (random init; 28/7 -> 16 patches + CLS = 17 tokens). In
    transformers 5.x the blocks are ``vit.layers.{i}`` (no ``encoder``), each returning a tensor.
    """
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(num_channels=in_channels, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                    num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                    intermediate_size=intermediate_size, num_labels=num_labels, **config)
    return ViTForImageClassification(cfg)


def hf_convnext(in_channels: int = 1, num_labels: int = 10, hidden_sizes: Sequence[int] = (8, 16),
                depths: Sequence[int] = (1, 1), patch_size: int = 4, layer_scale_init_value: float = 1.0,
                **config: object) -> nn.Module:
    """
    ``transformers.ConvNextForImageClassification`` (random init; 28/4 -> 7x7 -> stage 1 3x3).
    ``layer_scale_init_value`` is 1.0 here (HF's 1e-6 would make every residual branch start almost at zero,
    so a block's output would hardly differ from its input).
    """
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(num_channels=in_channels, hidden_sizes=list(hidden_sizes), depths=list(depths),
                         num_stages=len(hidden_sizes), patch_size=patch_size,
                         layer_scale_init_value=layer_scale_init_value, num_labels=num_labels, **config)
    return ConvNextForImageClassification(cfg)


#: name -> (builder, input shape) of the whole matrix, for ``pytest.mark.parametrize``.
BUILDERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet_tv_basic": (lambda: resnet_tv("basic"), (1, 28, 28)),
    "resnet_tv_bottleneck": (lambda: resnet_tv("bottleneck"), (1, 28, 28)),
    "user_cnn": (user_cnn, (1, 28, 28)),
    "hf_resnet": (hf_resnet, (1, 28, 28)),
    "hf_vit": (hf_vit, (1, 28, 28)),
    "hf_convnext": (hf_convnext, (1, 28, 28)),
}


def logits_of(output: object) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or ``.logits`` of a ``ModelOutput``."""
    return output if isinstance(output, torch.Tensor) else output.logits  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------------------------


def _hookless_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without any module hooks (the hook dicts are mapped to empty ones, so the hooks'
    closures are neither copied nor called), in eval mode. The original is not modified."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for key, value in vars(module).items():
            if "hook" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    clone = copy.deepcopy(model, memo)
    return clone.eval()


class _Recorder:
    """Stores clones under qualified names, numbering repeated calls ``name#k``."""

    def __init__(self) -> None:
        self.acts: Activations = {}
        self._calls: dict[str, int] = {}

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        self.acts[name if k == 0 else f"{name}#{k}"] = value.detach().clone()
        return value


def _resnet_tv_forward(m: ResNet, x: torch.Tensor, rec: _Recorder) -> torch.Tensor:
    h = rec("conv1", m.conv1(x))
    h = rec("bn1", m.bn1(h))
    h = rec("relu", m.relu(h))
    h = rec("maxpool", m.maxpool(h))
    for s in range(m.num_stages):
        stage = f"layer{s + 1}"
        for b, blk in enumerate(getattr(m, stage)):
            p = f"{stage}.{b}"
            identity = h
            out = rec(f"{p}.conv1", blk.conv1(h))
            out = rec(f"{p}.bn1", blk.bn1(out))
            out = rec(f"{p}.relu", blk.relu(out))  # relu#0
            out = rec(f"{p}.conv2", blk.conv2(out))
            out = rec(f"{p}.bn2", blk.bn2(out))
            if isinstance(blk, Bottleneck):
                out = rec(f"{p}.relu", blk.relu(out))  # relu#1
                out = rec(f"{p}.conv3", blk.conv3(out))
                out = rec(f"{p}.bn3", blk.bn3(out))
            if blk.downsample is not None:
                d = rec(f"{p}.downsample.0", blk.downsample[0](h))
                identity = rec(f"{p}.downsample", rec(f"{p}.downsample.1", blk.downsample[1](d)))
            out = out + identity
            out = rec(f"{p}.relu", blk.relu(out))  # relu#1 (basic) / relu#2 (bottleneck): the block output
            h = rec(p, out)
        rec(stage, h)
    h = rec("avgpool", m.avgpool(h))
    return rec("fc", m.fc(torch.flatten(h, 1)))


def _user_cnn_forward(m: UserCNN, x: torch.Tensor, rec: _Recorder) -> torch.Tensor:
    h = rec("conv1", m.conv1(x))
    h = rec("bn1", m.bn1(h))
    h = rec("act", m.act(h))  # act#0
    identity = h
    out = rec("conv2", m.conv2(h))
    out = rec("act", m.act(out))  # act#1
    out = rec("conv3", m.conv3(out))  # before mul_
    out = out * m.branch_scale + identity
    out = rec("act", m.act(out))  # act#2
    out = rec("pool", m.pool(out))
    out = rec("conv4", m.conv4(out))
    out = F.relu(out)
    out = rec("gap", m.gap(out))
    out = rec("fc1", m.fc1(torch.flatten(out, 1)))
    out = rec("act", m.act(out))  # act#3
    return rec("fc2", m.fc2(out))


def _hf_conv_layer(layer: nn.Module, h: torch.Tensor, p: str, rec: _Recorder) -> torch.Tensor:
    h = rec(f"{p}.convolution", layer.convolution(h))
    h = rec(f"{p}.normalization", layer.normalization(h))
    return rec(p, rec(f"{p}.activation", layer.activation(h)))


def _hf_resnet_forward(m: nn.Module, x: torch.Tensor, rec: _Recorder) -> torch.Tensor:
    emb = m.resnet.embedder
    h = _hf_conv_layer(emb.embedder, x, "resnet.embedder.embedder", rec)
    h = rec("resnet.embedder", rec("resnet.embedder.pooler", emb.pooler(h)))
    for s, stage in enumerate(m.resnet.encoder.stages):
        for j, layer in enumerate(stage.layers):
            p = f"resnet.encoder.stages.{s}.layers.{j}"
            residual = h
            out = h
            for k, conv in enumerate(layer.layer):
                out = _hf_conv_layer(conv, out, f"{p}.layer.{k}", rec)
            rec(f"{p}.layer", out)  # pre-residual (the last conv layer has no activation)
            if isinstance(layer.shortcut, nn.Identity):
                residual = rec(f"{p}.shortcut", residual)
            else:
                r = rec(f"{p}.shortcut.convolution", layer.shortcut.convolution(residual))
                residual = rec(f"{p}.shortcut", rec(f"{p}.shortcut.normalization", layer.shortcut.normalization(r)))
            h = rec(p, rec(f"{p}.activation", layer.activation(out + residual)))
        rec(f"resnet.encoder.stages.{s}", h)
    rec("resnet.encoder", h)
    h = rec("resnet.pooler", m.resnet.pooler(h))
    h = rec("classifier.0", m.classifier[0](h))
    return rec("classifier", rec("classifier.1", m.classifier[1](h)))


def _hf_vit_forward(m: nn.Module, x: torch.Tensor, rec: _Recorder) -> torch.Tensor:
    vit = m.vit
    emb = vit.embeddings
    patches = emb.patch_embeddings.projection(x)
    rec("vit.embeddings.patch_embeddings.projection", patches)
    patches = rec("vit.embeddings.patch_embeddings", patches.flatten(2).transpose(1, 2))
    h = torch.cat((emb.cls_token.expand(x.shape[0], -1, -1), patches), dim=1) + emb.position_embeddings
    h = rec("vit.embeddings", rec("vit.embeddings.dropout", emb.dropout(h)))
    for i, layer in enumerate(vit.layers):
        p = f"vit.layers.{i}"
        att = layer.attention
        a = rec(f"{p}.layernorm_before", layer.layernorm_before(h))
        n, t, _ = a.shape
        heads, head_dim = att.num_attention_heads, att.head_dim

        q, k, v = (rec(f"{p}.attention.{proj}", getattr(att, proj)(a)).view(n, t, heads, head_dim).transpose(1, 2)
                   for proj in ("q_proj", "k_proj", "v_proj"))
        weights = torch.softmax(q @ k.transpose(2, 3) * head_dim**-0.5, dim=-1)
        ctx = (weights @ v).transpose(1, 2).reshape(n, t, heads * head_dim)
        a = rec(f"{p}.attention", rec(f"{p}.attention.o_proj", att.o_proj(ctx)))  # attention returns (out, weights)
        h = rec(f"{p}.dropout", layer.dropout(a)) + h  # dropout#0
        b = rec(f"{p}.layernorm_after", layer.layernorm_after(h))
        b = rec(f"{p}.mlp.fc1", layer.mlp.fc1(b))
        b = rec(f"{p}.mlp.activation_fn", layer.mlp.activation_fn(b))
        b = rec(f"{p}.mlp", rec(f"{p}.mlp.fc2", layer.mlp.fc2(b)))
        h = rec(p, rec(f"{p}.dropout", layer.dropout(b)) + h)  # dropout#1; the layer returns a tensor
    h = rec("vit.layernorm", vit.layernorm(h))
    return rec("classifier", m.classifier(h[:, 0, :]))


def _channels_first_layernorm(ln: nn.LayerNorm, h: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(h.permute(0, 2, 3, 1), ln.normalized_shape, ln.weight, ln.bias, ln.eps).permute(0, 3, 1, 2)


def _hf_convnext_forward(m: nn.Module, x: torch.Tensor, rec: _Recorder) -> torch.Tensor:
    cn = m.convnext
    h = rec("convnext.embeddings.patch_embeddings", cn.embeddings.patch_embeddings(x))
    h = rec("convnext.embeddings", rec("convnext.embeddings.layernorm",
                                       _channels_first_layernorm(cn.embeddings.layernorm, h)))
    for s, stage in enumerate(cn.encoder.stages):
        ps = f"convnext.encoder.stages.{s}"
        if len(stage.downsampling_layer):
            h = rec(f"{ps}.downsampling_layer.0", _channels_first_layernorm(stage.downsampling_layer[0], h))
            h = rec(f"{ps}.downsampling_layer.1", stage.downsampling_layer[1](h))
        for j, layer in enumerate(stage.layers):
            p = f"{ps}.layers.{j}"
            residual = h
            f = rec(f"{p}.dwconv", layer.dwconv(h)).permute(0, 2, 3, 1)  # NCHW -> NHWC
            f = rec(f"{p}.layernorm", F.layer_norm(f, layer.layernorm.normalized_shape, layer.layernorm.weight,
                                                   layer.layernorm.bias, layer.layernorm.eps))
            f = rec(f"{p}.pwconv1", layer.pwconv1(f))
            f = rec(f"{p}.act", layer.act(f))
            f = rec(f"{p}.pwconv2", layer.pwconv2(f))  # NHWC
            if layer.layer_scale_parameter is not None:
                f = layer.layer_scale_parameter * f
            f = rec(f"{p}.drop_path", layer.drop_path(f.permute(0, 3, 1, 2)))  # NCHW
            h = rec(p, residual + f)
        rec(ps, h)
    rec("convnext.encoder", h)
    pooled = rec("convnext.layernorm", cn.layernorm(h.mean([-2, -1])))
    return rec("classifier", m.classifier(pooled))


def _forward_fn(model: nn.Module) -> Callable[[nn.Module, torch.Tensor, _Recorder], torch.Tensor]:
    if isinstance(model, ResNet):
        return _resnet_tv_forward  # type: ignore[return-value]
    if isinstance(model, UserCNN):
        return _user_cnn_forward  # type: ignore[return-value]
    kind = type(model).__name__
    table = {"ResNetForImageClassification": _hf_resnet_forward, "ViTForImageClassification": _hf_vit_forward,
             "ConvNextForImageClassification": _hf_convnext_forward}
    if kind not in table:
        raise TypeError(f"no reference for {kind}")
    return table[kind]


def reference_forward(model: nn.Module, x: torch.Tensor) -> tuple[Activations, torch.Tensor]:
    """
    The reference activations of `model` on `x` and the logits of the step-by-step forward (eval mode, no hooks,
    no gradients; `model` itself is not modified). Check ``logits`` against ``logits_of(model.eval()(x))``.
    """
    impl = _forward_fn(model)
    clone = _hookless_eval_copy(model)
    rec = _Recorder()
    with torch.no_grad():
        logits = impl(clone, x.detach().clone(), rec)
    return rec.acts, logits.detach().clone()


def reference_activations(model: nn.Module, x: torch.Tensor) -> Activations:
    """The reference activations of any model of this module (dispatches on its type); see the module docstring."""
    return reference_forward(model, x)[0]


def resnet_tv_reference(model: ResNet, x: torch.Tensor) -> Activations:
    """
    :func:`resnet_tv`: ``conv1``, ``bn1``, ``relu``, ``maxpool``; per block ``layerS.B.{conv1,bn1,relu,conv2,bn2}``
    (``bn2``: what bn2 returned, before the residual add), bottleneck also ``relu#1``, ``conv3``, ``bn3``; the last
    ReLU call ``relu#1`` (basic) / ``relu#2`` (bottleneck) = the block output ``layerS.B``; ``downsample``,
    ``downsample.0``, ``downsample.1`` where present; ``layerS``, ``avgpool``, ``fc`` (the logits).
    """
    return reference_activations(model, x)


def user_cnn_reference(model: UserCNN, x: torch.Tensor) -> Activations:
    """:func:`user_cnn`: ``conv1``, ``bn1``, ``act`` .. ``act#3``, ``conv2``, ``conv3`` (before ``mul_``),
    ``pool``, ``conv4`` (before ``F.relu``), ``gap``, ``fc1``, ``fc2`` (the logits)."""
    return reference_activations(model, x)


def hf_resnet_reference(model: nn.Module, x: torch.Tensor) -> Activations:
    """:func:`hf_resnet`: ``resnet.embedder[.embedder[.convolution|.normalization|.activation]|.pooler]``; per
    layer ``P = resnet.encoder.stages.S.layers.J``: ``P`` (tensor, after the residual add and ReLU),
    ``P.layer`` / ``P.layer.1`` / ``P.layer.1.normalization`` (pre-residual; HF adds the residual to this tensor
    in place), ``P.layer.K.*``, ``P.shortcut[.*]``, ``P.activation``; ``resnet.encoder.stages.S``,
    ``resnet.encoder``, ``resnet.pooler``, ``classifier.0``, ``classifier.1`` = ``classifier`` (the logits)."""
    return reference_activations(model, x)


def hf_vit_reference(model: nn.Module, x: torch.Tensor) -> Activations:
    """:func:`hf_vit`: ``vit.embeddings[.patch_embeddings[.projection]|.dropout]``; per layer ``P = vit.layers.I``
    (tensor ``(n, tokens, hidden)``): ``P.layernorm_before``, ``P.attention.{q,k,v,o}_proj``, ``P.attention``
    (the first element of the ``(attn_output, attn_weights)`` tuple it returns), ``P.dropout`` / ``P.dropout#1``
    (called twice), ``P.layernorm_after``, ``P.mlp[.fc1|.activation_fn|.fc2]``; ``vit.layernorm``,
    ``classifier`` (the logits)."""
    return reference_activations(model, x)


def hf_convnext_reference(model: nn.Module, x: torch.Tensor) -> Activations:
    """:func:`hf_convnext`: ``convnext.embeddings[.patch_embeddings|.layernorm]``; per stage
    ``convnext.encoder.stages.S[.downsampling_layer.{0,1}]``; per layer ``P = ....stages.S.layers.J`` (tensor,
    NCHW): ``P.dwconv`` (NCHW), ``P.layernorm`` / ``P.pwconv1`` / ``P.act`` / ``P.pwconv2`` (NHWC, channels last),
    ``P.drop_path`` (NCHW, after the layer scale); ``convnext.encoder``, ``convnext.layernorm`` (pooled),
    ``classifier`` (the logits)."""
    return reference_activations(model, x)


REFERENCES: dict[str, Callable[[nn.Module, torch.Tensor], Activations]] = {
    "resnet_tv": resnet_tv_reference,  # type: ignore[dict-item]
    "user_cnn": user_cnn_reference,  # type: ignore[dict-item]
    "hf_resnet": hf_resnet_reference,
    "hf_vit": hf_vit_reference,
    "hf_convnext": hf_convnext_reference,
}
