"""The latent disparity of HLDR against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from art_latent.regularizers import latent_disparity

# Two layers, two samples. Layer 1: (2, 2), layer 2: (2, 1).
A1 = [[1.0, -2.0], [0.0, 3.0]]
B1 = [[0.0, -2.0], [1.0, 1.0]]
A2 = [[2.0], [-1.0]]
B2 = [[1.0], [-1.0]]
# |A1-B1| = [[1, 0], [1, 2]] (sum 4), |A1| sum 6; |A2-B2| = [[1], [0]] (sum 1), |A2| sum 3.
# Per sample: s0 diff 1+0+1 = 2, |a| 1+2+2 = 5; s1 diff 1+2+0 = 3, |a| 0+3+1 = 4.
# Squares: layer 1 diff 6, a 14; layer 2 diff 1, a 5; s0 diff 2, a 9; s1 diff 5, a 10.
EXPECTED = {
    ("batch", 1): 5 / 9,
    ("layer", 1): (4 / 6 + 1 / 3) / 2,
    ("sample", 1): (2 / 5 + 3 / 4) / 2,
    ("batch", 2): math.sqrt(7 / 19),
    ("layer", 2): (math.sqrt(6 / 14) + math.sqrt(1 / 5)) / 2,
    ("sample", 2): (math.sqrt(2 / 9) + math.sqrt(5 / 10)) / 2,
}


def _tensors():
    clean = [torch.tensor(A1, requires_grad=True), torch.tensor(A2, requires_grad=True)]
    perturbed = [torch.tensor(B1, requires_grad=True), torch.tensor(B2, requires_grad=True)]
    return clean, perturbed


@pytest.mark.parametrize(("normalization", "p"), list(EXPECTED))
def test_hand_computed_values(normalization, p):
    clean, perturbed = _tensors()
    value = latent_disparity(clean, perturbed, normalization, p)
    assert value.item() == pytest.approx(EXPECTED[(normalization, p)], rel=1e-6)


def test_gradient_flows_through_numerator_and_denominator():
    clean, perturbed = _tensors()
    latent_disparity(clean, perturbed, "batch", 1).backward()
    # d(N/D)/da = sign(a - b)/D - N sign(a)/D^2 with N = 5, D = 9
    a, b = torch.tensor(A1), torch.tensor(B1)
    expected = torch.sign(a - b) / 9 - 5 * torch.sign(a) / 81
    torch.testing.assert_close(clean[0].grad, expected)
    torch.testing.assert_close(perturbed[0].grad, -torch.sign(a - b) / 9)


def test_identical_pairs_give_zero_and_zero_activations_stay_finite():
    x = [torch.randn(3, 4, 2, 2)]
    assert latent_disparity(x, [t.clone() for t in x]).item() == 0.0
    zeros = [torch.zeros(3, 5, requires_grad=True)]
    for normalization in ("batch", "layer", "sample"):
        for p in (1, 2):
            value = latent_disparity(zeros, [torch.ones(3, 5)], normalization, p)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(zeros[0].grad).all()


def test_finite_under_bf16_autocast():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 256)
    x = torch.randn(32, 64) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = layer(x), layer(x + 1.0)
        value = latent_disparity([a], [b], "batch", 2)
    assert value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"normalization": "global"}, "normalization"),
        ({"p": 3}, "`p`"),
    ],
)
def test_bad_arguments(kwargs, match):
    clean, perturbed = _tensors()
    with pytest.raises(ValueError, match=match):
        latent_disparity(clean, perturbed, **kwargs)


def test_mismatched_layers_rejected():
    clean, perturbed = _tensors()
    with pytest.raises(ValueError, match="same non-zero number"):
        latent_disparity(clean, perturbed[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        latent_disparity(clean, [perturbed[1], perturbed[0]])


@pytest.mark.parametrize("normalization", ["batch", "layer", "sample"])
@pytest.mark.parametrize("p", [1, 2])
def test_disparity_over_a_subset_of_rows_equals_the_full_pairs(normalization, p):
    from art_latent.regularizers import latent_disparity

    torch.manual_seed(0)
    clean = [torch.randn(6, 3, requires_grad=True), torch.randn(6, 2, 2, requires_grad=True)]
    rows = torch.tensor([1, 4, 5])
    subset = [torch.randn(3, 3), torch.randn(3, 2, 2)]
    full = [c.detach().clone().index_copy(0, rows, s) for c, s in zip(clean, subset, strict=True)]
    expected = latent_disparity(clean, full, normalization, p)
    got = latent_disparity(clean, subset, normalization, p, rows=rows)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got, clean)
    expected_grads = torch.autograd.grad(latent_disparity(clean, full, normalization, p), clean)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)
    # hand-computed: batch, p=1, one layer [[1, 2], [3, 4]], row 1 perturbed to [3, 6]: (|3-3| + |4-6|) / 10 = 0.2
    one = [torch.tensor([[1.0, 2.0], [3.0, 4.0]])]
    value = latent_disparity(one, [torch.tensor([[3.0, 6.0]])], "batch", 1, rows=torch.tensor([1]))
    assert value.item() == pytest.approx(0.2)
