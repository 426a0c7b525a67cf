"""Reward-model losses.

Bradley–Terry (Bradley & Terry 1952; as used for RLHF reward models by Stiennon et al. 2020, eq. 1, and
Ouyang et al. 2022, eq. 1): the probability that the chosen response beats the rejected one is
σ(r_c − r_r), and the loss is its negative log-likelihood.

Margin (Touvron et al. 2023, Llama 2, eq. 2): −log σ(r_c − r_r − m(r)) with a per-pair margin m that is
larger for pairs the labeller found clearly separated, so those must be separated by more.

Centring (Eisenstein et al. 2023, "Helping or Herding?"): + η · (r_c + r_r)², which pulls the mean
reward towards 0 without changing any preference probability (the BT likelihood only sees differences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class RewardLoss:
    """Per-pair losses and what is worth logging about them. All tensors are (B,)."""

    losses: Tensor
    accuracy: Tensor  # 1.0 where r_c > r_r, 0.5 for an exact tie, else 0.0
    margin: Tensor  # r_c − r_r


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None,
                       center_coef: float = 0.0) -> RewardLoss:
    """−log σ(r_c − r_r − m) + η (r_c + r_r)², per pair.

    chosen, rejected: (B,) rewards of the chosen and rejected responses.
    margin: (B,) optional per-pair margin m (0 when None).
    center_coef: η of the centring term (0 turns it off).
    """
    diff = chosen.float() - rejected.float()
    losses = -F.logsigmoid(diff if margin is None else diff - margin.to(diff))
    if center_coef:
        losses = losses + center_coef * (chosen.float() + rejected.float()) ** 2
    accuracy = (diff > 0).float() + 0.5 * (diff == 0).float()
    return RewardLoss(losses=losses, accuracy=accuracy, margin=diff.detach())


def preference_probability(first: Tensor, second: Tensor) -> Tensor:
    """P(first preferred over second) under Bradley–Terry: σ(r_1 − r_2)."""
    return torch.sigmoid(first.float() - second.float())
