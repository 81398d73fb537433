"""
Architectures nobody here designed: a torchvision-structured ResNet (basic and bottleneck blocks), a user CNN with
in-place ops and a reused activation, and HF transformers ResNet / ViT / ConvNeXt from small configs. For each:
captured activations equal a hand-written forward, ``"auto"`` picks the expected latents, every trainer fits one
epoch, ``predict`` afterwards equals the plain forward, and no hook is left behind.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from archs import BUILDERS, logits_of, reference_forward
from helpers import every_trainer
from torch import nn

from art_latent import LatentClassifier
from art_latent.trainers import (
    LatentTrainer,
)

pytest.importorskip("transformers")

HF = {"hf_resnet", "hf_vit", "hf_convnext"}

#: What "auto" must pick: residual blocks as units, the stem's post-activation output, patch embeddings.
EXPECTED_AUTO = {
    "resnet_tv_basic": ["relu", "layer1.0", "layer2.0"],
    "resnet_tv_bottleneck": ["relu", "layer1.0", "layer2.0"],
    "hf_resnet": ["resnet.embedder.embedder.activation", "resnet.encoder.stages.0.layers.0",
                  "resnet.encoder.stages.1.layers.0"],
    "hf_vit": ["vit.embeddings.patch_embeddings.projection", "vit.layers.0", "vit.layers.1"],
    "hf_convnext": ["convnext.embeddings.layernorm", "convnext.encoder.stages.0.layers.0",
                    "convnext.encoder.stages.1.downsampling_layer.1", "convnext.encoder.stages.1.layers.0"],
}


def _classifier(arch: str) -> LatentClassifier:
    build, shape = BUILDERS[arch]
    torch.manual_seed(0)
    model = build()
    return LatentClassifier(model, nn.CrossEntropyLoss(), shape, 10, clip_values=(0.0, 1.0), device_type="cpu",
                            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                            output_key="logits" if arch in HF else None)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _data(shape: tuple[int, ...], n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(size=(n, *shape)).astype(np.float32), (np.arange(n) % 10).astype(np.int64)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("training", [False, True])
def test_activations_equal_a_hand_written_forward(arch, training):
    clf = _classifier(arch)
    x = torch.from_numpy(_data(BUILDERS[arch][1], 6)[0])
    if training:  # the train-mode trace and capture run first (BatchNorm statistics move); values checked in eval
        clf.model.train()
        reference, _ = reference_forward(clf.model, x)
        _, acts = clf.forward_with_latents(x, list(reference))
        assert all(a.shape == reference[r].shape for r, a in acts.items())
    reference, logits_ref = reference_forward(clf.model, x)  # eval mode, on a hook-free copy
    clf.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(clf.model(x)), logits_ref)  # the reference itself is right
    refs = list(reference)
    logits, acts = clf.forward_with_latents(x, refs)
    for ref in refs:
        torch.testing.assert_close(acts[ref], reference[ref], msg=lambda m, ref=ref: f"{ref}: {m}")
    torch.testing.assert_close(logits, logits_ref)
    assert _hooks(clf.model) == 0


def test_a_plain_forward_hook_is_wrong_on_the_torchvision_block():
    # Why the capture copies: a stored reference to bn2's output ends up holding the block output (after `+=` and
    # the in-place ReLU).
    build, shape = BUILDERS["resnet_tv_basic"]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.from_numpy(_data(shape, 6)[0])
    reference, _ = reference_forward(model, x)
    stored = {}
    handle = model.layer1[0].bn2.register_forward_hook(lambda _m, _i, out: stored.setdefault("bn2", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert (stored["bn2"] - reference["layer1.0.bn2"]).abs().max() > 0.5
    torch.testing.assert_close(stored["bn2"], reference["layer1.0"])


@pytest.mark.parametrize("arch", sorted(EXPECTED_AUTO))
def test_auto_picks_block_outputs(arch):
    clf = _classifier(arch)
    assert clf.latent_layers == EXPECTED_AUTO[arch]
    trace = clf.trace(training=False)
    if arch.startswith("resnet_tv"):  # one in-place ReLU per block, called 2 (basic) or 3 (bottleneck) times
        counts = trace.call_counts()
        assert counts["layer1.0.relu"] == (2 if arch.endswith("basic") else 3)
        assert "layer1.0.bn2" in trace.inplace_refs and "layer1.0" not in trace.inplace_refs
    if arch in ("hf_vit", "hf_convnext"):  # no copy needed where nothing is modified in place
        assert trace.inplace_refs == set()


def test_user_cnn_auto_follows_each_call_of_the_reused_activation():
    clf = _classifier("user_cnn")
    names = clf.latent_layers
    assert names[:2] == ["act", "act#1"] and all(n.split("#")[0] in clf.module_names for n in names)
    x = torch.from_numpy(_data((1, 28, 28), 4)[0])
    reference, _ = reference_forward(clf.model, x)
    clf.model.eval()
    _, acts = clf.forward_with_latents(x)
    for name in names:
        if name in reference:
            torch.testing.assert_close(acts[name], reference[name])


#: Every trainer at its defaults except the attack (FGSM, to keep the matrix fast).
TRAINERS: dict[str, Callable[[LatentClassifier], LatentTrainer]] = every_trainer()  # type: ignore[assignment]


@pytest.mark.parametrize("trainer_name", sorted(TRAINERS))
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_trainer_fits_one_epoch(arch, trainer_name):
    clf = _classifier(arch)
    x, y = _data(BUILDERS[arch][1])
    trainer = TRAINERS[trainer_name](clf)
    history = trainer.fit(x, y, nb_epochs=1, batch_size=8, verbose=False)
    assert np.isfinite(history[-1]["loss"])
    assert _hooks(clf.model) == 0
    model = clf.model
    model.eval()
    with torch.no_grad():
        expected = logits_of(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(clf.predict(x), expected, rtol=1e-5, atol=1e-5)
