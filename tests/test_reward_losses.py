"""Bradley–Terry loss against values worked out by hand."""

import math

import pytest
import torch

from alignkit.losses.reward import bradley_terry_loss, preference_probability


def test_bradley_terry_hand_worked():
    """chosen (2, 0, -1), rejected (1, 0, 1): differences d = (1, 0, -2).
    -log σ(d) = log(1 + e^-d) = (log(1 + e^-1), log 2, log(1 + e^2)) = (0.313262, 0.693147, 2.126928).
    Accuracy counts a tie as half: (1, 0.5, 0)."""
    out = bradley_terry_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert out.losses.tolist() == pytest.approx([0.3132617, 0.6931472, 2.1269280], abs=1e-6)
    assert out.accuracy.tolist() == [1.0, 0.5, 0.0]
    assert out.margin.tolist() == [1.0, 0.0, -2.0]


def test_margin_hand_worked():
    """Margins (0.5, 1, 0) shift the differences to (0.5, -1, -2):
    log(1 + e^-0.5) = 0.474077, log(1 + e) = 1.313262, log(1 + e^2) = 2.126928.
    The logged margin stays r_c - r_r (what the model separates), not r_c - r_r - m."""
    out = bradley_terry_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]),
                             margin=torch.tensor([0.5, 1.0, 0.0]))
    assert out.losses.tolist() == pytest.approx([0.4740770, 1.3132617, 2.1269280], abs=1e-6)
    assert out.margin.tolist() == [1.0, 0.0, -2.0]


def test_centering_hand_worked():
    """η = 0.1 adds 0.1·(r_c + r_r)² = 0.1·(3², 0², 0²) = (0.9, 0, 0)."""
    out = bradley_terry_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]), center_coef=0.1)
    assert out.losses.tolist() == pytest.approx([0.3132617 + 0.9, 0.6931472, 2.1269280], abs=1e-6)


def test_centering_leaves_preferences_alone_and_pulls_mean_to_zero():
    """The gradient of the BT term is the same for (c, r) and (c + s, r + s); centring adds 2η(c + r) to both."""
    c = torch.tensor([3.0], requires_grad=True)
    r = torch.tensor([1.0], requires_grad=True)
    bradley_terry_loss(c, r, center_coef=0.5).losses.sum().backward()
    bt = -1.0 / (1.0 + math.exp(2.0))  # d/dc of -log σ(c - r) at c - r = 2
    assert c.grad.item() == pytest.approx(bt + 2 * 0.5 * 4.0, abs=1e-6)
    assert r.grad.item() == pytest.approx(-bt + 2 * 0.5 * 4.0, abs=1e-6)


def test_preference_probability():
    """σ(1 - 0) = 0.731059; swapping the two gives the complement."""
    p = preference_probability(torch.tensor([1.0]), torch.tensor([0.0]))
    assert p.item() == pytest.approx(0.7310586, abs=1e-6)
    assert preference_probability(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1 - p.item())


def test_matches_trl_formula_on_random_tensors():
    """TRL's RewardTrainer: -logsigmoid(c - r - m).mean() + η·mean((c + r)²); ours is the same per pair."""
    g = torch.Generator().manual_seed(0)
    c, r, m = torch.randn(64, generator=g), torch.randn(64, generator=g), torch.rand(64, generator=g)
    expected = -torch.nn.functional.logsigmoid(c - r - m).mean() + 0.01 * torch.mean((c + r) ** 2)
    ours = bradley_terry_loss(c, r, m, center_coef=0.01).losses.mean()
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)
