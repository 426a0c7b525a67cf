"""The group sampler (`rollout.sampler`): its warpers against hand-worked values, its draws against the
model's own distribution, its greedy decoding against transformers' `generate`, token for token."""

from __future__ import annotations

import torch

from alignkit.rollout.generate import SamplingSettings
from alignkit.rollout.sampler import draw, filter_logits, sample_groups

INF = float("inf")


def test_filter_logits_applies_temperature_then_top_k_then_top_p():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert filter_logits(logits, 2.0).tolist() == [[0.5, 1.0, 1.5, 2.0]]
    assert filter_logits(logits, 1.0, top_k=2).tolist() == [[-INF, -INF, 3.0, 4.0]]
    # softmax = .032 .087 .237 .644: the smallest set reaching 0.7 is the top two, reaching 0.9 the top three
    assert filter_logits(logits, 1.0, top_p=0.7).tolist() == [[-INF, -INF, 3.0, 4.0]]
    assert filter_logits(logits, 1.0, top_p=0.9).tolist() == [[-INF, 2.0, 3.0, 4.0]]
    assert filter_logits(logits, 1.0, top_p=0.5).tolist() == [[-INF, -INF, -INF, 4.0]]  # the first always stays
    # top-k first, then the nucleus of what is left: softmax(3, 4) = .269 .731
    assert filter_logits(logits, 1.0, top_k=2, top_p=0.7).tolist() == [[-INF, -INF, -INF, 4.0]]


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.7, 0.0]]).repeat(40000, 1)
    counts = torch.bincount(draw(probs), minlength=6) / 40000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probs[0], atol=0.01)
    # unnormalised rows work too (the CDF is scaled by its total)
    assert torch.bincount(draw(torch.tensor([[0.0, 3.0]]).repeat(100, 1)), minlength=2).tolist() == [0, 100]


def test_sampled_tokens_follow_the_models_filtered_distribution(tiny_model, tiny_tokenizer):
    from alignkit.data.tokenize import encode_prompt

    prompt = encode_prompt(tiny_tokenizer, "Tell me a story")
    settings = SamplingSettings(max_new_tokens=1, temperature=0.8, top_k=5)
    torch.manual_seed(0)
    rows = sample_groups(tiny_model, [prompt], 4000, settings, [tiny_tokenizer.eos_token_id],
                         tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([prompt])).logits[:, -1]
    expected = filter_logits(logits, 0.8, top_k=5).softmax(-1)[0]
    seen = torch.bincount(torch.tensor([r[0] for r in rows]), minlength=expected.shape[0]) / len(rows)
    assert set(seen.nonzero()[:, 0].tolist()) <= set(expected.nonzero()[:, 0].tolist())
    assert 0.5 * (seen - expected).abs().sum() < 0.04  # total variation; ~0.014 expected from 4000 draws


def test_greedy_matches_transformers_generate_with_rows_stopping_early(tiny_model, tiny_tokenizer):
    from alignkit.data.collate import pad
    from alignkit.data.tokenize import encode_prompt

    prompts = [encode_prompt(tiny_tokenizer, p) for p in ("Hi", "Tell me about the sea and the sky", "Why?")]
    # many stop tokens, so rows stop at different steps and leave the batch
    stops = list(range(60, 160))
    settings = SamplingSettings(max_new_tokens=12, temperature=0.0)
    ours = sample_groups(tiny_model, prompts, 2, settings, stops, tiny_tokenizer.pad_token_id)
    ids = pad(prompts, tiny_tokenizer.pad_token_id, side="left")
    mask = pad([[1] * len(p) for p in prompts], 0, side="left")
    with torch.no_grad():
        theirs = tiny_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                     eos_token_id=stops, pad_token_id=tiny_tokenizer.pad_token_id,
                                     temperature=None, top_p=None, top_k=None)[:, ids.shape[1]:].tolist()

    def cut(row):
        end = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
        return row[:end + 1]

    assert [cut(r) for r in ours] == [cut(theirs[i // 2]) for i in range(6)]
    lengths = {len(cut(r)) for r in ours}
    assert len(lengths) > 1, "the test needs rows that stop at different steps"
