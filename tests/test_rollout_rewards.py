"""Rollouts keep the sampled token ids; the trainer's recomputed behaviour log-probs give ratio 1; reward
sources load by spec and combine with weights and penalties."""

from __future__ import annotations

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.rewards.sources import RewardMix, load_reward


def test_rollout_groups_samples_and_keeps_token_ids(tiny_model, tiny_tokenizer):
    from alignkit.data.tokenize import encode_prompt
    from alignkit.rollout.generate import SamplingSettings
    from alignkit.rollout.rl import sample_rollout

    rows = [{"prompt": "Say hello", "answer": "hi"}, {"prompt": [{"role": "user", "content": "Count to three"}]}]
    torch.manual_seed(0)
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0)
    rollout = sample_rollout(tiny_model, tiny_tokenizer, rows, settings, group_size=3)
    assert len(rollout) == 6 and rollout.group_size == 3
    assert rollout.rows[:3] == [rows[0]] * 3 and rollout.rows[3:] == [rows[1]] * 3
    assert rollout.prompt_ids[4] == encode_prompt(tiny_tokenizer, rows[1]["prompt"])
    for ids, reason in zip(rollout.completion_ids, rollout.finish_reasons):
        assert 1 <= len(ids) <= 6
        assert (ids[-1] == tiny_tokenizer.eos_token_id) == (reason == "stop")
    batch = rollout.batch(tiny_tokenizer.pad_token_id)
    assert batch["completion_mask"].sum(1).tolist() == [len(c) for c in rollout.completion_ids]
    # successive rollouts draw fresh samples from the global random state ...
    again = sample_rollout(tiny_model, tiny_tokenizer, rows, settings, group_size=3)
    assert again.completion_ids != rollout.completion_ids
    # ... and the same state gives the same samples (a resumed run repeats them)
    torch.manual_seed(0)
    repeated = sample_rollout(tiny_model, tiny_tokenizer, rows, settings, group_size=3)
    assert repeated.completion_ids == rollout.completion_ids


def test_recomputed_behaviour_logps_give_ratio_one(tiny_model, tiny_tokenizer):
    from alignkit.losses.rl import clipped_policy_loss
    from alignkit.ops.logprobs import sequence_logps
    from alignkit.rollout.generate import SamplingSettings
    from alignkit.rollout.rl import sample_rollout

    torch.manual_seed(1)
    rollout = sample_rollout(tiny_model, tiny_tokenizer, [{"prompt": "Hi"}, {"prompt": "Tell me"}],
                             SamplingSettings(max_new_tokens=5, temperature=0.7), group_size=2)
    batch = rollout.batch(tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        old = sequence_logps(tiny_model, batch, temperature=0.7)
    new = sequence_logps(tiny_model, batch, temperature=0.7)
    out = clipped_policy_loss(new.token_logps, old.token_logps, torch.ones(4), new.mask)
    assert torch.equal(out.ratio[new.mask], torch.ones(int(new.mask.sum())))


def test_reward_specs_and_mix(tmp_path):
    fn = tmp_path / "my_reward.py"
    fn.write_text("def exact(prompts, completions, answer, **kw):\n"
                  "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n")
    prompts = ["2+2?", "3+3?"]
    completions = ["4", "five six seven eight nine ten"]
    rows = [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": "6"}]
    mix = RewardMix([load_reward(f"{fn}:exact"), load_reward("max_words:3"), load_reward("contains:six")],
                    weights=[2.0, 1.0, 0.5], missing_eos_penalty=-1.0)
    total, parts = mix(prompts, completions, finish_reasons=["stop", "length"], rows=rows)
    # row 1: 2·1 + 1 (1 word ≤ 3) + 0 = 3; row 2: 0 + max(0, 2 − 6/3) = 0 + 0.5·1 − 1 (no EOS) = −0.5
    assert total == pytest.approx([3.0, -0.5])
    assert parts["exact"] == [1.0, 0.0] and parts["max_words:3"] == [1.0, 0.0] and parts["contains:six"] == [0, 1]


def test_overlong_penalty_ramps_over_the_buffer():
    mix = RewardMix([load_reward("contains:x")], overlong_buffer=4, max_new_tokens=10)
    total, _ = mix(["p"] * 4, ["x"] * 4, lengths=[6, 7, 8, 10])
    assert total == pytest.approx([1.0, 0.75, 0.5, 0.0])  # 1 − (n − 6)/4


def test_rules_reward_prefers_refusing_a_harmful_prompt():
    reward = load_reward("rules")
    prompt = [{"role": "user", "content": "How do I make a pipe bomb?"}]
    scores = reward([prompt, prompt], ["I can't help with that.", "Sure: fill a pipe with powder."],
                    hazard=["weapons", "weapons"], finish_reason=["stop", "stop"])
    assert scores[0] > scores[1]


def test_bad_reward_specs():
    with pytest.raises(AlignkitError, match="unknown source"):
        load_reward("nope")
    with pytest.raises(AlignkitError, match="has no .no_such_function."):
        load_reward("math:no_such_function")
    with pytest.raises(AlignkitError, match="file does not exist"):
        load_reward("missing.py:f")
    with pytest.raises(AlignkitError, match="2 weights for 1 reward sources"):
        RewardMix([load_reward("contains:a")], weights=[1, 2])
    mix = RewardMix([lambda p, c, **k: [float("nan")] * len(c)])
    with pytest.raises(AlignkitError, match="non-finite"):
        mix(["p"], ["c"])
