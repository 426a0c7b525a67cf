"""Online-RL building blocks against values worked out by hand (comments show the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import rl


def test_kl_estimators():
    """r = log π − log π_ref. r = 0.5: k1 0.5, k2 ½·0.25, k3 e^(−0.5) − 1 + 0.5 = 0.1065307.
    r = −1: k3 = e − 1 − 1 = 0.7182818. k3 is never negative; k1 is."""
    logps, ref = torch.tensor([0.0, -2.0]), torch.tensor([-0.5, -1.0])
    assert rl.kl_penalty(logps, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert rl.kl_penalty(logps, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    assert rl.kl_penalty(logps, ref, "k3").tolist() == pytest.approx([0.1065307, 0.7182818], abs=1e-6)
    assert (rl.kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        rl.kl_penalty(logps, ref, "k4")


def test_k3_is_an_unbiased_kl_estimate():
    """Sampling y ~ π on a 3-way categorical: the mean of k1 and k3 over samples matches the exact KL."""
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum().item()
    y = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for estimator in ("k1", "k3"):
        estimate = rl.kl_penalty(p.log()[y], q.log()[y], estimator).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01), estimator


def test_gae_hand_worked():
    """Row 1, γ 1, λ 0.9, rewards [0, 0, 1], V [0.5, 0.6, 0.7]:
    δ₂ = 1 − 0.7 = 0.3 → Â₂ 0.3; δ₁ = 0.7 − 0.6 = 0.1 → Â₁ 0.1 + 0.9·0.3 = 0.37;
    δ₀ = 0.6 − 0.5 = 0.1 → Â₀ 0.1 + 0.9·0.37 = 0.433; returns Â + V = [0.933, 0.97, 1.0]."""
    advantages, returns = rl.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]),
                                 torch.ones(1, 3), gamma=1.0, lam=0.9)
    assert advantages[0].tolist() == pytest.approx([0.433, 0.37, 0.3], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([0.933, 0.97, 1.0], abs=1e-6)


def test_gae_stops_at_the_last_real_token():
    """γ 0.5, λ 1, mask [1, 1, 0], rewards [0, 2, 0], V [1, 1, 5 (padding)]: the value after the last real
    token is 0 (not the padding's 5). δ₁ = 2 − 1 = 1 → Â₁ 1; δ₀ = 0.5·1 − 1 = −0.5 → Â₀ −0.5 + 0.5·1 = 0;
    returns [1, 2]; padding gets 0."""
    advantages, returns = rl.gae(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 5.0]]),
                                 torch.tensor([[1, 1, 0]]), gamma=0.5, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert returns[0].tolist() == pytest.approx([1.0, 2.0, 0.0])


def test_whiten_uses_only_real_entries():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = rl.whiten(x, mask)
    # mean 2, unbiased var ((1)² + (1)²)/1 = 2 → ±1/√2
    assert out[0].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], abs=1e-6)
    assert rl.whiten(x, mask, shift_mean=False)[0, :2].tolist() == pytest.approx(
        [2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)], abs=1e-6)


def test_group_advantages():
    """Group [1, 0, 0, 1]: mean 0.5, unbiased std √(1/3) = 0.57735 → ±0.5 / (0.57735 + 1e-4) = ±0.865876.
    Group [2, 2, 2, 2]: all equal → 0. Dr. GRPO (no std): ±0.5."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = rl.group_advantages(rewards, 4)
    assert a.tolist() == pytest.approx([0.865876, -0.865876, -0.865876, 0.865876, 0, 0, 0, 0], abs=1e-5)
    assert rl.group_advantages(rewards, 4, scale=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_rloo_advantages():
    """[1, 0, 0, 1]: 1 − mean(0, 0, 1) = 2/3; 0 − mean(1, 0, 1) = −2/3. Second group [3, 1]: 3 − 1, 1 − 3."""
    a = rl.rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    assert a.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert rl.rloo_advantages(torch.tensor([3.0, 1.0]), 2).tolist() == [2.0, -2.0]
    with pytest.raises(ValueError, match="at least 2"):
        rl.rloo_advantages(torch.tensor([1.0]), 1)


def test_token_level_rewards_put_the_score_on_the_last_real_token():
    """β 0.5. Row 1: KL [0.1, 0.2, 0.3] → [−0.05, −0.1, −0.15 + 1] ; row 2 (one real token): [−0.25 + 2, 0, 0]."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = rl.token_level_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert out.tolist() == [pytest.approx([-0.05, -0.1, 0.85]), pytest.approx([1.75, 0.0, 0.0])]
    # responses that start after prompt positions (masks aligned with input_ids): the score still lands on
    # the last response token
    shifted = rl.token_level_rewards(torch.tensor([1.0]), torch.zeros(1, 4), torch.tensor([[0, 1, 1, 0]]), 0.5)
    assert shifted.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_reinforce_pp_advantages():
    """Returns-to-go of the rewards above: row 1 [0.7, 0.75, 0.85], row 2 [1.75]. Whitened over the 4 real
    tokens: mean 1.0125, unbiased std 0.4956057 → [−0.630542, −0.529655, −0.327882], [1.488078]."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = rl.reinforce_pp_advantages(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert out[0].tolist() == pytest.approx([-0.630542, -0.529655, -0.327882], abs=1e-5)
    assert out[1].tolist() == pytest.approx([1.488078, 0.0, 0.0], abs=1e-5)


def test_clipped_policy_loss():
    """ε 0.2. ρ = e^0.3 = 1.3499, Â +1: −min(1.3499, 1.2) = −1.2 (clipped). ρ = e^−0.3 = 0.7408, Â +1:
    −min(0.7408, 0.8) = −0.7408 (not clipped). ρ = 0.7408, Â −1: −min(−0.7408, −0.8) = 0.8 (clipped).
    ρ = 1, Â 2: −2. Padding: 0."""
    old = torch.zeros(1, 5)
    logps = torch.tensor([[0.3, -0.3, -0.3, 0.0, 7.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = rl.clipped_policy_loss(logps, old, advantages, mask, clip_low=0.2)
    assert out.losses[0].tolist() == pytest.approx([-1.2, -math.exp(-0.3), 0.8, -2.0, 0.0], abs=1e-6)
    assert out.clipped[0].tolist() == [True, False, True, False, False]
    assert out.approx_kl[0].tolist() == pytest.approx([0.045, 0.045, 0.045, 0.0, 0.0], abs=1e-6)
    higher = rl.clipped_policy_loss(logps, old, advantages, mask, clip_low=0.2, clip_high=0.5)
    assert higher.losses[0, 0].item() == pytest.approx(-math.exp(0.3), abs=1e-6)  # 1.3499 < 1.5: unclipped


def test_first_minibatch_ratio_is_exactly_one():
    logps = torch.randn(3, 7)
    out = rl.clipped_policy_loss(logps, logps.clone(), torch.randn(3), torch.ones(3, 7))
    assert torch.equal(out.ratio, torch.ones(3, 7)) and not out.clipped.any()


def test_clipped_value_loss():
    """V 1.5, V_old 1.0, R 2.0, ε 0.2: (1.5 − 2)² = 0.25; clipped V 1.2 → (1.2 − 2)² = 0.64; ½·0.64 = 0.32.
    V 1.1 (inside the clip range): ½·0.81 = 0.405, not clipped."""
    losses, clipped = rl.clipped_value_loss(torch.tensor([[1.5, 1.1]]), torch.tensor([[1.0, 1.0]]),
                                            torch.tensor([[2.0, 2.0]]), torch.ones(1, 2), clip=0.2)
    assert losses[0].tolist() == pytest.approx([0.32, 0.405])
    assert clipped[0].tolist() == [True, False]


def test_aggregate():
    """Losses [[1, 2, 3], [4, pad, pad]]: token-mean 10/4 = 2.5; sequence-mean (2 + 4)/2 = 3;
    constant-length (T = 3) (6/3 + 4/3)/2 = 5/3."""
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert rl.aggregate(losses, mask, "token-mean").item() == pytest.approx(2.5)
    assert rl.aggregate(losses, mask, "sequence-mean").item() == pytest.approx(3.0)
    assert rl.aggregate(losses, mask, "constant-length").item() == pytest.approx(5 / 3)
    assert rl.aggregate(losses, mask, "constant-length", max_length=6).item() == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="token-mean"):
        rl.aggregate(losses, mask, "sum")


def test_adaptive_kl_controller():
    """β 0.2, target 6, horizon 10000. KL 12: error clip(12/6 − 1) = 0.2; 100 samples → β·(1 + 0.2·0.01) =
    0.2004. KL 3: error −0.5 → −0.2 → 0.2004·(1 − 0.002)."""
    controller = rl.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert controller.update(12.0, 100) == pytest.approx(0.2004)
    assert controller.update(3.0, 100) == pytest.approx(0.2004 * 0.998)
    restored = rl.AdaptiveKLController(1.0, 6.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    assert rl.FixedKLController(0.05).update(100.0, 10) == 0.05


def test_truncated_importance_weights_by_hand():
    """Trainer log-probs (−1, −2, −0.5, −3) against the engine's (−1, −2 − ln 2, −0.5 − ln 4, NaN), mask
    (1, 1, 1, 1) and a padded row: ratios 1, 2, 4 → weights 1, 2, min(4, 3) = 3; the NaN token and the padded
    token get 1. Over the 3 known tokens: mean |log ratio| = (0 + ln 2 + ln 4) / 3 = ln 2, mean weight
    (1 + 2 + 3) / 3 = 2, one of three clipped."""
    from alignkit.losses.rl import truncated_is_weights

    ln2 = math.log(2)
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, 0.0, 0.0]])
    engine = torch.tensor([[-1.0, -2.0 - ln2, -0.5 - 2 * ln2, float("nan")], [-1.0, -1.0, -5.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    weights, stats = truncated_is_weights(trainer, engine, mask, cap=3.0)
    assert torch.allclose(weights, torch.tensor([[1.0, 2.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    assert stats["logp_diff_mean"] == pytest.approx(ln2)
    assert stats["is_weight_mean"] == pytest.approx(2.0)
    assert stats["is_clipped_ratio"] == pytest.approx(1 / 3)
    assert not weights.requires_grad


def test_sequence_level_ratio_is_the_length_normalised_sequence_ratio_by_hand():
    """GSPO (Zheng et al. 2025, eq. 7). Row 0: log-ratios 0.1, 0.3 over 2 tokens (a pad after) → s = e^0.2,
    A = +1, ε = 0.1: s = 1.2214 > 1.1, so the clipped branch wins: loss −1.1 on both real tokens.
    Row 1: log-ratios −0.4, 0.1, 0.0 → s = e^(−0.1) = 0.9048 inside [0.9, 1.1], A = −2: loss +2·0.9048 per
    token. Token level instead clips each token alone: row 0 token 0 (e^0.1 = 1.105 > 1.1) is clipped, token 1
    too; row 1 token 0 (e^−0.4 = 0.670, A < 0: min(ρA, clip(ρ)A) = −2·0.9 taken) is clipped."""
    logps = torch.tensor([[0.1, 0.3, 0.7], [-0.4, 0.1, 0.0]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0])
    seq = rl.clipped_policy_loss(logps, old, adv, mask, 0.1, level="sequence")
    expected = torch.tensor([[-1.1, -1.1, 0.0], [2 * math.exp(-0.1)] * 3])
    torch.testing.assert_close(seq.losses, expected)
    torch.testing.assert_close(seq.ratio[1], torch.full((3,), math.exp(-0.1)))
    assert seq.clipped.tolist() == [[True, True, False], [False, False, False]]
    token = rl.clipped_policy_loss(logps, old, adv, mask, 0.1, level="token")
    assert token.clipped.tolist() == [[True, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="token, sequence"):
        rl.clipped_policy_loss(logps, old, adv, mask, level="episode")


def test_sequence_level_gradient_at_ratio_one_is_the_sequence_mean_policy_gradient():
    """At μ = 1 (old = current, detached) s = 1 and ∂s/∂θ = mean_t ∂log π_t/∂θ, so GSPO's gradient with a
    sequence-mean aggregation equals GRPO's token-level one with the same aggregation."""
    logps = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    grads = []
    for level in ("token", "sequence"):
        out = rl.clipped_policy_loss(logps, logps.detach(), adv, mask, 0.2, level=level)
        (grad,) = torch.autograd.grad(rl.aggregate(out.losses, mask, "sequence-mean"), logps)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], -(adv[:, None] * mask / mask.sum(1, keepdim=True)) / 3)


def test_entropy_bonus_by_hand():
    """Entropies 1.0, 2.0 (real) and 9.0 (padding): token mean 1.5; c = 0.1 → −0.15."""
    entropy = torch.tensor([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert rl.entropy_bonus(entropy, mask, 0.1).item() == pytest.approx(-0.15)
    assert rl.entropy_bonus(entropy, mask, 0.0).item() == 0.0


def test_spread_groups_by_hand():
    """Groups of 3: (1, 1, 1) no spread; (0, 1, 0) spread; (0.5, 0.5, 0.5 + 1e-9) equal within tolerance."""
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5 + 1e-9])
    assert rl.spread_groups(rewards, 3).tolist() == [False, True, False]
    # the groups dropped are exactly those whose GRPO advantages are all zero
    advantages = rl.group_advantages(rewards, 3).view(-1, 3)
    assert ((advantages.abs().sum(1) > 1e-3) == rl.spread_groups(rewards, 3)).all()
