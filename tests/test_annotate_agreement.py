"""Agreement statistics against tables worked by hand (in the docstrings) and against scikit-learn's and
statsmodels' implementations."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alignkit.annotate.agreement import agreement_report
from alignkit.stats import cohen_kappa, fleiss_kappa, krippendorff_alpha
from alignkit.annotate.service import majority

CATEGORIES = ("a", "b", "tie", "both_bad")


def test_cohen_kappa_by_hand():
    """rater 1: a a b b tie a; rater 2: a b b b tie a. p_o = 5/6. Marginals (a, b, tie): (3, 2, 1) and
    (2, 3, 1), so p_e = (3·2 + 2·3 + 1·1) / 36 = 13/36 and κ = (30/36 − 13/36) / (23/36) = 17/23."""
    one = ["a", "a", "b", "b", "tie", "a"]
    two = ["a", "b", "b", "b", "tie", "a"]
    assert cohen_kappa(one, two) == pytest.approx(17 / 23)
    assert cohen_kappa(one, one) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement 1: undefined
    assert cohen_kappa([], []) is None


def test_fleiss_kappa_and_krippendorff_alpha_by_hand():
    """Three items, three raters each: [a a a], [a a b], [b b tie].

    Fleiss: P_i = (Σ n_ik² − 3) / 6 = 1, 1/3, 1/3, so P̄ = 5/9; label totals a 5, b 3, tie 1 of 9, so
    P_e = (25 + 9 + 1) / 81 = 35/81 and κ = (45/81 − 35/81) / (46/81) = 10/46.

    Krippendorff (nominal): each ordered pair within an item counts 1/(m − 1) = 1/2. Coincidences:
    o_aa = 3 + 1, o_ab = o_ba = 1, o_bb = 1, o_b,tie = o_tie,b = 1. Margins n_a = 5, n_b = 3, n_tie = 1,
    n = 9. Disagreeing coincidences: 4; Σ_{c≠k} n_c n_k = 2(15 + 5 + 3) = 46. α = 1 − 8·4/46 = 14/46.
    """
    units = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "tie"]]
    assert fleiss_kappa([Counter(u) for u in units]) == pytest.approx(10 / 46)
    assert krippendorff_alpha(units) == pytest.approx(14 / 46)
    assert krippendorff_alpha(units + [["a"]]) == pytest.approx(14 / 46)  # a lone label pairs with nothing
    assert fleiss_kappa([Counter(["a"])]) is None


def random_votes(seed: int, raters: int = 4, items: int = 60, missing: float = 0.0):
    rng = random.Random(seed)
    votes = {}
    for item in range(items):
        truth = rng.choice(CATEGORIES)
        labels = []
        for r in range(raters):
            if rng.random() < missing:
                continue
            labels.append((f"r{r}", truth if rng.random() < 0.6 else rng.choice(CATEGORIES)))
        votes[item] = labels
    return votes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohen_kappa_matches_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    votes = random_votes(seed, raters=2)
    one = [v[0][1] for v in votes.values()]
    two = [v[1][1] for v in votes.values()]
    assert cohen_kappa(one, two) == pytest.approx(metrics.cohen_kappa_score(one, two))
    report = agreement_report(votes)
    assert report["pairs"][0]["cohen_kappa"] == pytest.approx(metrics.cohen_kappa_score(one, two), abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fleiss_kappa_matches_statsmodels(seed):
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    votes = random_votes(seed, raters=5)
    table = [[sum(label == c for _, label in labels) for c in CATEGORIES] for labels in votes.values()]
    ours = fleiss_kappa([Counter(label for _, label in labels) for labels in votes.values()])
    assert ours == pytest.approx(inter_rater.fleiss_kappa(table, method="fleiss"))


def test_krippendorff_alpha_with_complete_data_approaches_fleiss_and_handles_missing():
    """With every item rated by the same raters, nominal α and Fleiss' κ differ only by α's small-sample
    correction of the expected disagreement, so on 400 items they agree to 0.01; with labels missing, α
    still uses every item that has two or more."""
    votes = random_votes(3, raters=4, items=400)
    units = [[label for _, label in labels] for labels in votes.values()]
    kappa = fleiss_kappa([Counter(u) for u in units])
    alpha = krippendorff_alpha(units)
    assert alpha == pytest.approx(kappa, abs=0.01)
    sparse = random_votes(4, raters=4, items=200, missing=0.4)
    report = agreement_report(sparse)
    assert report["items_with_2_or_more_labels"] == sum(len(v) >= 2 for v in sparse.values())
    assert -1 <= report["krippendorff_alpha"] <= 1


def test_agreement_with_the_others_majority_leaves_the_annotator_out():
    """Item 1: r0 a, r1 a, r2 b. Item 2: r0 b, r1 b, r2 b. For r2: the others say a on item 1 (r2
    disagrees) and b on item 2 (agrees): 1/2. For r0: the others split a/b on item 1 (no majority), agree
    b on item 2 (r0 agrees): 1 of 1."""
    votes = {1: [("r0", "a"), ("r1", "a"), ("r2", "b")], 2: [("r0", "b"), ("r1", "b"), ("r2", "b")]}
    report = agreement_report(votes)["with_majority"]
    assert report["r2"] == {"items": 2, "agreement": 0.5}
    assert report["r0"] == {"items": 1, "agreement": 1.0}
    assert majority(["a", "b"]) is None and majority(["a", "a", "b"]) == "a" and majority([]) is None
