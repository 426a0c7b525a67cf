"""Statistics of judged data, in one place: rates with Wilson intervals, chance-corrected agreement
(Cohen's κ, Fleiss' κ, Krippendorff's α) and how a rate is printed.

Pure Python, no torch: the annotation app, the judges, the red-team report and the CLI all use it.

- Wilson score interval (Wilson 1927) for a proportion: unlike p ± z·√(p(1−p)/n) it stays inside [0, 1]
  and is sensible at p = 0 or 1 and for small n.
- Cohen's κ (Cohen 1960) for two raters over the same items: κ = (p_o − p_e) / (1 − p_e), p_o the share of
  items they agree on, p_e = Σ_k p_k(rater 1)·p_k(rater 2).
- Fleiss' κ (Fleiss 1971) over items with at least two labels, in the form that allows a different number
  of raters n_i per item: P_i = (Σ_k n_ik² − n_i) / (n_i(n_i − 1)), P̄ the mean of P_i,
  p_k = Σ_i n_ik / Σ_i n_i, P_e = Σ_k p_k², κ = (P̄ − P_e) / (1 − P_e). With the same n for every item this
  is the textbook statistic (statsmodels' fleiss_kappa).
- Krippendorff's α, nominal (Krippendorff 2011): from the coincidence matrix o_ck = Σ_u Σ_{i≠j}
  [c_i = c, c_j = k] / (m_u − 1) over items u with m_u ≥ 2 labels, n_c its margins, n = Σ n_c:
  α = 1 − (n − 1)·(Σ_{c≠k} o_ck) / (Σ_{c≠k} n_c·n_k).

Each agreement statistic is None where it is undefined (no overlap, or chance agreement of 1).

- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n samples of a
  problem of which c pass, the unbiased estimate of "at least one of k samples passes" is
  1 − C(n−c, k)/C(n, k), computed as the product 1 − Π_{i=n−c+1..n} (1 − k/i) (no huge binomials).
- The mean of per-problem values with a 95% percentile-bootstrap interval (problems resampled with
  replacement, a fixed seed, so the same values give the same interval).
- AUROC (Mann–Whitney): the probability that a random positive scores above a random negative, ties
  counting half.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

Z_95 = 1.959964


def wilson_interval(successes: float, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default). Ties counted as half a success are fine."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, total: int) -> dict:
    """A measured rate: {"rate" (None without data), "low", "high" (95% Wilson), "n", "successes"}."""
    low, high = wilson_interval(successes, total)
    return {"rate": successes / total if total else None, "low": low, "high": high, "n": total,
            "successes": successes}


def format_rate(r: dict | None, html: bool = False) -> str:
    """A `rate` as "12.5% (4–31)": the rate and its interval in percent, "–" without data. `html` puts the
    interval (and n) in a hint span, as the HTML reports show it."""
    if not r or r.get("rate") is None:
        return "–"
    interval = f"{100 * r['low']:.0f}–{100 * r['high']:.0f}"
    if html:
        return f"{100 * r['rate']:.1f}% <span class=hint>({interval}, n={r['n']})</span>"
    return f"{100 * r['rate']:.1f}% ({interval})"


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


def auroc(scores: list[float], positive: list[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half; None without both
    classes."""
    pos = [s for s, y in zip(scores, positive) if y]
    neg = [s for s, y in zip(scores, positive) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with `c` passing samples out of `n` (Chen et al. 2021):
    1 − C(n−c, k)/C(n, k). ValueError unless 0 <= c <= n and 1 <= k <= n."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def bootstrap_mean(values: list[float], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{"mean", "low", "high" (percentile-bootstrap interval at `level`), "n"} of per-problem `values`;
    mean, low and high are None without values."""
    n = len(values)
    if not n:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return {"mean": math.fsum(values) / n, "low": _quantile(means, tail), "high": _quantile(means, 1 - tail), "n": n}


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, linearly interpolated (numpy's default)."""
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)
