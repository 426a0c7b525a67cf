"""Per-sequence sums of response log-probs: what every preference loss (DPO, KTO, SimPO, ...) and every
reference strategy scores.

A batch holds several sequences, right-padded, or one padding-free row with `sequence_lengths`. With
`bucketed`, rows of similar length go through the model in groups (few pad positions computed, same
numbers); on several processes it falls back to one padded pass, because every rank must run the same
number of forward passes (DDP and FSDP communicate in each) and the number of length groups differs.
"""

from __future__ import annotations

import torch

from alignkit.data.collate import length_groups
from alignkit.ops.logprobs import sequence_logps
from alignkit.processes import world_size


def sequence_sums(model, batch: dict, bucketed: bool = False, mean_logits: bool = False) -> tuple:
    """(summed response log-probs, response token counts), one per sequence in the batch's order; with
    `mean_logits`, a third tensor: each response's summed vocabulary-mean logits (no gradient)."""
    def sums_of(logps):
        values = (logps.token_logps, logps.mask.long())
        return values + ((logps.token_mean_logits,) if mean_logits else ())

    if "sequence_lengths" in batch:  # one padding-free row: sum each sequence's segment
        lengths = batch["sequence_lengths"]
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        per_token = sums_of(sequence_logps(model, batch, mean_logits=mean_logits))
        return tuple(torch.zeros(len(lengths), device=t.device, dtype=t.dtype).index_add(0, segment, t[0])
                     for t in per_token)
    # on several processes every rank must run the same number of forward passes (DDP and FSDP communicate
    # in each), and the number of length groups differs between ranks: one padded pass instead, same numbers
    if not bucketed or world_size() > 1:
        return tuple(t.sum(-1) for t in sums_of(sequence_logps(model, batch, mean_logits=mean_logits)))
    rows_total = batch["input_ids"].shape[0]
    out = None
    for rows, sub in length_groups(batch):
        parts = [t.sum(-1) for t in sums_of(sequence_logps(model, sub, mean_logits=mean_logits))]
        if out is None:
            out = [torch.zeros(rows_total, device=t.device, dtype=t.dtype) for t in parts]
        out = [o.index_put((rows,), t) for o, t in zip(out, parts)]
    return tuple(out)
