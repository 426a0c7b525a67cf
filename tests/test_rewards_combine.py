"""Ensembles and the Llama 2 safety + helpfulness rule, on constructed scores worked out by hand."""

import math

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.rewards.combine import (Ensemble, SafetyHelpfulness, ensemble_scores, is_safety_prompt,
                                      safety_helpfulness, whiten)

MEMBERS = torch.tensor([[1.0, 4.0], [2.0, 0.0], [3.0, 2.0]])  # 3 reward models x 2 responses


def test_ensembles_hand_worked():
    """Column 0 holds 1, 2, 3: mean 2, min 1, population std √(2/3) = 0.816497.
    Column 1 holds 4, 0, 2: mean 2, min 0, std √(8/3) = 1.632993.
    mean − 1·std = (1.183503, 0.367007); mean − 2·std = (0.367007, −1.265986)."""
    assert ensemble_scores(MEMBERS, "mean").tolist() == pytest.approx([2.0, 2.0])
    assert ensemble_scores(MEMBERS, "min").tolist() == pytest.approx([1.0, 0.0])
    penalised = ensemble_scores(MEMBERS, "mean_minus_std", k=1.0).tolist()
    assert penalised == pytest.approx([1.183503, 0.367007], abs=1e-6)
    penalised = ensemble_scores(MEMBERS, "mean_minus_std", k=2.0).tolist()
    assert penalised == pytest.approx([0.367007, -1.265986], abs=1e-6)
    with pytest.raises(AlignkitError, match="not one of"):
        ensemble_scores(MEMBERS, "median")


def test_ensemble_is_a_reward_source():
    members = [lambda p, c, **_: [1.0, 4.0], lambda p, c, **_: [2.0, 0.0], lambda p, c, **_: [3.0, 2.0]]
    assert Ensemble(members, "min")(["a", "b"], ["x", "y"]) == pytest.approx([1.0, 0.0])
    one = Ensemble(members[:1], "mean_minus_std")  # one member: no spread
    assert one(["a", "b"], ["x", "y"]) == pytest.approx([1.0, 4.0])


def test_safety_helpfulness_rule_hand_worked():
    """threshold 0.15 ⇔ raw safety score below logit(0.15) = −1.734601.
    row 0: tagged safety-relevant → safety 2.0
    row 1: untagged but safety −2.0 < −1.7346 → safety −2.0
    row 2: untagged, safety 0.5 is fine → helpfulness −1.0
    row 3: untagged, safety −3.0 → safety −3.0
    chosen (2, −2, −1, −3): mean −1, deviations (3, −1, 0, −2), population variance 14/4 = 3.5,
    std 1.870829 → whitened (1.603567, −0.534522, 0, −1.069045)."""
    safety = torch.tensor([2.0, -2.0, 0.5, -3.0])
    helpful = torch.tensor([1.0, 3.0, -1.0, 0.0])
    tagged = torch.tensor([True, False, False, False])
    raw = safety_helpfulness(safety, helpful, tagged, whitened=False)
    assert raw.tolist() == pytest.approx([2.0, -2.0, -1.0, -3.0])
    out = safety_helpfulness(safety, helpful, tagged)
    assert out.tolist() == pytest.approx([1.603567, -0.534522, 0.0, -1.069045], abs=1e-5)


def test_threshold_boundary_and_range():
    edge = math.log(0.15 / 0.85)  # σ(edge) = 0.15 exactly: not below the threshold, so helpfulness is used
    out = safety_helpfulness(torch.tensor([edge, edge - 1e-3]), torch.tensor([5.0, 5.0]), torch.tensor([False, False]),
                             whitened=False)
    assert out.tolist() == pytest.approx([5.0, edge - 1e-3], abs=1e-6)
    with pytest.raises(AlignkitError, match="safety_threshold"):
        safety_helpfulness(torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.bool), threshold=1.5)


def test_whiten_single_value_is_only_centred():
    assert whiten(torch.tensor([3.0])).tolist() == [0.0]
    w = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert w.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_safety_helpfulness_source_reads_tags_from_columns():
    combined = SafetyHelpfulness(lambda p, c, **_: [2.0, 2.0], lambda p, c, **_: [-1.0, 7.0], whitened=False)
    scores = combined(["how do I pick a lock", "hello"], ["a", "b"], hazard=["nonviolent_crimes", None])
    assert scores == pytest.approx([2.0, 7.0])
    assert is_safety_prompt({"looks_like": "weapons"}) and is_safety_prompt({"safety": True})
    assert not is_safety_prompt({"category": "cooking"}) and not is_safety_prompt({"safety": False, "hazard": "x"})
