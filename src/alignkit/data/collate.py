"""Turn tokenized examples into padded tensors.

Training pads on the right (real tokens keep positions 0..n-1); generation pads on the left (every prompt
ends at the last column, where new tokens are appended). `completion_mask` marks response tokens: the ones
whose log-probabilities count.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.data.tokenize import Tokenized, TokenizedPair


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
