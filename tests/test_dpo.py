"""DPO: the three reference strategies agree, batch layouts agree, and every variant learns a known preference."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.config import build_config
from alignkit.methods.dpo import DPOConfig, dpo_loss
from alignkit.methods.pairs import DPOExample, collate_dpo
from alignkit.models.reference import Reference, precompute_reference


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def examples(tiny_tokenizer, make_marker_pairs):
    from alignkit.data.tokenize import tokenize_rows

    return [DPOExample(p) for p in tokenize_rows(tiny_tokenizer, make_marker_pairs(6), "preference")]


def _lora_policy():
    from alignkit.models.load import load_policy

    torch.manual_seed(0)
    model = load_policy("embedded:tiny", device="cpu", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # move the adapter off zero so the policy differs from its reference
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def test_reference_strategies_give_the_same_loss(tiny_tokenizer, examples):
    """Frozen copy, LoRA adapter disabled and precomputed log-probs: one loss (≤1e-5)."""
    from alignkit.models.load import load_policy

    config = DPOConfig(dataset_name="x", loss_type="sigmoid", beta=0.5)
    policy = _lora_policy()
    copy = load_policy("embedded:tiny", device="cpu").eval()
    pad = tiny_tokenizer.pad_token_id
    losses = {}
    for strategy in ("copy", "adapter"):
        batch = collate_dpo(examples, pad)
        losses[strategy] = dpo_loss(policy, batch, Reference(strategy, copy), config)[0]
    precompute_reference(examples, copy, pad, batch_size=4)
    losses["precomputed"] = dpo_loss(policy, collate_dpo(examples, pad), Reference("precomputed"), config)[0]
    assert losses["copy"].item() != pytest.approx(len(examples) * 0.693147, abs=1e-3)  # policy ≠ reference
    for name in ("adapter", "precomputed"):
        torch.testing.assert_close(losses[name], losses["copy"], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_batch_layouts_give_the_same_loss_and_gradients(tiny_tokenizer, examples, loss_type):
    """Padded, length-bucketed and padding-free batches: same loss and gradients."""
    from alignkit.models.load import load_policy

    config = DPOConfig(dataset_name="x", loss_type=loss_type, rpo_alpha=0.5)
    copy = load_policy("embedded:tiny", device="cpu").eval()
    results = []
    for layout in ("padded", "bucketed", "padding_free"):
        policy = _lora_policy()
        batch = collate_dpo(examples, tiny_tokenizer.pad_token_id, padding_free=layout == "padding_free")
        loss, metrics = dpo_loss(policy, batch, Reference("copy", copy, layout == "bucketed"), config,
                                 bucketed=layout == "bucketed")
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        results.append((loss.detach(), grads, metrics))
    for loss, grads, metrics in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=1e-6)  # IPO sums reach ~170
        torch.testing.assert_close(grads, results[0][1], atol=1e-5, rtol=1e-4)
        assert metrics["nll_loss"] == pytest.approx(results[0][2]["nll_loss"], abs=1e-5)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "nll_loss"} <= set(results[0][2])


@pytest.mark.parametrize("loss_type, extra", [("sigmoid", {}), ("ipo", {}), ("hinge", {}),
                                              ("robust", {"label_smoothing": 0.1})])
def test_each_variant_learns_a_known_preference(tmp_path, make_marker_pairs, loss_type, extra):
    """Tiny model, "banana" wins: held-out implicit-reward accuracy ≥ 0.9 (each reaches 1.0 in 40 steps)."""
    from alignkit.methods.dpo import train_dpo

    data = _write(tmp_path / "pairs.jsonl", make_marker_pairs(400))
    config = build_config(DPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "max_steps": 40, "learning_rate": 1e-3, "per_device_train_batch_size": 16, "progress": False,
        "device": "cpu", "loss_type": loss_type, **extra})
    result = train_dpo(config)
    assert result.eval_metrics["eval/rewards/accuracies"] >= 0.9
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margins"] < result.eval_metrics["eval/rewards/margins"]
    assert (tmp_path / "run" / "reference_logps.pt").exists()  # the default reference without LoRA: precomputed


def test_cli_dpo_with_lora_adapter_reference(tmp_path, make_marker_pairs, capsys):
    from alignkit.cli import main

    data = _write(tmp_path / "pairs.jsonl", make_marker_pairs(40))
    rc = main(["dpo", "--model", "embedded:tiny", "--data", str(data), "--output_dir", str(tmp_path / "run"),
               "--use_peft", "true", "--max_steps", "2", "--per_device_train_batch_size", "4",
               "--progress", "false", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "dpo: 2 steps" in out and "eval/rewards/accuracies" in out
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "ref: auto" in config and not (tmp_path / "run" / "reference_logps.pt").exists()  # adapter: no cache


def test_config_errors_are_one_line():
    from alignkit.errors import AlignkitError

    with pytest.raises(AlignkitError, match="adapter needs a LoRA adapter"):
        build_config(DPOConfig, {"dataset_name": "x", "ref": "adapter"})
    with pytest.raises(AlignkitError, match="loss_type: must be one of"):
        build_config(DPOConfig, {"dataset_name": "x", "loss_type": "kto"})
    assert build_config(DPOConfig, {"dataset_name": "x", "max_steps": 3}).train.learning_rate == 1e-6


def test_likelihood_watch_warns_once():
    from alignkit.methods.dpo import LikelihoodWatch

    watch = LikelihoodWatch(window=2, drop=1.0)
    with pytest.warns(UserWarning, match="both responses are being pushed down"):
        for step in range(6):
            watch({"logps/chosen": -10.0 - step, "rewards/margins": 0.1 * step})
    assert watch.warned
    # with an NLL term already on, the advice is to raise it rather than to turn it on
    watch = LikelihoodWatch(window=2, drop=1.0, rpo_alpha=1.0)
    with pytest.warns(UserWarning, match=r"a larger rpo_alpha \(now 1\)"):
        for step in range(6):
            watch({"logps/chosen": -10.0 - step, "rewards/margins": 0.1 * step})
