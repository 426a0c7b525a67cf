"""Turn tokenized examples into padded tensors.

Training pads on the right (real tokens keep positions 0..n-1); generation pads on the left (every prompt
ends at the last column, where new tokens are appended). `completion_mask` marks response tokens: the ones
whose log-probabilities count.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.data.tokenize import MaskedExample, Tokenized, TokenizedPair


def pad(sequences: Sequence[Sequence[int]], value: int, side: str = "right", multiple_of: int = 1):
    """A (len(sequences), longest) LongTensor; `multiple_of` rounds the width up (for tensor cores)."""
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    width = -(-width // multiple_of) * multiple_of
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            row = torch.as_tensor(seq, dtype=torch.long)
            if side == "right":
                out[i, : len(seq)] = row
            else:
                out[i, width - len(seq):] = row
    return out


def collate(examples: Sequence[Tokenized], pad_id: int, side: str = "right", multiple_of: int = 1) -> dict:
    """input_ids, attention_mask and completion_mask for a batch of prompt+response examples."""
    ids = [e.input_ids for e in examples]
    ones = [[1] * len(e.input_ids) for e in examples]
    completion = [[0] * len(e.prompt_ids) + [1] * len(e.completion_ids) for e in examples]
    return {
        "input_ids": pad(ids, pad_id, side, multiple_of),
        "attention_mask": pad(ones, 0, side, multiple_of),
        "completion_mask": pad(completion, 0, side, multiple_of),
    }


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, multiple_of: int = 1) -> dict:
    """One batch of 2B rows, the B chosen responses first, then the B rejected: one forward pass for both."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, "right", multiple_of)


def collate_masked(examples, pad_id: int, multiple_of: int = 1) -> dict:
    """Right-padded batch of `MaskedExample`s; their loss masks become the completion_mask."""
    return {
        "input_ids": pad([e.input_ids for e in examples], pad_id, "right", multiple_of),
        "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0, "right", multiple_of),
        "completion_mask": pad([e.loss_mask for e in examples], 0, "right", multiple_of),
    }


def pack(examples, max_length: int) -> list:
    """Group `MaskedExample`s into rows of at most max_length tokens (first fit, longest first).

    Each packed row carries position_ids that restart at 0 for every example: with no attention_mask,
    transformers reads the restarts and lets each token attend only within its own example, so packed
    examples never see each other. The first token of every example is not trained (nothing before it
    in its own example predicts it).
    """
    rows: list[list] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        n = len(example.input_ids)
        slot = next((i for i, r in enumerate(room) if r >= n), None)
        if slot is None:
            rows.append([])
            room.append(max_length)
            slot = len(rows) - 1
        rows[slot].append(example)
        room[slot] -= n
    return [concatenate(row) for row in rows]


def concatenate(examples) -> "PackedExample":
    """One row holding `examples` back to back, position ids restarting at each (see `pack`)."""
    ids, mask, positions = [], [], []
    for e in examples:
        ids += e.input_ids
        mask += [0] + e.loss_mask[1:]
        positions += list(range(len(e.input_ids)))
    return PackedExample(MaskedExample(ids, mask), positions)


def collate_padding_free(examples, pad_id: int) -> dict:
    """A micro-batch as one row with no padding at all: the examples back to back, kept apart by position
    ids. Same log-probs as `collate_masked` (the first token of each example is never trained either way,
    as nothing before it predicts it), none of the compute on pad tokens."""
    return collate_packed([concatenate(examples)], pad_id)


class PackedExample:
    """Several examples in one row, with position ids that restart for each."""

    def __init__(self, example, position_ids: list[int]):
        self.input_ids, self.loss_mask, self.position_ids = example.input_ids, example.loss_mask, position_ids


def collate_packed(rows, pad_id: int) -> dict:
    """Batch of packed rows: input_ids, position_ids, completion_mask and no attention_mask (see `pack`).

    Pad tokens go at the end with positions continuing from 0, so they form one more 'example' that no
    real token attends to.
    """
    width = max(len(r.input_ids) for r in rows)
    positions = [r.position_ids + list(range(width - len(r.input_ids))) for r in rows]
    return {
        "input_ids": pad([r.input_ids for r in rows], pad_id, "right"),
        "position_ids": pad(positions, 0, "right"),
        "completion_mask": pad([r.loss_mask for r in rows], 0, "right"),
    }


def collate_responses(examples: Sequence[Tokenized], pad_id: int, padding_free: bool = False) -> dict:
    """Prompt+response examples whose response log-probs are summed per sequence (DPO, KTO): right-padded
    (`collate`), or one padding-free row with `sequence_lengths` to split the sums by."""
    import torch

    if not padding_free:
        return collate(examples, pad_id)
    masked = [MaskedExample(e.input_ids, [0] * len(e.prompt_ids) + [1] * len(e.completion_ids)) for e in examples]
    batch = collate_padding_free(masked, pad_id)
    batch["sequence_lengths"] = torch.tensor([len(e.input_ids) for e in examples])
    return batch


def collate_sequences(sequences: Sequence[Sequence[int]], pad_id: int, padding_free: bool = False) -> dict:
    """Whole sequences to be scored (rewards, values).

    Padded: input_ids and attention_mask, right-padded. Padding-free: one row with the sequences back to
    back, position_ids restarting at each, and `sequence_ends`, the index of each sequence's last token
    (where its score is read).
    """
    import torch

    if not padding_free:
        return {"input_ids": pad(sequences, pad_id, "right"),
                "attention_mask": pad([[1] * len(s) for s in sequences], 0, "right")}
    ids = [t for s in sequences for t in s]
    positions = [p for s in sequences for p in range(len(s))]
    ends = torch.tensor([len(s) for s in sequences]).cumsum(0) - 1
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]), "sequence_ends": ends}


GROUP_COST = 32  # one more forward call costs about as much as this many more token positions


def length_buckets(lengths: list[int], group_cost: int = GROUP_COST) -> list[list[int]]:
    """Row indices grouped by length so that running each group padded to its longest row costs least.

    Cost = the token positions computed (group size x longest length, summed over groups) + `group_cost`
    per group, the fixed price of one more forward call, in tokens. Sorted by length, the best groups are
    runs of neighbours, so a small dynamic programme over the sorted rows finds the exact optimum.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: least cost of the first j sorted rows; cut[j]: where its last group starts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is order[i:j]; its longest row is order[i]
            cost = best[i] + lengths[order[i]] * (j - i) + group_cost
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def length_groups(batch: dict, keys=("input_ids", "attention_mask", "completion_mask")):
    """(row indices, sub-batch) for each length group of a right-padded batch (see `length_buckets`): the
    group's rows of `keys`, cut to its longest row. A group with no padding left loses its attention mask,
    so it runs plain causal attention (the faster path). Same numbers as the whole padded batch."""
    import torch

    mask = batch["attention_mask"]
    lengths = mask.sum(-1).tolist()
    for group in length_buckets(lengths):
        rows = torch.tensor(group, device=mask.device)
        width = lengths[group[0]]
        sub = {k: batch[k][rows, :width] for k in keys if k in batch}
        if bool(sub["attention_mask"].all()):
            del sub["attention_mask"]
        yield rows, sub
