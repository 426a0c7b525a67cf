"""KTO: the reference point is a no-gradient batch KL over mismatched pairs; the reference strategies and the
batch layouts agree; paired data is split in two; it learns a known preference from unpaired labels."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.config import build_config
from alignkit.errors import AlignkitError
from alignkit.methods.kto import KTOConfig, KTOExample, attach_kl_partners, collate_kto, kto_loss, train_kto
from alignkit.models.reference import Reference, precompute_reference


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _unpaired(pairs):
    """Each pair as two unpaired rows, alternating in the file (a thumbs-up log, not a pair list)."""
    from alignkit.data.formats import preference_to_unpaired

    return preference_to_unpaired(pairs)


@pytest.fixture()
def examples(tiny_tokenizer, make_marker_pairs):
    from alignkit.data.tokenize import tokenize_rows

    rows = _unpaired(make_marker_pairs(4))
    items = tokenize_rows(tiny_tokenizer, rows, "unpaired")
    out = [KTOExample(item, row["label"]) for item, row in zip(items, rows)]
    attach_kl_partners(out, seed=0, max_length=1024)
    return out


def _lora_policy():
    from alignkit.models.load import load_policy

    torch.manual_seed(0)
    model = load_policy("embedded:tiny", device="cpu", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def test_kl_partners_are_other_completions_on_the_own_prompt(examples):
    completions = [e.item.completion_ids for e in examples]
    for e in examples:
        assert e.kl_item.prompt_ids == e.item.prompt_ids
        assert e.kl_item.completion_ids in completions
        assert e.kl_item.completion_ids is not e.item.completion_ids
    partners = sorted(completions.index(e.kl_item.completion_ids) for e in examples)
    assert partners == list(range(len(examples)))  # a permutation: each completion is used once


def test_kl_is_the_mean_mismatched_log_ratio_without_gradient(tiny_tokenizer, examples):
    """The KL metric equals mean(log π − log ρ) over the KL sequences, computed by hand; the loss equals the
    formula with that z₀, and no gradient flows through z₀."""
    from alignkit.data.collate import collate_responses
    from alignkit.losses.preference import kto
    from alignkit.models.load import load_policy
    from alignkit.ops.sequence import sequence_sums

    pad = tiny_tokenizer.pad_token_id
    policy, copy = _lora_policy(), load_policy("embedded:tiny", device="cpu").eval()
    config = KTOConfig(dataset_name="x", beta=0.5)
    loss, metrics = kto_loss(policy, collate_kto(examples, pad), Reference("copy", copy), config)
    with torch.no_grad():
        kl_batch = collate_responses([e.kl_item for e in examples], pad)
        by_hand = (sequence_sums(policy, kl_batch)[0] - sequence_sums(copy, kl_batch)[0]).mean()
        matched = collate_responses([e.item for e in examples], pad)
        r_policy, r_ref = sequence_sums(policy, matched)[0], sequence_sums(copy, matched)[0]
    assert metrics["kl"] == pytest.approx(max(by_hand.item(), 0.0), abs=1e-5)
    labels = torch.tensor([e.desirable for e in examples])
    expected = kto(r_policy, r_ref, labels, by_hand, beta=0.5).losses.sum()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)
    assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(
        metrics)
    loss.backward()  # the KL forward ran under no_grad: nothing of it is in the graph
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in policy.parameters())


def test_reference_strategies_give_the_same_loss(tiny_tokenizer, examples):
    from alignkit.models.load import load_policy

    pad = tiny_tokenizer.pad_token_id
    config = KTOConfig(dataset_name="x", beta=0.5)
    policy, copy = _lora_policy(), load_policy("embedded:tiny", device="cpu").eval()
    losses = {s: kto_loss(policy, collate_kto(examples, pad), Reference(s, copy), config)[0]
              for s in ("copy", "adapter")}
    precompute_reference(examples, copy, pad, batch_size=3)
    losses["precomputed"] = kto_loss(policy, collate_kto(examples, pad), Reference("precomputed"), config)[0]
    for name in ("adapter", "precomputed"):
        torch.testing.assert_close(losses[name], losses["copy"], atol=1e-5, rtol=0, msg=name)


def test_batch_layouts_give_the_same_loss_and_gradients(tiny_tokenizer, examples):
    from alignkit.models.load import load_policy

    config = KTOConfig(dataset_name="x")
    copy = load_policy("embedded:tiny", device="cpu").eval()
    results = []
    for layout in ("padded", "bucketed", "padding_free"):
        policy = _lora_policy()
        batch = collate_kto(examples, tiny_tokenizer.pad_token_id, padding_free=layout == "padding_free")
        loss, metrics = kto_loss(policy, batch, Reference("copy", copy, layout == "bucketed"), config,
                                 bucketed=layout == "bucketed")
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        results.append((loss.detach(), grads, metrics["kl"]))
    for loss, grads, kl in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(grads, results[0][1], atol=1e-5, rtol=1e-4)
        assert kl == pytest.approx(results[0][2], abs=1e-5)


@pytest.mark.parametrize("paired", [False, True])
def test_learns_a_known_preference(tmp_path, make_marker_pairs, paired):
    """Tiny model, "banana" is desirable: held-out pair accuracy of the implicit reward ≥ 0.9 in 40 steps,
    from unpaired labels or from pairs split in two."""
    pairs = make_marker_pairs(400)
    rows = pairs if paired else _unpaired(pairs)
    data = _write(tmp_path / "data.jsonl", rows)
    eval_data = _write(tmp_path / "eval.jsonl", [r for r in pairs if r["split"] == "test"])
    config = build_config(KTOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "eval_dataset_name": str(eval_data),
        "output_dir": str(tmp_path / "run"), "max_steps": 40, "learning_rate": 1e-3,
        "per_device_train_batch_size": 16, "progress": False, "device": "cpu", "beta": 0.5})
    result = train_kto(config)
    assert result.eval_metrics["eval/rewards/accuracies"] >= 0.9
    assert result.eval_metrics["eval/rewards/chosen"] > result.eval_metrics["eval/rewards/rejected"]
    assert "kl" in result.last_metrics
    assert (tmp_path / "run" / "reference_logps.pt").exists()  # auto without LoRA: precomputed


def test_config_and_data_errors(tmp_path, make_marker_pairs):
    with pytest.raises(AlignkitError, match="per_device_train_batch_size"):
        build_config(KTOConfig, {"dataset_name": "x", "per_device_train_batch_size": 1}).check()
    sft = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}]}])
    config = build_config(KTOConfig, {"model_name_or_path": "embedded:tiny", "dataset_name": str(sft),
                                      "output_dir": str(tmp_path / "run")})
    with pytest.raises(AlignkitError, match=r"sft.jsonl:1: row: KTO needs unpaired rows"):
        train_kto(config)
    assert not (tmp_path / "run" / "run.json").exists()


def test_unbalanced_data_warns_with_the_fix(tmp_path, make_marker_pairs):
    rows = [{**r, "split": "train"} for r in _unpaired(make_marker_pairs(40))]
    rows = [r for r in rows if r["label"]] + [r for r in rows if not r["label"]][:4]  # 40 up, 4 down
    data = _write(tmp_path / "data.jsonl", rows)
    config = build_config(KTOConfig, {"model_name_or_path": "embedded:tiny", "dataset_name": str(data),
                                      "output_dir": str(tmp_path / "run"), "max_steps": 1, "progress": False,
                                      "device": "cpu", "per_device_train_batch_size": 4})
    with pytest.warns(UserWarning, match="desirable_weight between"):
        train_kto(config)


def test_cli_kto(tmp_path, make_marker_pairs, capsys):
    from alignkit.cli import main

    data = _write(tmp_path / "data.jsonl", _unpaired(make_marker_pairs(20)))
    rc = main(["kto", "--model", "embedded:tiny", "--data", str(data), "--output_dir", str(tmp_path / "run"),
               "--max_steps", "1", "--per_device_train_batch_size", "4", "--desirable_weight", "1.1",
               "--progress", "false", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("kto: 1 steps")
    assert "desirable_weight: 1.1" in (tmp_path / "run" / "config.yaml").read_text()
