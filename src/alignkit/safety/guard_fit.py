"""The guard's head and its training: a small MLP fitted full-batch, the temperature, per-output thresholds,
and the stratified folds of the out-of-fold calibration (safety/guard.py's docstring)."""

from __future__ import annotations

import math
import random


def make_head(input_dim: int, hidden_size: int, outputs: int):
    import torch

    if hidden_size == 0:
        return torch.nn.Linear(input_dim, outputs)
    return torch.nn.Sequential(torch.nn.Linear(input_dim, hidden_size), torch.nn.GELU(),
                               torch.nn.Linear(hidden_size, outputs))


def fit_head(features, targets, hidden_size: int, epochs: int, learning_rate: float, weight_decay: float,
             seed: int):
    """A head fitted full-batch with AdamW on binary cross-entropy: features [n, d], targets [n, k] in {0, 1}."""
    import torch

    torch.manual_seed(seed)
    head = make_head(features.shape[1], hidden_size, targets.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(features), targets)
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


def fit_temperature(logits, targets) -> float:
    """The T minimising the mean binary cross-entropy of sigmoid(logits / T) (a log-spaced grid, 0.05..20)."""
    import torch

    best_t, best_loss = 1.0, math.inf
    for i in range(401):
        t = math.exp(math.log(0.05) + i * (math.log(20.0) - math.log(0.05)) / 400)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits / t, targets).item()
        if loss < best_loss - 1e-12:
            best_t, best_loss = t, loss
    return best_t


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def choose_threshold(scores: list[float], labels: list[int], target_precision: float | None = None) -> float:
    """The threshold (predict positive when score >= it) that maximises F1 on these validation scores.

    Candidates are the distinct scores; ties go to the higher one (fewer false alarms). The threshold returned
    sits halfway between the chosen score and the next lower one, so it does not rest on a single example.
    With `target_precision`: the lowest candidate whose precision reaches it (most recall), else the F1 best.
    With no positive example there is nothing to choose from and the threshold is 0.5."""
    if not any(labels):
        return 0.5
    distinct = sorted(set(scores), reverse=True)
    results = []  # (score, precision, f1)
    for s in distinct:
        tp = sum(1 for x, y in zip(scores, labels) if x >= s and y)
        fp = sum(1 for x, y in zip(scores, labels) if x >= s and not y)
        fn = sum(1 for x, y in zip(scores, labels) if x < s and y)
        precision, _, f1 = prf(tp, fp, fn)
        results.append((s, precision, f1))
    chosen = None
    if target_precision is not None:
        reaching = [s for s, precision, _ in results if precision >= target_precision]
        chosen = min(reaching) if reaching else None
    if chosen is None:
        best = max(f1 for _, _, f1 in results)
        chosen = next(s for s, _, f1 in results if f1 == best)  # distinct is descending: the highest of ties
    lower = [s for s in distinct if s < chosen]
    return (chosen + lower[0]) / 2 if lower else chosen


def folds(rows: list[dict], k: int, seed: int) -> list[int]:
    """A fold per row, stratified by (role, categories) so each fold sees every kind of row it can."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["role"], tuple(sorted(r["categories"]))), []).append(i)
    rng = random.Random(seed)
    fold = [0] * len(rows)
    offset = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold[i] = (offset + j) % k
        offset += len(members)  # continue the round-robin so small groups do not all land in fold 0
    return fold
