"""A run directory written by an alignkit command stands for its final model wherever a model is taken
(`models.load.resolve_model_path`): score --rm, rm: rewards, --model of generate and dpo, guard:DIR. A
directory that is neither a model nor a run, or a run with no final model, is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, marker_pairs

from alignkit.cli import main
from alignkit.engine.outputs import write_status
from alignkit.errors import AlignkitError
from alignkit.models.load import resolve_model_path

FAST = ("--max_steps", "1", "--per_device_train_batch_size", "4", "--progress", "false", "--device", "cpu",
        "--logging_steps", "1")


def run_cli(capsys, *argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One `alignkit sft` and one `alignkit rm` run directory (one step each), shared by the tests here."""
    root = tmp_path_factory.mktemp("runs")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in marker_pairs(12)))
    assert main(["sft", "--model", TINY, "--data", "builtin:sft.jsonl", "--output_dir", str(root / "sft"),
                 "--max_length", "64", *FAST]) == 0
    assert main(["rm", "--model", TINY, "--data", str(pairs), "--output_dir", str(root / "rm"), *FAST]) == 0
    for name in ("sft", "rm"):
        assert json.loads((root / name / "run.json").read_text())["status"] == "complete"
        assert (root / name / "model" / "config.json").is_file()
    return {"sft": root / "sft", "rm": root / "rm", "pairs": pairs, "root": root}


def test_resolve_model_path(runs, tmp_path):
    assert resolve_model_path(runs["sft"]) == str(runs["sft"] / "model")
    assert resolve_model_path(runs["sft"] / "model") == str(runs["sft"] / "model")  # a model dir is itself
    for name in (TINY, "HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path / "missing")):
        assert resolve_model_path(name) == name  # embedded names, hub ids, non-directories: unchanged
    with pytest.raises(AlignkitError, match=r": model: not a model directory \(no config.json\) nor an alignkit"):
        resolve_model_path(tmp_path)


def test_score_rm_run_dir(capsys, runs, tmp_path):
    rc, _, err = run_cli(capsys, "score", "--rm", runs["rm"], "--data", runs["pairs"], "-o", tmp_path / "s.jsonl")
    assert rc == 0, err
    assert "scored 24 responses in 12 rows" in err
    scored = read_jsonl(tmp_path / "s.jsonl")
    assert len(scored) == 12 and all(isinstance(r["score_chosen"], float) for r in scored)
    # the same scores as naming model/ itself
    rc, out, err = run_cli(capsys, "score", "--rm", runs["rm"] / "model", "--data", runs["pairs"])
    assert rc == 0, err
    direct = [json.loads(line) for line in out.splitlines()]
    assert [r["score_chosen"] for r in direct] == pytest.approx([r["score_chosen"] for r in scored], abs=1e-5)


def test_generate_from_sft_run_dir(capsys, runs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n{"prompt": "Name a colour."}\n')
    common = ("--prompts", prompts, "--max_new_tokens", "4", "--temperature", "0", "--device", "cpu")
    rc, _, err = run_cli(capsys, "generate", "--model", runs["sft"], *common, "-o", tmp_path / "a.jsonl")
    assert rc == 0, err
    assert "wrote 2 completions" in err
    rc, _, err = run_cli(capsys, "generate", "--model", runs["sft"] / "model", *common, "-o", tmp_path / "b.jsonl")
    assert rc == 0, err
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert len(rows) == 2 and all(isinstance(r["completion"], str) for r in rows)
    assert rows == read_jsonl(tmp_path / "b.jsonl")  # greedy: the run dir is its model/


def test_dpo_from_sft_run_dir_with_ref_model_run_dir(capsys, runs, tmp_path):
    out = tmp_path / "dpo"
    rc, _, err = run_cli(capsys, "dpo", "--model", runs["sft"], "--ref_model", runs["sft"], "--data", runs["pairs"],
                         "--output_dir", out, "--max_length", "64", *FAST)
    assert rc == 0, err
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["steps"] == 1
    assert (out / "model" / "config.json").is_file()


def test_grpo_rm_reward_run_dir(capsys, runs, tmp_path):
    out = tmp_path / "grpo"
    rc, _, err = run_cli(capsys, "grpo", "--model", runs["sft"], "--prompts", "builtin:prompts.jsonl",
                         "--reward", f"rm:{runs['rm']}", "--n", "2", "--max_completion_length", "4",
                         "--output_dir", out, *FAST)
    assert rc == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in m for m in metrics)


def test_ppo_value_and_reward_models_from_rm_run_dir(capsys, runs, tmp_path):
    out = tmp_path / "ppo"
    rc, _, err = run_cli(capsys, "ppo", "--model", runs["sft"], "--prompts", "builtin:prompts.jsonl",
                         "--reward", f"rm:{runs['rm']}", "--value_model", runs["rm"], "--ref_model", runs["sft"],
                         "--max_completion_length", "4", "--num_mini_batches", "1", "--output_dir", out, *FAST)
    assert rc == 0, err
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["steps"] == 1
    assert (out / "model" / "value.pt").is_file()


def test_neither_model_nor_run_dir_is_one_line(capsys, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "notes.txt").write_text("not a model")
    for argv in (("generate", "--model", bare, "--prompts", "builtin:prompts.jsonl"),
                 ("score", "--rm", bare, "--data", tmp_path / "unused.jsonl")):
        rc, out, err = run_cli(capsys, *argv)
        assert (rc, out) == (2, "")
        assert err.count("\n") == 1, err
        assert err.startswith(f"alignkit: error: {bare}: model: not a model directory (no config.json) nor an "
                              "alignkit run directory (no run.json); give "), err


@pytest.mark.parametrize("status, extra, says", [
    ("failed", {"error": "ValueError: boom"}, ("the sft run in this directory is 'failed' and has no final model "
                                               "yet (no model/ subdirectory); it stopped with: ValueError: boom")),
    ("running", {}, "the sft run in this directory is 'running' and has no final model yet (no model/ subdirectory)"),
])
def test_incomplete_run_dir_is_one_line(capsys, tmp_path, status, extra, says):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_status(run_dir, status, "sft", model=TINY, **extra)
    rc, out, err = run_cli(capsys, "generate", "--model", run_dir, "--prompts", "builtin:prompts.jsonl")
    assert (rc, out) == (2, "")
    assert err == f"alignkit: error: {run_dir}: model: {says}\n"


def test_run_dir_of_a_command_that_writes_no_model(capsys, runs, tmp_path):
    gen, prompts = tmp_path / "gen", tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n')
    rc, _, err = run_cli(capsys, "generate-pairs", "--model", TINY, "--prompts", prompts, "--n", "2",
                         "--max_new_tokens", "2", "--output_dir", gen, "--device", "cpu")
    assert rc == 0, err
    method = json.loads((gen / "run.json").read_text())["method"]
    rc, _, err = run_cli(capsys, "score", "--rm", gen, "--data", runs["pairs"])
    assert rc == 2
    assert err == (f"alignkit: error: {gen}: model: the {method} run in this directory is complete but wrote no "
                   "model (no model/ subdirectory with config.json)\n")


def test_guard_dir_from_run_dir(tmp_path):
    from alignkit.safety.guard import GuardClassifier
    from alignkit.safety.guard_fit import make_head

    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(AlignkitError, match=r"bare: guard: not a guard directory \(no guard.json\) nor an alignkit"):
        GuardClassifier.load(bare)
    run_dir = tmp_path / "run"
    settings = {"input_dim": 4, "hidden_size": 0, "encoder": "minilm"}
    GuardClassifier(make_head(4, 0, 2), ["violence"], 1.5, {"violence": 0.5}, settings).save(run_dir / "model")
    write_status(run_dir, "complete", "guard")
    loaded = GuardClassifier.load(run_dir)  # guard:DIR and --guard DIR both load through here
    assert loaded.categories == ["violence"] and loaded.temperature == 1.5
