"""Inter-annotator agreement of the annotation app's votes (labels a, b, tie, both_bad; skips are not labels).

The statistics themselves (Cohen's κ per pair of annotators, Fleiss' κ, Krippendorff's α) live in
`alignkit.stats`; this module adds the agreement of each annotator with the majority of the *other*
annotators on the items where those have a majority (leave-one-out, so an annotator does not agree with
themself).
"""

from __future__ import annotations

import itertools
from collections import Counter

from alignkit.annotate.service import majority
from alignkit.stats import cohen_kappa, fleiss_kappa, krippendorff_alpha


def agreement_report(votes: dict) -> dict:
    """votes: item -> [(annotator, label, ...)] (as `service.votes_by_item` gives). Returns every statistic
    above plus the number of items with two or more labels."""
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
