"""Online RL building blocks as pure tensor functions: KL estimators, advantage estimators (GAE, GRPO's
group normalisation, RLOO's leave-one-out baseline, REINFORCE++), whitening, the clipped policy and value
losses, loss aggregation, and the adaptive KL controller.

Shapes: per-token tensors are (B, T) over the response tokens with a (B, T) `mask` (1 on real response
tokens, 0 on padding after EOS); per-sequence tensors are (B,). Groups are consecutive: with group size G,
rows [0, G) answer the first prompt, [G, 2G) the second, and so on.

| function | what | source |
|---|---|---|
| `kl_penalty` | k1 = r, k2 = r²/2, k3 = (e^(−r) − 1) + r; r = log π − log π_ref | Schulman 2020 (approximating KL) |
| `gae` | Â_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γV_{t+1} − V_t; returns Â + V | Schulman et al. 2016, eq. 16 |
| `whiten` | (x − mean) / std over the masked entries | — |
| `group_advantages` | (r − group mean) / (group std + ε); Dr. GRPO: no std | Shao et al. 2024; Liu et al. 2025 |
| `rloo_advantages` | r_i − mean_{j≠i} r_j | Ahmadian et al. 2024 (RLOO) |
| `turn_advantages` | per turn: return-to-go from the turn minus its group's baseline at that turn (multi-turn episodes) | Shao et al. 2024 (process supervision, eq. 4), per turn |
| `reinforce_pp_advantages` | whitened return-to-go of the KL-penalised token rewards | Hu 2025 (REINFORCE++) |
| `clipped_policy_loss` | −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â); ρ per token, or per sequence (GSPO) | Schulman et al. 2017 (PPO), eq. 7; Zheng et al. 2025 (GSPO), eq. 7 |
| `entropy_bonus` | −c·(token-mean entropy of π over the vocabulary) | Williams & Peng 1991; as TRL's `entropy_coef` |
| `spread_groups` | which groups' rewards are not all equal (DAPO's dynamic sampling keeps only those) | Yu et al. 2025 (DAPO), eq. 11 |
| `clipped_value_loss` | ½·max((V − R)², (clip(V, V_old ± ε) − R)²) | PPO's value clipping (as in OpenAI baselines) |
| `aggregate` | token-mean, sequence-mean, or Dr. GRPO's constant-length sum | — |
| `AdaptiveKLController` | β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) | Ziegler et al. 2019, eq. 2 |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def kl_k1(r: Tensor) -> Tensor:
    """k1 = r: unbiased, noisy, can be negative."""
    return r


def kl_k2(r: Tensor) -> Tensor:
    """k2 = r²/2: biased, low variance, never negative."""
    return 0.5 * r.square()


def kl_k3(r: Tensor) -> Tensor:
    """k3 = (e^(−r) − 1) + r: unbiased, low variance, never negative."""
    return torch.expm1(-r) + r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(logps: Tensor, ref_logps: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π, r = log π − log π_ref, by `KL_ESTIMATORS`."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")
    return KL_ESTIMATORS[estimator](logps - ref_logps)


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean).square(), mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries (unbiased variance); padding stays 0.
    shift_mean=False only rescales (PPO's rewards)."""
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """(advantages, returns) by generalised advantage estimation over each response. The value after the
    last real token is 0 (the episode ends at EOS or the length limit); padding gets 0."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO: each reward minus its group's mean, divided by the group's std (unbiased) + eps when `scale`
    (Dr. GRPO: scale=False). A group whose rewards are all equal gets advantage 0."""
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: each reward minus the mean of the other G − 1 rewards of its group (G ≥ 2)."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    groups = rewards.view(-1, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def turn_advantages(turn_rewards: list[list[float]], token_turns: Tensor, group_size: int, kind: str = "grpo",
                    scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Per-token advantages (B, T) of multi-turn episodes, each turn credited with the rewards from that turn on.

    turn_rewards[i]: episode i's reward per model turn; token_turns (B, T): the turn of each completion token
    (any value on padding, which the loss mask removes). Episode i's return from turn t is
    G_it = Σ_{u ≥ t} r_iu. Its turn-t tokens get G_it minus a baseline over the episodes of its group that
    reached turn t: their mean (kind "grpo"; divided by the std of the group's total returns + eps when
    `scale`), or the mean of the others (kind "rloo"; 0 when no other episode reached turn t). So a reward
    earned at turn t reaches the advantages of turns ≤ t and never a later turn's; with one final reward and
    equal turn counts this is exactly `group_advantages` / `rloo_advantages` on every token."""
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"turn advantages support grpo and rloo, not {kind}")
    n = len(turn_rewards)
    turns = max((len(r) for r in turn_rewards), default=0)
    returns = torch.full((n, max(turns, 1)), float("nan"), dtype=torch.float32)
    for i, rewards in enumerate(turn_rewards):
        running = 0.0
        for t in reversed(range(len(rewards))):
            running += float(rewards[t])
            returns[i, t] = running
    per_turn = torch.zeros_like(returns)
    totals = torch.nan_to_num(returns[:, 0]).view(-1, group_size)
    scales = totals.std(dim=1) + eps if kind == "grpo" and scale else torch.ones(totals.shape[0])
    for g in range(n // group_size):
        block = returns[g * group_size:(g + 1) * group_size]
        reached = ~block.isnan()
        count = reached.sum(dim=0, keepdim=True).float()
        total = torch.nan_to_num(block).sum(dim=0, keepdim=True)
        if kind == "grpo":
            advantage = (block - total / count.clamp(min=1)) / scales[g]
        else:
            others = (count - 1).clamp(min=1)
            advantage = torch.where(count > 1, block - (total - block) / others, torch.zeros_like(block))
        per_turn[g * group_size:(g + 1) * group_size] = torch.where(reached, advantage, torch.zeros_like(block))
    index = token_turns.long().clamp(min=0, max=per_turn.shape[1] - 1).cpu()
    return per_turn.gather(1, index).to(token_turns.device)


def reinforce_pp_advantages(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, gamma: float = 1.0) -> Tensor:
    """REINFORCE++: token rewards −β·KL_t plus the sequence score at the last real token, summed to the
    return-to-go (discount γ), then whitened over the whole batch (no critic, no group baseline)."""
    token_rewards = token_level_rewards(scores, kl, mask, kl_coef)
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return whiten(returns * mask, mask)


def grpo_advantage(rewards: Tensor, group_size: int, kl: Tensor | None, mask: Tensor, kl_coef: float,
                   scale: bool) -> Tensor:
    """`group_advantages` in the shared signature of `ADVANTAGES`."""
    return group_advantages(rewards, group_size, scale=scale)


def rloo_advantage(rewards: Tensor, group_size: int, kl: Tensor | None, mask: Tensor, kl_coef: float,
                   scale: bool) -> Tensor:
    """`rloo_advantages` in the shared signature of `ADVANTAGES`."""
    return rloo_advantages(rewards, group_size)


def reinforce_pp_advantage(rewards: Tensor, group_size: int, kl: Tensor | None, mask: Tensor, kl_coef: float,
                           scale: bool) -> Tensor:
    """`reinforce_pp_advantages` in the shared signature of `ADVANTAGES` (needs the per-token KL)."""
    if kl is None:
        raise ValueError("reinforce_pp needs the per-token KL to a reference")
    return reinforce_pp_advantages(rewards, kl, mask, kl_coef)


# GRPO's advantage choices: (rewards (B,), group size, per-token KL (B, T) or None, mask, β, scale) →
# per-sequence (B,) or per-token (B, T) advantages
ADVANTAGES = {"grpo": grpo_advantage, "rloo": rloo_advantage, "reinforce_pp": reinforce_pp_advantage}


def token_level_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """RLHF's per-token reward: −β·KL_t at every response token, plus the sequence's score at its last real
    token (Ziegler et al. 2019; Ouyang et al. 2022)."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * positions).argmax(dim=1)  # the response may start after the prompt's positions
    rows = torch.arange(len(scores), device=scores.device)
    has_tokens = mask.sum(dim=1) > 0
    return rewards.index_put((rows[has_tokens], last[has_tokens]), scores[has_tokens].to(rewards.dtype),
                             accumulate=True)


@dataclass
class PolicyLoss:
    losses: Tensor  # (B, T) per-token loss (0 on padding)
    ratio: Tensor  # (B, T) π/π_old
    clipped: Tensor  # (B, T) bool, the clipped branch was taken
    approx_kl: Tensor  # (B, T) ½(log ρ)², an estimate of KL(π_old‖π)


IMPORTANCE_LEVELS = ("token", "sequence")


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.2,
                        clip_high: float | None = None, level: str = "token") -> PolicyLoss:
    """PPO's clipped surrogate per token; `advantages` is (B, T) or (B,) (broadcast over tokens).
    clip_high defaults to clip_low (DAPO's clip-higher sets it larger).

    level "token": ρ_t = π(y_t)/π_old(y_t) per token. level "sequence" (GSPO): one ratio per response,
    s = exp(mean_t log ρ_t) (the length-normalised sequence likelihood ratio), clipped as a whole and applied
    to every token of the response, so one outlying token cannot swing its sequence's update."""
    clip_high = clip_low if clip_high is None else clip_high
    if level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance sampling level must be one of {', '.join(IMPORTANCE_LEVELS)}, got {level!r}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = (logps - old_logps) * mask
    if level == "sequence":
        log_ratio = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(logps) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    losses = torch.maximum(unclipped, clipped) * mask
    was_clipped = (clipped > unclipped) & mask.bool()
    return PolicyLoss(losses, ratio, was_clipped, 0.5 * log_ratio.square() * mask)


def entropy_bonus(entropy: Tensor, mask: Tensor, coef: float) -> Tensor:
    """−coef × the token-mean entropy over `mask` (entropy: (B, T) per-token entropy of π in nats): added to
    the loss, it rewards keeping the policy's distribution spread out (TRL's `entropy_coef`: L − c·H)."""
    return -coef * masked_mean(entropy, mask)


def spread_groups(rewards: Tensor, group_size: int, tol: float = 1e-6) -> Tensor:
    """(P,) bool: the groups (consecutive runs of group_size rewards) whose rewards are not all equal. A group
    whose rewards are all equal has zero group-relative advantage and teaches nothing (DAPO)."""
    groups = rewards.view(-1, group_size)
    return (groups.max(dim=1).values - groups.min(dim=1).values) > tol


def truncated_is_weights(logps: Tensor, sampler_logps: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict]:
    """Per-token weights min(π_trainer / π_sampler, cap), detached: truncated importance sampling for rollouts
    drawn by another engine (vLLM), whose kernels give slightly different probabilities than the trainer's
    for the same weights (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"). Tokens outside `mask`, or whose sampler log-prob is unknown (NaN), get weight 1.

    logps, sampler_logps, mask: (B, T). Returns the weights and the statistics worth logging: the mean
    absolute log-prob difference, the mean weight and the share of tokens whose ratio exceeded the cap."""
    known = mask.bool() & torch.isfinite(sampler_logps)
    log_ratio = torch.where(known, logps.detach() - sampler_logps, torch.zeros_like(logps))
    ratio = log_ratio.exp()
    weights = torch.where(known, ratio.clamp(max=cap), torch.ones_like(ratio))
    count = known.sum().clamp(min=1)
    stats = {"logp_diff_mean": (log_ratio.abs().sum() / count).item(),
             "is_weight_mean": (weights[known].sum() / count).item() if known.any() else 1.0,
             "is_clipped_ratio": ((ratio > cap) & known).sum().item() / count.item()}
    return weights, stats


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """(per-token ½·max((V − R)², (V_clipped − R)²), bool mask of where the clipped branch was larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    plain, clipped = (values - returns).square(), (clipped_values - returns).square()
    return 0.5 * torch.maximum(plain, clipped) * mask, (clipped > plain) & mask.bool()


def token_mean(losses: Tensor, mask: Tensor, max_length: int | None) -> Tensor:
    """Every token in the batch weighs the same (DAPO; long answers weigh more per sequence)."""
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def sequence_mean(losses: Tensor, mask: Tensor, max_length: int | None) -> Tensor:
    """The mean over each sequence's tokens, then over sequences (GRPO's paper)."""
    return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def constant_length(losses: Tensor, mask: Tensor, max_length: int | None) -> Tensor:
    """Each sequence's sum over a fixed length (max_length, default T), then the mean over sequences
    (Dr. GRPO: no length bias either way)."""
    return ((losses * mask).sum(1) / (max_length or losses.shape[1])).mean()


AGGREGATIONS = {"token-mean": token_mean, "sequence-mean": sequence_mean, "constant-length": constant_length}


def aggregate(losses: Tensor, mask: Tensor, mode: str = "token-mean", max_length: int | None = None) -> Tensor:
    """One scalar from per-token losses, by `AGGREGATIONS`."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"loss aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}")
    return AGGREGATIONS[mode](losses, mask.to(losses.dtype), max_length)


class AdaptiveKLController:
    """Ziegler et al. 2019: move β so the observed KL tracks `target`; the proportional error is clipped
    to ±0.2 and scaled by the samples seen over `horizon`."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int = 10000):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class FixedKLController:
    """A constant β."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
