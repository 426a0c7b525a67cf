"""Combining reward scores: ensembles, and the safety + helpfulness rule of Llama 2.

Llama 2 (Touvron et al. 2023, §3.2.2) trains a safety RM and a helpfulness RM and gives PPO

    R_c = R_s   if the prompt is tagged safety-relevant or R_s < 0.15
          R_h   otherwise
    R   = whiten(logit(R_c))

where R_s, R_h are the RMs' sigmoid-squashed scores. Our RMs output the raw score r (σ(r) = R), so
logit(R_c) is just the raw score of the chosen model, and R_s < 0.15 ⇔ r_s < logit(0.15) ≈ −1.735.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from alignkit.errors import AlignkitError


def _mean(scores: Tensor, k: float) -> Tensor:
    return scores.mean(0)


def _min(scores: Tensor, k: float) -> Tensor:
    return scores.min(0).values


def _mean_minus_std(scores: Tensor, k: float) -> Tensor:
    """Uncertainty-penalised (Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"):
    where the members disagree the reward is lowered, so the policy cannot exploit one member's error."""
    std = scores.std(0, unbiased=False) if scores.shape[0] > 1 else torch.zeros_like(scores[0])
    return scores.mean(0) - k * std


ENSEMBLES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "mean": _mean, "min": _min, "mean_minus_std": _mean_minus_std,
}


def ensemble_scores(scores: Tensor, how: str = "mean", k: float = 1.0) -> Tensor:
    """(N,) combined score from (M, N) member scores: mean, min, or mean − k·std (population std)."""
    if how not in ENSEMBLES:
        raise AlignkitError(f"ensemble: {how!r} is not one of {', '.join(ENSEMBLES)}")
    return ENSEMBLES[how](scores.float(), k)


def whiten(values: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the batch; a batch of one is only centred (its std is undefined)."""
    values = values.float()
    if values.numel() < 2:
        return values - values.mean()
    return (values - values.mean()) / (values.std(unbiased=False) + eps)


def safety_helpfulness(safety: Tensor, helpfulness: Tensor, safety_prompt: Tensor, threshold: float = 0.15,
                       whitened: bool = True) -> Tensor:
    """The Llama 2 rule on raw RM scores (see the module docstring). safety_prompt: (N,) bool tags."""
    if not 0 < threshold < 1:
        raise AlignkitError(f"safety_threshold: must be in (0, 1), got {threshold}")
    unsafe = safety.float() < math.log(threshold / (1 - threshold))
    chosen = torch.where(safety_prompt.bool() | unsafe, safety.float(), helpfulness.float())
    return whiten(chosen) if whitened else chosen


def is_safety_prompt(row: dict) -> bool:
    """A prompt tagged safety-relevant: a `safety` flag, or a `hazard` / `looks_like` tag (the built-in sets)."""
    if "safety" in row:
        return bool(row["safety"])
    return bool(row.get("hazard") or row.get("looks_like"))


class Ensemble:
    """Several reward sources as one: `Ensemble([rm_a, rm_b], how="mean_minus_std", k=1.0)`."""

    def __init__(self, members: Sequence[Callable], how: str = "mean", k: float = 1.0):
        if not members:
            raise AlignkitError("ensemble: needs at least one reward source")
        if how not in ENSEMBLES:
            raise AlignkitError(f"ensemble: {how!r} is not one of {', '.join(ENSEMBLES)}")
        self.members, self.how, self.k = list(members), how, k

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        scores = torch.tensor([m(prompts, completions, **columns) for m in self.members])
        return ensemble_scores(scores, self.how, self.k).tolist()


class SafetyHelpfulness:
    """Llama 2's combination of a safety and a helpfulness reward source. Prompts are tagged from the
    columns `safety`, `hazard` or `looks_like` (lists aligned with the prompts), when present."""

    def __init__(self, safety: Callable, helpfulness: Callable, threshold: float = 0.15, whitened: bool = True):
        self.safety, self.helpfulness, self.threshold, self.whitened = safety, helpfulness, threshold, whitened

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        keys = [k for k in ("safety", "hazard", "looks_like") if k in columns]
        tags = [is_safety_prompt({k: columns[k][i] for k in keys}) for i in range(len(prompts))]
        return safety_helpfulness(torch.tensor(self.safety(prompts, completions, **columns)),
                                  torch.tensor(self.helpfulness(prompts, completions, **columns)),
                                  torch.tensor(tags), self.threshold, self.whitened).tolist()
