"""`ops.prefix.group_logps` (each prompt computed once for its G completions) gives the same log-probs and
the same gradients as running every full (prompt + completion) row, on each of its paths."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.collate import collate
from alignkit.data.tokenize import Tokenized
from alignkit.ops.logprobs import sequence_logps
from alignkit.ops.prefix import group_logps

PROMPTS = [[5, 17, 40, 33, 8], [9, 12, 100, 45, 61, 7, 7, 30, 22], [70, 71, 72, 73, 74, 75, 76]]
LENGTHS = [3, 1, 6, 4, 2, 7, 5, 1, 3, 6, 2, 4]  # four completions per prompt, of different lengths


def completions():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(5, 300, (n,), generator=generator).tolist() for n in LENGTHS]


def full_row_logps(model, prompts, comps, temperature):
    """The reference: every full row through `sequence_logps`, read back per completion token."""
    group = len(comps) // len(prompts)
    batch = collate([Tokenized(prompts[i // group], c) for i, c in enumerate(comps)], pad_id=0)
    full = sequence_logps(model, batch, temperature=temperature)
    out = torch.zeros(len(comps), max(map(len, comps)))
    for i, c in enumerate(comps):
        start = len(prompts[i // group])
        out[i, :len(c)] = full.token_logps[i, start:start + len(c)]
    return out


def values_and_grads(model, compute):
    model.zero_grad()
    logps = compute()
    weights = torch.arange(1, logps.shape[1] + 1, dtype=torch.float32)  # every position counts differently
    (logps * weights).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logps.detach(), grads


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_group_logps_equal_full_rows_values_and_gradients(tiny_model, temperature):
    comps = completions()
    tiny_model.train()
    ours, our_grads = values_and_grads(tiny_model, lambda: group_logps(tiny_model, PROMPTS, comps, 0,
                                                                       temperature).token_logps)
    ref, ref_grads = values_and_grads(tiny_model, lambda: full_row_logps(tiny_model, PROMPTS, comps, temperature))
    mask = group_logps(tiny_model, PROMPTS, comps, 0).mask
    assert mask.sum(1).tolist() == LENGTHS
    assert (ours[~mask] == 0).all()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grads, ref_grads, atol=1e-4, rtol=1e-4)


def test_general_head_path_and_plain_fallbacks_agree(tiny_model, monkeypatch):
    import alignkit.ops.prefix as prefix

    comps = completions()
    reference = full_row_logps(tiny_model, PROMPTS, comps, 1.0).detach()
    with torch.no_grad():
        monkeypatch.setattr(prefix, "_plain_linear_head", lambda model: None)  # logits from the model's head
        general = group_logps(tiny_model, PROMPTS, comps, 0).token_logps
        monkeypatch.undo()
        single = group_logps(tiny_model, [PROMPTS[i // 4] for i in range(12)], comps, 0).token_logps  # G = 1
        monkeypatch.setattr(prefix, "checkpointing", lambda model: True)
        checkpointed = group_logps(tiny_model, PROMPTS, comps, 0).token_logps
    for got in (general, single, checkpointed):
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


def test_group_logps_refuses_completions_not_grouped_by_prompt(tiny_model):
    with pytest.raises(ValueError, match="not G per prompt"):
        group_logps(tiny_model, PROMPTS, completions()[:11], 0)


def naive_entropy(model, prompts, comps, temperature):
    """The textbook entropy: the full rows' logits, softmax over the whole vocabulary, −Σ p log p."""
    group = len(comps) // len(prompts)
    out = torch.zeros(len(comps), max(map(len, comps)))
    for i, c in enumerate(comps):
        prompt = prompts[i // group]
        logits = model(input_ids=torch.tensor([prompt + c])).logits[0].float() / temperature
        logp = logits.log_softmax(-1)[len(prompt) - 1:len(prompt) - 1 + len(c)]
        out[i, :len(c)] = -(logp.exp() * logp).sum(-1)
    return out


@pytest.mark.parametrize("path", ["prefix", "general_head", "full_rows"])
def test_group_entropy_equals_the_full_softmax_entropy_values_and_gradients(tiny_model, monkeypatch, path):
    import alignkit.ops.prefix as prefix

    if path == "general_head":
        monkeypatch.setattr(prefix, "_plain_linear_head", lambda model: None)
    if path == "full_rows":
        monkeypatch.setattr(prefix, "checkpointing", lambda model: True)
    comps = completions()
    tiny_model.train()
    ours, our_grads = values_and_grads(tiny_model, lambda: group_logps(tiny_model, PROMPTS, comps, 0, 0.7,
                                                                       chunk_size=5, entropy=True).entropy)
    ref, ref_grads = values_and_grads(tiny_model, lambda: naive_entropy(tiny_model, PROMPTS, comps, 0.7))
    assert (ours > 0).sum() == sum(LENGTHS)  # every completion token has an entropy, padding has none
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_grads, ref_grads, atol=1e-4, rtol=1e-4)


def test_uniform_logits_have_log_vocabulary_entropy():
    """Hand-worked: equal logits over V tokens give entropy log V; a one-hot-like row gives about 0."""
    from alignkit.ops.logprobs import linear_entropy

    hidden = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[100.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # V = 4
    out = linear_entropy(hidden, weight, None)
    assert out[0].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-6)
    assert out[1].item() == pytest.approx(0.0, abs=1e-6)
