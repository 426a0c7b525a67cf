"""Inter-annotator agreement on nominal labels (a, b, tie, both_bad; skips are not labels).

- Cohen's κ (Cohen 1960) for each pair of annotators, over the items both labelled:
  κ = (p_o − p_e) / (1 − p_e), p_o the share of items they agree on, p_e = Σ_k p_k(rater 1)·p_k(rater 2).
- Fleiss' κ (Fleiss 1971) over all items with at least two labels, in the form that allows a different
  number of raters n_i per item: P_i = (Σ_k n_ik² − n_i) / (n_i(n_i − 1)), P̄ the mean of P_i,
  p_k = Σ_i n_ik / Σ_i n_i, P_e = Σ_k p_k², κ = (P̄ − P_e) / (1 − P_e). With the same n for every item this
  is the textbook statistic (statsmodels' fleiss_kappa).
- Krippendorff's α, nominal (Krippendorff 2011): from the coincidence matrix o_ck = Σ_u Σ_{i≠j}
  [c_i = c, c_j = k] / (m_u − 1) over items u with m_u ≥ 2 labels, n_c its margins, n = Σ n_c:
  α = 1 − (n − 1)·(Σ_{c≠k} o_ck) / (Σ_{c≠k} n_c·n_k).
- Agreement of each annotator with the majority of the *other* annotators on the items where those have
  a majority (leave-one-out, so an annotator does not agree with themself).

Each statistic is None where it is undefined (no overlap, or chance agreement of 1).
"""

from __future__ import annotations

import itertools
from collections import Counter


def cohen_kappa(first: list, second: list) -> float | None:
    if len(first) != len(second) or not first:
        return None
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    left, right = Counter(first), Counter(second)
    expected = sum(left[k] * right[k] for k in left) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(tables: list[Counter]) -> float | None:
    """tables: one Counter of label -> count per item."""
    rows = [t for t in tables if sum(t.values()) >= 2]
    if not rows:
        return None
    agreement = [(sum(c * c for c in t.values()) - sum(t.values())) / (sum(t.values()) * (sum(t.values()) - 1))
                 for t in rows]
    totals = Counter()
    for t in rows:
        totals.update(t)
    n = sum(totals.values())
    expected = sum((c / n) ** 2 for c in totals.values())
    mean = sum(agreement) / len(agreement)
    return None if expected == 1 else (mean - expected) / (1 - expected)


def krippendorff_alpha(units: list[list]) -> float | None:
    """units: the labels each item got (any number per item; items with fewer than 2 are not pairable)."""
    coincidence: Counter = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidence[(labels[i], labels[j])] += 1 / (m - 1)
    margins: Counter = Counter()
    for (c, _), value in coincidence.items():
        margins[c] += value
    n = sum(margins.values())
    if n <= 1:
        return None
    disagreement = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(margins[c] * margins[k] for c in margins for k in margins if c != k)
    return None if expected == 0 else 1 - (n - 1) * disagreement / expected


def agreement_report(votes: dict) -> dict:
    """votes: item -> [(annotator, label, ...)] (as `service.votes_by_item` gives). Returns every statistic
    above plus the number of items with two or more labels."""
    from alignkit.annotate.service import majority

    by_annotator: dict[str, dict] = {}
    for item, item_votes in votes.items():
        for name, label, *_ in item_votes:
            by_annotator.setdefault(name, {})[item] = label
    pairs = []
    for one, two in itertools.combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[one]) & set(by_annotator[two]))
        kappa = cohen_kappa([by_annotator[one][i] for i in shared], [by_annotator[two][i] for i in shared])
        pairs.append({"annotators": [one, two], "items": len(shared),
                      "cohen_kappa": None if kappa is None else round(kappa, 4)})
    with_majority = {}
    for name, labels in sorted(by_annotator.items()):
        hits = total = 0
        for item, label in labels.items():
            verdict = majority([v[1] for v in votes[item] if v[0] != name])
            if verdict is not None:
                total += 1
                hits += label == verdict
        with_majority[name] = {"items": total, "agreement": round(hits / total, 4) if total else None}
    units = [[v[1] for v in item_votes] for item_votes in votes.values()]
    fleiss = fleiss_kappa([Counter(u) for u in units])
    alpha = krippendorff_alpha(units)
    return {"items_with_2_or_more_labels": sum(len(u) >= 2 for u in units),
            "fleiss_kappa": None if fleiss is None else round(fleiss, 4),
            "krippendorff_alpha": None if alpha is None else round(alpha, 4),
            "pairs": pairs, "with_majority": with_majority}
