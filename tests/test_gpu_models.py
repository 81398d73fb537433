"""
Real architectures from the libraries users train: torchvision's ``resnet18`` (in-place ReLU module called twice per
block) and timm's ``vit_tiny_patch16_224`` (at 32x32 input), on CUDA when there is one. Captured activations equal a
hook-free step-by-step forward, ``"auto"`` picks the residual blocks, and HLDR fits an epoch with ``predict``
afterwards equal to the plain forward and no hook left.

torchvision's PyPI wheel does not import with the local CPU torch and timm is not a test dependency, so this module
is skipped on the CPU machines; ``bash benchmarks/device_check.sh`` runs it on the GPU machine, where both are
installed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from torch import nn

from art_latent import HLDRTrainer, LatentClassifier

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

DEVICE = "gpu" if torch.cuda.is_available() else "cpu"


def _classifier(model: nn.Module) -> LatentClassifier:
    return LatentClassifier(model, nn.CrossEntropyLoss(), (3, 32, 32), 10, clip_values=(0.0, 1.0), device_type=DEVICE,
                            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), layers="auto")


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _vit_tiny() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)


def _inputs(clf: LatentClassifier, n: int = 8) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(clf.device)


def test_resnet18_captures_both_calls_of_the_reused_inplace_relu():
    clf = _classifier(_resnet18())
    assert any(name.startswith("layer1.") for name in clf.latent_layers)  # "auto": the residual blocks
    x = _inputs(clf)
    clf.model.eval()
    refs = ["relu", "layer1.0.relu", "layer1.0.relu#1", "layer1.0", "layer3.1"]
    _, acts = clf.forward_with_latents(x, refs)
    ref = copy.deepcopy(clf.model)
    with torch.no_grad():
        stem = ref.relu(ref.bn1(ref.conv1(x)))
        block = ref.layer1[0]
        first_relu = block.relu(block.bn1(block.conv1(ref.maxpool(stem))))
        out1 = ref.layer1[0](ref.maxpool(stem))
        h = ref.layer2(ref.layer1[1](out1))
        out3 = ref.layer3[1](ref.layer3[0](h))
    for name, expected in [("relu", stem), ("layer1.0.relu", first_relu), ("layer1.0.relu#1", out1),
                           ("layer1.0", out1), ("layer3.1", out3)]:
        torch.testing.assert_close(acts[name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_vit_tiny_captures_its_blocks():
    clf = _classifier(_vit_tiny())
    assert "blocks.0" in clf.latent_layers or any(n.startswith("blocks.") for n in clf.latent_layers)
    x = _inputs(clf)
    clf.model.eval()
    _, acts = clf.forward_with_latents(x, ["blocks.0", "blocks.11"])
    ref = copy.deepcopy(clf.model)
    with torch.no_grad():
        h = ref.norm_pre(ref.patch_drop(ref._pos_embed(ref.patch_embed(x))))
        first = ref.blocks[0](h)
        last = ref.blocks[1:](first)
    torch.testing.assert_close(acts["blocks.0"], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(acts["blocks.11"], last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [_resnet18, _vit_tiny], ids=["resnet18", "vit_tiny"])
def test_hldr_fits_and_predict_equals_the_plain_forward(build):
    clf = _classifier(build())
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(64, 3, 32, 32)).astype(np.float32), (np.arange(64) % 10).astype(np.int64)
    history = HLDRTrainer(clf, FastGradientMethod(clf, eps=8 / 255), budgets=(0.0, 8 / 255), seed=0).fit(
        x, y, nb_epochs=1, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["loss"])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in clf.model.modules()) == 0
    clf.model.eval()
    with torch.no_grad():
        expected = clf.model(torch.from_numpy(x).to(clf.device)).cpu().numpy()
    np.testing.assert_allclose(clf.predict(x), expected, rtol=1e-4, atol=1e-4)
