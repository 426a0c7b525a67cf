"""Offline preference losses: DPO and its family. Pure functions of sequence log-probs.

Notation: for each pair, π_c, π_r are the policy's log-probs of the chosen and rejected responses (summed
over tokens, or averaged where the method says so), ρ_c, ρ_r the reference model's, and

    h = (π_c − ρ_c) − (π_r − ρ_r)          the difference of the two log-ratios,

so that β·(π − ρ) is DPO's implicit reward. Every loss returns a `PreferenceLoss` with per-pair losses and
the chosen/rejected rewards worth logging (TRL's `rewards/chosen`, `rewards/rejected`).

| name      | loss per pair                                              | paper                                  |
|-----------|------------------------------------------------------------|----------------------------------------|
| sigmoid   | −(1−ε)·log σ(βh) − ε·log σ(−βh)   (ε > 0: conservative DPO) | Rafailov et al. 2023, eq. 7; Mitchell 2023 |
| robust    | [−(1−ε)·log σ(βh) + ε·log σ(−βh)] / (1 − 2ε)               | Chowdhury et al. 2024, eq. 8           |
| ipo       | (h − 1/(2β))²   (h from per-token mean log-probs)          | Azar et al. 2023, eq. 17               |
| hinge     | max(0, 1 − βh)                                              | Zhao et al. 2023 (SLiC), eq. 3         |
| simpo     | −log σ(β(π̄_c − π̄_r) − γ)   (π̄: mean log-prob, no reference) | Meng et al. 2024, eq. 6                |
| cpo       | −log σ(β(π_c − π_r))   (no reference; + λ·NLL by the method) | Xu et al. 2024, eq. 3                  |
| orpo      | −λ·log σ(log odds(π̄_c) − log odds(π̄_r)), odds = p/(1−p)     | Hong et al. 2024, eq. 6–7              |
| kto       | λ_D(1 − σ(β(r − z₀))) desirable, λ_U(1 − σ(β(z₀ − r))) undesirable | Ethayarajh et al. 2024, eq. 8   |

RPO (Pang et al. 2024) adds α·NLL of the chosen response to any of them: `nll_term`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class PreferenceLoss:
    """Per-pair (or per-example, for KTO) losses and the implicit rewards worth logging; all (B,)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _rewards(beta: float, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    return (beta * chosen).detach(), (beta * rejected).detach()


def dpo_sigmoid(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO; with label_smoothing ε > 0 the conservative variant (cDPO), which assumes a fraction ε of the
    labels are flipped."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def dpo_robust(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO: an unbiased estimate of the clean-label loss when a fraction ε < 0.5 of labels are flipped."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    logits = beta * (chosen - rejected)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def ipo(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
        beta: float = 0.1) -> PreferenceLoss:
    """IPO: regress the log-ratio difference onto 1/(2β) (β is the paper's τ). Give it per-token mean
    log-probs, as the IPO authors' results (and TRL) do, so the target does not scale with length."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def hinge(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
          beta: float = 0.1) -> PreferenceLoss:
    """SLiC's hinge on the log-ratio difference, with margin 1/β."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    losses = torch.relu(1 - beta * (chosen - rejected))
    return PreferenceLoss(losses, *_rewards(beta, chosen, rejected))


def simpo(policy_chosen_mean: Tensor, policy_rejected_mean: Tensor, beta: float = 2.0, gamma: float = 0.5,
          label_smoothing: float = 0.0) -> PreferenceLoss:
    """SimPO: reference-free; the reward is β × the mean token log-prob, and the chosen must win by γ."""
    logits = beta * (policy_chosen_mean - policy_rejected_mean) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, *_rewards(beta, policy_chosen_mean, policy_rejected_mean))


def cpo(policy_chosen: Tensor, policy_rejected: Tensor, beta: float = 0.1,
        label_smoothing: float = 0.0) -> PreferenceLoss:
    """CPO's preference term: DPO with a uniform reference (the method adds the NLL of the chosen)."""
    logits = beta * (policy_chosen - policy_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, *_rewards(beta, policy_chosen, policy_rejected))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, accurate in float32 too: log(−expm1(x)) near 0, log1p(−eˣ) below −ln 2
    (Mächler 2012). x is kept below 0 by the dtype's smallest normal number, so p = 1 stays finite."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(mean_logps: Tensor) -> Tensor:
    """log(p / (1 − p)) for p = exp(mean token log-prob), computed stably (log p − log(1 − p))."""
    return mean_logps - log1mexp(mean_logps)


def orpo(policy_chosen_mean: Tensor, policy_rejected_mean: Tensor, lam: float = 0.1) -> tuple[PreferenceLoss, Tensor]:
    """ORPO's odds-ratio term, λ·(−log σ(log odds_c − log odds_r)) per pair (the method adds the chosen's
    NLL). Also returns the log odds ratio (TRL's `log_odds_ratio`)."""
    ratio = log_odds(policy_chosen_mean) - log_odds(policy_rejected_mean)
    losses = -lam * F.logsigmoid(ratio)
    return PreferenceLoss(losses, *_rewards(lam, policy_chosen_mean, policy_rejected_mean)), ratio.detach()


def kto(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor, beta: float = 0.1,
        desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO on unpaired examples. r = π − ρ per example; z₀ = max(0, kl) is the reference point (the batch
    estimate of KL(π‖ρ) from mismatched prompt/response pairs), detached. Desirable examples lose
    λ_D(1 − σ(β(r − z₀))), undesirable ones λ_U(1 − σ(β(z₀ − r))). `chosen_rewards` holds β·r of the
    desirable examples and `rejected_rewards` of the undesirable ones (either may be empty)."""
    z0 = kl.detach().clamp(min=0)
    r = policy_logps - ref_logps
    desirable = desirable.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    rewards = (beta * r).detach()
    return PreferenceLoss(losses, rewards[desirable], rewards[~desirable])


def nll_term(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """(B,) per-token negative log-likelihood of each chosen response (RPO, CPO and ORPO add α times it)."""
    return -chosen_logps / chosen_lengths.clamp(min=1)


PAIRED_LOSSES = {"sigmoid": dpo_sigmoid, "robust": dpo_robust, "ipo": ipo, "hinge": hinge}
