"""The DPO family against values worked out by hand, and against TRL's formulas on random tensors."""

import pytest
import torch

from alignkit.losses import preference as P

# one pair: policy log-probs (−1, −3), reference (−2, −2): log-ratios +1 and −1, so h = 2
PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def test_dpo_sigmoid_hand_worked():
    """β = 0.5: βh = 1, loss = log(1 + e⁻¹) = 0.313262; rewards β·(+1) = 0.5 and β·(−1) = −0.5.
    cDPO ε = 0.1: 0.9·log(1 + e⁻¹) + 0.1·log(1 + e) = 0.9·0.313262 + 0.1·1.313262 = 0.413262."""
    out = P.dpo_sigmoid(PC, PR, RC, RR, beta=0.5)
    assert out.losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (0.5, -0.5)
    smoothed = P.dpo_sigmoid(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1).losses.item()
    assert smoothed == pytest.approx(0.4132617, abs=1e-6)


def test_robust_hand_worked():
    """ε = 0.1: (0.9·0.313262 − 0.1·1.313262) / 0.8 = 0.150610 / 0.8 = 0.188262."""
    robust = P.dpo_robust(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1).losses.item()
    assert robust == pytest.approx(0.1882617, abs=1e-6)
    with pytest.raises(ValueError):
        P.dpo_robust(PC, PR, RC, RR, label_smoothing=0.5)


def test_ipo_and_hinge_hand_worked():
    """IPO β = 0.5: (h − 1/(2β))² = (2 − 1)² = 1; at h = 1 it is 0.
    Hinge β = 0.5: max(0, 1 − 0.5·2) = 0; at h = 0 (no preference learned) it is 1."""
    assert P.ipo(PC, PR, RC, RR, beta=0.5).losses.item() == pytest.approx(1.0)
    assert P.ipo(PC, PC - 1, RC, RC, beta=0.5).losses.item() == pytest.approx(0.0)
    assert P.hinge(PC, PR, RC, RR, beta=0.5).losses.item() == pytest.approx(0.0)
    assert P.hinge(PC, PC, RC, RC, beta=0.5).losses.item() == pytest.approx(1.0)


def test_simpo_and_cpo_hand_worked():
    """SimPO β = 2, γ = 0.5, mean log-probs −0.5 and −1: 2·0.5 − 0.5 = 0.5, loss log(1 + e^−0.5) = 0.474077.
    CPO β = 0.5 on (−1, −3): β·2 = 1, loss 0.313262 (no reference involved)."""
    out = P.simpo(torch.tensor([-0.5]), torch.tensor([-1.0]), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(0.4740770, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (-1.0, -2.0)
    assert P.cpo(PC, PR, beta=0.5).losses.item() == pytest.approx(0.3132617, abs=1e-6)


def test_orpo_hand_worked():
    """Mean log-probs log ½ and log ¼: odds 1 and ⅓, log odds 0 and −log 3; ratio log 3 = 1.098612;
    −log σ(log 3) = log(1 + ⅓) = 0.287682; × λ 0.1 = 0.0287682."""
    out, ratio = P.orpo(torch.tensor([0.5]).log(), torch.tensor([0.25]).log(), lam=0.1)
    assert ratio.item() == pytest.approx(1.0986123, abs=1e-6)
    assert out.losses.item() == pytest.approx(0.0287682, abs=1e-6)


def test_kto_hand_worked():
    """β = 0.5, batch KL 0.4 (z₀ = 0.4). Desirable, r = −1 − (−2) = 1: 1 − σ(0.5·0.6) = 1 − σ(0.3) = 0.425557.
    Undesirable, r = −3 − (−2) = −1: 1 − σ(0.5·1.4) = 1 − σ(0.7) = 0.331812. A negative KL estimate is
    clamped to z₀ = 0: the desirable loss becomes 1 − σ(0.5) = 0.377541. Weights scale each side."""
    policy, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    labels = torch.tensor([True, False])
    out = P.kto(policy, ref, labels, torch.tensor(0.4), beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.4255575, 0.3318122], abs=1e-6)
    assert out.chosen_rewards.tolist() == [0.5] and out.rejected_rewards.tolist() == [-0.5]
    clamped = P.kto(policy, ref, labels, torch.tensor(-0.2), beta=0.5).losses[0].item()
    assert clamped == pytest.approx(0.3775407, abs=1e-6)
    weighted = P.kto(policy, ref, labels, torch.tensor(0.4), beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    assert weighted.losses.tolist() == pytest.approx([0.851115, 0.1659061], abs=1e-6)


def test_nll_term_is_per_token():
    assert P.nll_term(torch.tensor([-6.0]), torch.tensor([3])).item() == pytest.approx(2.0)


def test_gradients_push_the_right_way():
    """Every paired loss lowers when the chosen log-prob rises and the rejected one falls."""
    for name, loss in P.PAIRED_LOSSES.items():
        pc, pr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
        loss(pc, pr, RC, RR, beta=0.5).losses.sum().backward()
        assert pc.grad.item() < 0 < pr.grad.item(), name


def _random(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 3 - 20 for _ in range(4)]


def test_equals_trl_formulas_on_random_tensors():
    """TRL 1.16's DPOTrainer (sigmoid, hinge, ipo, robust), written out from its source: delta = h,
    sigmoid −log σ(β·delta), hinge relu(1 − β·delta), ipo (delta − 1/(2β))², robust
    (−(1−ε) log σ(β·delta) + ε log σ(−β·delta)) / (1 − 2ε). Ours equal them to 1e-6."""
    pc, pr, rc, rr = _random()
    beta, eps = 0.1, 0.2
    delta = (pc - rc) - (pr - rr)
    F = torch.nn.functional
    expected = {
        "sigmoid": -F.logsigmoid(beta * delta),
        "hinge": torch.relu(1 - beta * delta),
        "ipo": (delta - 1 / (2 * beta)) ** 2,
        "robust": (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps),
    }
    for name, want in expected.items():
        kwargs = {"label_smoothing": eps} if name == "robust" else {}
        got = P.PAIRED_LOSSES[name](pc, pr, rc, rr, beta=beta, **kwargs).losses
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=name)
