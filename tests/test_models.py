from __future__ import annotations

import pytest
import torch
from torch import nn

from art_latent.models import VGG, ConvUnit, SmallCNN, build_model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", ["vgg16", "vgg11"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_vgg_output_shape(config, channels, size):
    model = VGG(in_channels=channels, num_classes=7, width=0.125, input_size=size, config=config).eval()
    assert model(torch.rand(4, channels, size, size)).shape == (4, 7)
    assert model.feature_size == 1


def test_vgg_larger_input():
    model = VGG(in_channels=3, width=0.0625, input_size=64, config="vgg11")
    assert model.feature_size == 2
    assert model.classifier.fc.in_features == 32 * 4
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_vgg_layer_counts():
    for config, units in (("vgg16", 13), ("vgg11", 8)):
        model = VGG(width=0.125, config=config)
        assert len(model.conv_unit_names()) == units
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == units
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == units
        assert sum(isinstance(m, nn.ELU) for m in model.modules()) == units + 1
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5


def test_vgg_width_multiplier():
    model = VGG(width=0.5)
    assert [block.conv[0].conv.out_channels for block in model.blocks] == [32, 64, 128, 256, 256]
    assert model.classifier.fc.out_features == 256
    tiny = VGG(width=0.001, fc_units=10)
    assert [block.conv[-1].conv.out_channels for block in tiny.blocks] == [1] * 5
    assert tiny.classifier.fc.out_features == 1
    assert tiny(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_vgg16_parameter_count():
    # Each conv unit: 3*3*in*out weights (no bias) + 2*out batch-norm affine parameters (running stats are buffers);
    # 32x32 inputs pool down to 1x1, so the dense layer sees 512 features.
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512)]
    convs += [(512, 512)] * 5
    expected = sum(9 * i * o + 2 * o for i, o in convs) + (512 * 512 + 512) + (512 * 10 + 10)
    assert expected == 14_986_698
    assert count_parameters(VGG(in_channels=3, num_classes=10, input_size=32)) == 14_986_698


def test_vgg_module_names():
    model = VGG(width=0.125)
    names = dict(model.named_modules())
    for name in (
        "block1.conv.0",
        "block2.conv.1",
        "block2.conv.1.act",
        "block5.conv.2",
        "block3.pool",
        "classifier.fc",
        "classifier.act",
        "classifier.logits",
    ):
        assert name in names
    assert "block2.conv.2" not in names
    assert isinstance(names["block2.conv.1"], ConvUnit)
    assert isinstance(names["block2.conv.1.conv"], nn.Conv2d)
    assert isinstance(names["block2.conv.1.bn"], nn.BatchNorm2d)
    assert model.conv_unit_names()[:4] == ["block1.conv.0", "block1.conv.1", "block2.conv.0", "block2.conv.1"]
    assert all(name in names for name in model.conv_unit_names())


def test_conv_unit_output_is_post_activation():
    model = VGG(width=0.125).eval()
    outputs = {}
    for name in ("block2.conv.1", "block2.conv.1.act"):
        model.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    model(torch.rand(2, 1, 28, 28))
    assert torch.equal(outputs["block2.conv.1"], outputs["block2.conv.1.act"])
    assert outputs["block2.conv.1"].shape == (2, 16, 14, 14)
    assert outputs["block2.conv.1"].min() >= -1.0


@pytest.mark.parametrize(
    "model", [VGG(width=0.125), VGG(width=0.125, config="vgg11"), SmallCNN()], ids=["vgg16", "vgg11", "small"]
)
def test_gradient_reaches_all_parameters(model):
    model.train()
    loss = nn.functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_custom_activation():
    model = VGG(width=0.125, activation=nn.ReLU)
    assert isinstance(model.get_submodule("block1.conv.0.act"), nn.ReLU)
    assert isinstance(model.classifier.act, nn.ReLU)
    assert not any(isinstance(m, nn.ELU) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"in_channels": 1.5},
        {"num_classes": 0},
        {"input_size": 0},
        {"width": 0},
        {"width": -1.0},
        {"width": float("nan")},
        {"fc_units": 0},
        {"config": "vgg19"},
    ],
)
def test_vgg_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        VGG(**kwargs)


def test_vgg_bad_config_names_accepted_values():
    with pytest.raises(ValueError, match="vgg11, vgg16"):
        VGG(config="resnet")


def test_bad_activation():
    with pytest.raises(TypeError):
        VGG(activation=lambda: "elu")


def test_small_cnn():
    model = SmallCNN(in_channels=3, num_classes=5, input_size=32).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    names = dict(model.named_modules())
    for name in ("features.0", "features.1", "features.pool0", "features.pool1", "classifier.fc", "classifier.logits"):
        assert name in names
    assert model.conv_unit_names() == ["features.0", "features.1"]
    assert model.classifier.fc.in_features == 32 * 8 * 8
    deeper = SmallCNN(channels=(4, 8, 16), input_size=28)
    assert deeper.feature_size == 4 and deeper(torch.rand(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("kwargs", [{"channels": ()}, {"channels": (16, 0)}, {"hidden": 0}, {"input_size": -1}])
def test_small_cnn_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SmallCNN(**kwargs)


def test_build_model():
    assert isinstance(build_model("small_cnn"), SmallCNN)
    vgg11 = build_model("VGG11", width=0.125, in_channels=3, input_size=32)
    assert isinstance(vgg11, VGG) and vgg11.config == "vgg11"
    assert build_model("vgg16", width=0.125).config == "vgg16"
    assert build_model("vgg16", width=0.125, config="vgg16").config == "vgg16"
    with pytest.raises(ValueError, match="conflicts"):
        build_model("vgg16", config="vgg11")
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("resnet18")
