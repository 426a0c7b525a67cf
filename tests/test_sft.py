"""SFT: masks, packing without cross-contamination, learning on the tiny model, the real model with LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.config import build_config
from alignkit.data.builtin import builtin_path
from alignkit.data.collate import collate_masked, collate_packed, pack
from alignkit.data.io import load_rows
from alignkit.data.tokenize import MaskedExample, encode_conversation
from alignkit.methods.sft import SFTConfig, token_mean_loss, tokenize_sft, train_sft
from alignkit.ops.logprobs import sequence_logps

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Green."},
]


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_multi_turn_trains_on_every_assistant_turn_and_nothing_else(which, tiny_tokenizer, smollm2_tokenizer):
    tok = tiny_tokenizer if which == "tiny" else smollm2_tokenizer
    example = encode_conversation(tok, CONVERSATION)
    trained = [t for t, m in zip(example.input_ids, example.loss_mask) if m]
    # exactly the two answers, each closed by EOS; no system, user or header tokens
    assert tok.decode(trained) == f"Blue.{tok.eos_token}Green.{tok.eos_token}"
    # and the ids are the template's rendering (up to the final EOS)
    full = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.decode(example.input_ids).endswith(full[: full.rindex(tok.eos_token) + len(tok.eos_token)])
    if which == "tiny":  # SmolLM2's "BOS" is <|im_start|>, which opens every turn
        assert example.input_ids.count(tok.bos_token_id) == 1


def test_prompt_completion_rows_mask_the_prompt_and_text_rows_train_everything(tiny_tokenizer):
    rows = [{"prompt": "Say hi.", "completion": "Hi!"}, {"text": "Plain text to learn."}]
    (pc, text), dropped = tokenize_sft(tiny_tokenizer, rows, max_length=64)
    assert dropped == 0
    assert tiny_tokenizer.decode([t for t, m in zip(pc.input_ids, pc.loss_mask) if m]) == "Hi!<|im_end|>"
    assert all(text.loss_mask)
    (full,), _ = tokenize_sft(tiny_tokenizer, rows[:1], max_length=64, completion_only_loss=False)
    assert all(full.loss_mask) and full.input_ids == pc.input_ids


def test_truncation_keeps_the_answer_and_drops_what_cannot_fit(tiny_tokenizer):
    long_prompt = "word " * 200
    rows = [{"prompt": long_prompt, "completion": "Short answer."}, {"prompt": "hi", "completion": "x " * 300}]
    examples, dropped = tokenize_sft(tiny_tokenizer, rows, max_length=32)
    assert dropped == 0 and all(len(e.input_ids) <= 32 for e in examples)
    kept = tiny_tokenizer.decode([t for t, m in zip(examples[0].input_ids, examples[0].loss_mask) if m])
    assert kept == "Short answer.<|im_end|>"
    assert examples[0].input_ids[0] == tiny_tokenizer.bos_token_id


def test_packing_matches_unpacked_log_probs(tiny_model, tiny_tokenizer):
    """Packed rows give every example the same log-probs it has alone: no attention across examples."""
    rows = load_rows(builtin_path("sft.jsonl"), "sft")[:6]
    examples, _ = tokenize_sft(tiny_tokenizer, rows, max_length=256)
    alone = []
    for e in examples:
        lp = sequence_logps(tiny_model, collate_masked([e], tiny_tokenizer.pad_token_id))
        alone.append(lp.token_logps[0][lp.mask[0]])
    packed_rows = pack(examples, max_length=512)
    assert len(packed_rows) < len(examples)
    batch = collate_packed(packed_rows, tiny_tokenizer.pad_token_id)
    packed = sequence_logps(tiny_model, batch)
    got = torch.cat([packed.token_logps[i][packed.mask[i]] for i in range(len(packed_rows))])
    # pack reorders longest-first: compare as multisets of per-token values
    want = torch.cat(alone)
    assert got.numel() == want.numel()
    assert torch.allclose(got.sort().values, want.sort().values, atol=1e-5)
    # the first token of each packed example is never trained (its predecessor is another example)
    for row in packed_rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.loss_mask[i] == 0 for i in starts)


def test_sft_learns_on_the_tiny_model(tmp_path, tiny_tokenizer):
    """Held-out completion-only loss falls well below where it starts."""
    from alignkit.models.load import load_policy

    eval_rows = load_rows(builtin_path("sft_eval.jsonl"), "sft")
    eval_examples, _ = tokenize_sft(tiny_tokenizer, eval_rows, max_length=256)
    collate = lambda items: collate_masked(items, tiny_tokenizer.pad_token_id)  # noqa: E731
    start = token_mean_loss(load_policy("embedded:tiny", device="cpu"), eval_examples, collate, 8)
    config = build_config(SFTConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": "builtin:sft.jsonl",
        "eval_dataset_name": "builtin:sft_eval.jsonl", "output_dir": str(tmp_path), "max_steps": 60,
        "learning_rate": 3e-3, "per_device_train_batch_size": 8, "max_length": 256, "progress": False,
        "logging_steps": 10, "warmup_steps": 5,
    })
    result = train_sft(config)
    end = result.eval_metrics["eval/loss"]
    assert end < start - 1.0, (start, end)
    status = json.loads((tmp_path / "run.json").read_text())
    assert status["status"] == "complete" and status["steps"] == 60
    assert (tmp_path / "report.html").exists() and (tmp_path / "model" / "config.json").exists()
    assert (tmp_path / "config.yaml").exists()


def test_nothing_to_train_is_a_clear_error(tmp_path):
    from alignkit.errors import AlignkitError

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p " * 300, "completion": "a " * 300}) + "\n")
    config = build_config(SFTConfig, {"model_name_or_path": "embedded:tiny", "dataset_name": str(data),
                                      "output_dir": str(tmp_path / "out"), "max_length": 2, "progress": False})
    with pytest.raises(AlignkitError, match="no training examples"):
        train_sft(config)


@pytest.mark.integration
def test_smollm2_lora_sft_writes_a_model_transformers_loads(tmp_path):
    """The demo's SFT stage in small: LoRA on the real model; the merged output loads with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = build_config(SFTConfig, {
        "model_name_or_path": "embedded:smollm2-135m-instruct", "dataset_name": "builtin:sft.jsonl",
        "output_dir": str(tmp_path), "use_peft": True, "learning_rate": 1e-3, "max_steps": 3,
        "per_device_train_batch_size": 4, "max_length": 128, "progress": False,
    })
    result = train_sft(config)
    assert result.steps == 3 and result.skipped_steps == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "step-000003" / "adapter_model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_masked_example_type_is_what_collate_expects():
    batch = collate_masked([MaskedExample([1, 2, 3], [0, 1, 1]), MaskedExample([4, 5], [0, 1])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1], [0, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_padding_free_batches_give_the_padded_loss(tiny_model, tiny_tokenizer):
    from alignkit.data.collate import collate_padding_free
    from alignkit.methods.sft import count_trained_tokens, sft_loss

    rows = load_rows(builtin_path("sft.jsonl"), "sft")[:5]
    examples, _ = tokenize_sft(tiny_tokenizer, rows, max_length=256)
    padded = collate_masked(examples, tiny_tokenizer.pad_token_id)
    flat = collate_padding_free(examples, tiny_tokenizer.pad_token_id)
    assert flat["input_ids"].shape == (1, sum(len(e.input_ids) for e in examples))
    assert count_trained_tokens(flat) == count_trained_tokens(padded)
    loss_padded, _ = sft_loss(tiny_model, padded)
    loss_flat, _ = sft_loss(tiny_model, flat)
    assert loss_flat.item() == pytest.approx(loss_padded.item(), rel=1e-5)
