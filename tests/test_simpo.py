"""Reference-free methods (SimPO, CPO, ORPO): they learn a known preference; layouts agree; the CLI names them."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.config import build_config
from alignkit.methods.simpo import SimPOConfig, simpo_loss, train_simpo


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("loss_type", ["simpo", "cpo", "orpo"])
def test_each_learns_a_known_preference(tmp_path, make_marker_pairs, loss_type):
    """Tiny model, "banana" wins: held-out reward accuracy ≥ 0.9 within 40 steps, no reference model.
    CPO compares summed log-probs with no reference to cancel length, so its pairs differ only in the marker
    word (otherwise a response a few words shorter wins on length alone)."""
    rows = make_marker_pairs(400)
    if loss_type == "cpo":
        for row in rows:
            row["rejected"] = row["chosen"].replace("banana", "river")
    data = _write(tmp_path / "pairs.jsonl", rows)
    config = build_config(SimPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "max_steps": 40, "learning_rate": 1e-3, "per_device_train_batch_size": 16, "progress": False,
        "device": "cpu", "loss_type": loss_type})
    result = train_simpo(config)
    assert result.eval_metrics["eval/rewards/accuracies"] >= 0.9
    assert "nll_loss" in result.last_metrics
    assert ("log_odds_ratio" in result.last_metrics) == (loss_type == "orpo")


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_layouts_agree(tiny_tokenizer, make_marker_pairs, loss_type):
    from alignkit.data.tokenize import tokenize_rows
    from alignkit.methods.pairs import DPOExample, collate_dpo
    from alignkit.models.load import load_policy

    examples = [DPOExample(p) for p in tokenize_rows(tiny_tokenizer, make_marker_pairs(6), "preference")]
    config = SimPOConfig(dataset_name="x", loss_type=loss_type)
    losses = []
    for layout in ("padded", "bucketed", "padding_free"):
        torch.manual_seed(0)
        model = load_policy("embedded:tiny", device="cpu")
        batch = collate_dpo(examples, tiny_tokenizer.pad_token_id, padding_free=layout == "padding_free")
        losses.append(simpo_loss(model, batch, config, bucketed=layout == "bucketed")[0].detach())
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], atol=1e-5, rtol=1e-6)


def test_cli_orpo_sets_the_loss(tmp_path, make_marker_pairs, capsys):
    from alignkit.cli import main

    data = _write(tmp_path / "pairs.jsonl", make_marker_pairs(20))
    rc = main(["orpo", "--model", "embedded:tiny", "--data", str(data), "--output_dir", str(tmp_path / "run"),
               "--max_steps", "1", "--per_device_train_batch_size", "4", "--lambda", "0.2", "--progress", "false",
               "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("orpo: 1 steps")
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "loss_type: orpo" in config and "lambda_: 0.2" in config
