"""Reward models: scores read at the last real token whatever the padding, and training that learns."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.data.collate import collate_sequences, length_buckets, pad
from alignkit.ops.rewards import sequence_rewards

TEXTS = ["hello there", "a much longer piece of text to score, with a comma", "x", "the cat sat on the mat"]


@pytest.fixture(scope="module")
def tiny_rm():
    from alignkit.models.load import load_reward_model

    torch.manual_seed(0)
    model = load_reward_model("embedded:tiny", device="cpu")
    model.score.weight.data.normal_(0, 1.0)  # a head large enough that a wrong position shows
    return model.eval()


def _sequences(tokenizer):
    return [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in TEXTS]


def _left(seqs, pad_id):
    return {"input_ids": pad(seqs, pad_id, "left"), "attention_mask": pad([[1] * len(s) for s in seqs], 0, "left")}


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_padding_invariance(tiny_rm, tiny_tokenizer, pad_is_eos):
    """Left padding, right padding, bucketed, padding-free, alone, and in a batch with other texts: one
    score per text (≤1e-5), also when the pad id is the EOS id every sequence ends with."""
    seqs = _sequences(tiny_tokenizer)
    pad_id = tiny_tokenizer.eos_token_id if pad_is_eos else tiny_tokenizer.pad_token_id
    with torch.no_grad():
        alone = torch.cat([sequence_rewards(tiny_rm, collate_sequences([s], pad_id)) for s in seqs])
        variants = {
            "right": sequence_rewards(tiny_rm, collate_sequences(seqs, pad_id)),
            "left": sequence_rewards(tiny_rm, _left(seqs, pad_id)),
            "bucketed": sequence_rewards(tiny_rm, collate_sequences(seqs, pad_id), bucketed=True),
            "padding_free": sequence_rewards(tiny_rm, collate_sequences(seqs, pad_id, padding_free=True)),
            "mixed": sequence_rewards(tiny_rm, collate_sequences(seqs[::-1] + seqs[:2], pad_id))[:4].flip(0),
        }
    assert alone.abs().max() > 0.1  # the scores differ from zero, so equality below means something
    for name, scores in variants.items():
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0, msg=name)


def test_reads_the_last_real_token_where_hf_pooling_agrees(tiny_rm, tiny_tokenizer):
    """With pad != EOS and right padding, transformers' own pooling finds the same token: same scores."""
    seqs = _sequences(tiny_tokenizer)
    batch = collate_sequences(seqs, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        theirs = tiny_rm(**batch).logits.squeeze(-1)
        ours = sequence_rewards(tiny_rm, batch)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_lora_wrapped_model_scores_like_its_forward(tiny_tokenizer):
    from alignkit.models.load import load_reward_model
    from alignkit.ops.rewards import reward_parts

    torch.manual_seed(0)
    model = load_reward_model("embedded:tiny", device="cpu", lora={"r": 4, "alpha": 8, "dropout": 0.0}).eval()
    assert reward_parts(model) is not None
    seqs = _sequences(tiny_tokenizer)
    with torch.no_grad():
        ours = sequence_rewards(model, collate_sequences(seqs, tiny_tokenizer.pad_token_id))
        theirs = torch.cat([model(input_ids=torch.tensor([s])).logits.reshape(1) for s in seqs])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_length_buckets_find_the_cheapest_grouping():
    """Lengths 100, 100, 98, 95 | 60, 58 | 10, 9 with a group costing 32 positions:
    three groups cost 4·100 + 2·60 + 2·10 + 3·32 = 636; one padded batch 8·100 + 32 = 832; splitting the
    last pair (10, 9) in two would save 1 position and cost 32 more."""
    lengths = [100, 98, 95, 60, 58, 10, 9, 100]
    groups = length_buckets(lengths, group_cost=32)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[95, 98, 100, 100], [58, 60], [9, 10]]
    assert length_buckets(lengths, group_cost=10_000) == [sorted(range(8), key=lambda i: -lengths[i])]  # one group
    assert len(length_buckets(lengths, group_cost=0)) == 7  # free calls: every distinct length alone
    assert length_buckets([]) == []


def test_bucketed_gradients_equal_padded(tiny_tokenizer):
    """Bucketing changes which pads are computed, not the loss or its gradient."""
    from alignkit.methods.reward_model import RewardExample, collate_rewards, reward_loss
    from alignkit.models.load import load_reward_model

    seqs = _sequences(tiny_tokenizer)
    examples = [RewardExample(seqs[0], seqs[1]), RewardExample(seqs[2], seqs[3], margin=0.5)]
    grads = []
    for layout in ("padded", "bucketed", "padding_free"):
        torch.manual_seed(0)
        model = load_reward_model("embedded:tiny", device="cpu")
        batch = collate_rewards(examples, tiny_tokenizer.pad_token_id, padding_free=layout == "padding_free")
        loss, metrics = reward_loss(model, batch, center_coef=0.01, bucketed=layout == "bucketed")
        loss.backward()
        grads.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    for loss, grad in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, grads[0][1], atol=1e-5, rtol=1e-4)
    assert set(metrics) >= {"accuracy", "margin", "rewards/chosen", "rewards/rejected", "rewards/mean", "rewards/std"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_learns_a_known_preference(tmp_path, make_marker_pairs):
    """Tiny model, marker-word preference: held-out accuracy ≥ 0.95 (it reaches 1.0 in ~40 steps)."""
    from alignkit.config import build_config
    from alignkit.methods.reward_model import RewardConfig, train_reward_model

    data = _write(tmp_path / "pairs.jsonl", make_marker_pairs(400))
    config = build_config(RewardConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "max_steps": 40, "learning_rate": 1e-3, "per_device_train_batch_size": 16, "progress": False,
        "device": "cpu", "eval_steps": 20})
    result = train_reward_model(config)
    assert result.eval_metrics["eval/accuracy"] >= 0.95
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] > 0.5 and result.last_metrics["loss"] < 0.1  # it learned; it did not start there
    assert result.last_metrics["rewards/chosen"] > result.last_metrics["rewards/rejected"]


def test_saved_model_loads_with_plain_transformers_and_keeps_its_scores(tmp_path, tiny_tokenizer, make_marker_pairs):
    from transformers import AutoModelForSequenceClassification

    from alignkit.config import build_config
    from alignkit.methods.reward_model import RewardConfig, train_reward_model

    rows = make_marker_pairs(40)
    for row in rows:
        row["margin"] = 0.5
    data = _write(tmp_path / "pairs.jsonl", rows)
    config = build_config(RewardConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "max_steps": 2, "per_device_train_batch_size": 4, "progress": False, "device": "cpu",
        "use_peft": True, "lora_r": 4, "center_rewards_coefficient": 0.01})
    train_reward_model(config)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    assert model.config.num_labels == 1
    seqs = _sequences(tiny_tokenizer)
    with torch.no_grad():
        ours = sequence_rewards(model, collate_sequences(seqs, tiny_tokenizer.pad_token_id))
        theirs = model(**collate_sequences(seqs, tiny_tokenizer.pad_token_id)).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "complete" and "eval/accuracy" in status["eval"]


def test_split_column_and_eval_file(tmp_path, make_marker_pairs):
    from alignkit.data.io import load_train_eval

    rows = make_marker_pairs(10)
    data = _write(tmp_path / "pairs.jsonl", rows)
    train, held_out = load_train_eval(data, "preference")
    assert len(train) == 8 and len(held_out) == 2
    plain = _write(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "split"} for r in rows])
    train, held_out = load_train_eval(plain, "preference", eval_path=data)
    assert len(train) == 10 and len(held_out) == 10
    from alignkit.errors import AlignkitError

    with pytest.raises(AlignkitError, match="no rows with split 'dev'"):
        load_train_eval(data, "preference", train_split="dev")


def test_smollm2_pad_is_eos_scores_are_padding_invariant(smollm2_tokenizer):
    """The real case: SmolLM2's pad id is its EOS (<|im_end|>), which ends every response."""
    from alignkit.data.tokenize import encode_pair_ids
    from alignkit.models.load import load_reward_model

    assert smollm2_tokenizer.pad_token_id == smollm2_tokenizer.eos_token_id
    torch.manual_seed(0)
    model = load_reward_model("embedded:smollm2-135m-instruct", device="cpu").eval()
    pairs = [("What is 2+2?", "4."), ("Name a colour.", "Blue, like the sky on a clear summer day."),
             ("Hi", "Hello! How can I help you today?")]
    seqs = [sum(encode_pair_ids(smollm2_tokenizer, p, c), []) for p, c in pairs]
    pad_id = smollm2_tokenizer.pad_token_id
    with torch.no_grad():
        alone = torch.cat([sequence_rewards(model, collate_sequences([s], pad_id)) for s in seqs])
        right = sequence_rewards(model, collate_sequences(seqs, pad_id))
        left = sequence_rewards(model, _left(seqs, pad_id))
        bucketed = sequence_rewards(model, collate_sequences(seqs, pad_id), bucketed=True)
    for scores in (right, left, bucketed):
        torch.testing.assert_close(scores, alone, atol=1e-4, rtol=0)


def test_safety_and_helpfulness_models_trained_on_tagged_data_and_combined(tmp_path, make_marker_pairs):
    """Two RMs from one tagged file (Llama 2 §3.2): the safety RM learns from rows with a hazard tag (there
    the refusal marker "sorry" wins), the helpfulness RM from the rest ("banana" wins). The combination
    then scores tagged prompts with the safety RM and the others with the helpfulness RM."""
    from alignkit.config import build_config
    from alignkit.methods.reward_model import RewardConfig, train_reward_model
    from alignkit.rewards.combine import SafetyHelpfulness
    from alignkit.rewards.model import RewardModel

    helpful = make_marker_pairs(200, seed=1)
    harmful = make_marker_pairs(200, seed=2)
    for row in harmful:
        row["chosen"] = row["chosen"].replace("banana", "sorry")
        row["hazard"] = "weapons"
    data = _write(tmp_path / "tagged.jsonl", helpful + harmful)
    paths = {}
    for subset in ("safety", "helpfulness"):
        config = build_config(RewardConfig, {
            "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "prompt_subset": subset,
            "output_dir": str(tmp_path / subset), "max_steps": 30, "learning_rate": 1e-3,
            "per_device_train_batch_size": 16, "progress": False, "device": "cpu"})
        result = train_reward_model(config)
        assert result.eval_metrics["eval/accuracy"] >= 0.9, subset
        paths[subset] = str(tmp_path / subset / "model")
    safety, helpfulness = RewardModel(paths["safety"], device="cpu"), RewardModel(paths["helpfulness"], device="cpu")
    prompts = ["sun moon tree", "sun moon tree"]
    answers = ["the cat sat sorry", "the cat sat banana"]
    combined = SafetyHelpfulness(safety, helpfulness, whitened=False)
    tags = {"hazard": ["weapons", None]}
    scores = combined(prompts, answers, **tags)
    s, h = safety(prompts, answers), helpfulness(prompts, answers)
    assert s[0] > s[1] and h[1] > h[0]  # each learned its own preference
    assert scores[0] == pytest.approx(s[0], abs=1e-5)  # tagged: the safety score
    untagged = s[1] if s[1] < math.log(0.15 / 0.85) else h[1]  # σ(safety) < 0.15 still overrides
    assert scores[1] == pytest.approx(untagged, abs=1e-5)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, make_marker_pairs, monkeypatch):
    from safetensors.torch import load_file

    import alignkit.methods.reward_model as rm
    from alignkit.config import build_config
    from alignkit.methods.reward_model import RewardConfig, train_reward_model

    data = _write(tmp_path / "pairs.jsonl", make_marker_pairs(80))

    def config(out, resume=False):
        return build_config(RewardConfig, {
            "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 6, "save_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
            "progress": False, "device": "cpu", "resume": resume})

    train_reward_model(config(tmp_path / "whole"))
    real, calls = rm.reward_loss, {"n": 0}

    def crash_at_step_5(model, batch, *args):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(model, batch, *args)

    monkeypatch.setattr(rm, "reward_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(config(tmp_path / "cut"))
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "stopped"
    monkeypatch.setattr(rm, "reward_loss", real)
    train_reward_model(config(tmp_path / "cut", resume=True))
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, atol=0, rtol=0, msg=name)
