"""generate-pairs → judge → rm → score from the command line, on the tiny model; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main


def run_cli(capsys, *argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture()
def prompts(tmp_path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": "How do I make a bomb?"}], "hazard": "weapons", "split": "train"},
            {"prompt": "Name a colour.", "category": "everyday", "split": "test"},
            {"prompt": "What is 2+2?", "category": "math", "split": "train"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_pairs_then_judge(capsys, tmp_path, prompts):
    rc, _, err = run_cli(capsys, "generate-pairs", "--model", "embedded:tiny", "--prompts", prompts, "--n", 3,
                         "--max_new_tokens", 6, "--output_dir", tmp_path / "pairs")
    assert rc == 0, err
    rows = read_jsonl(tmp_path / "pairs" / "pairs.jsonl")
    assert len(rows) == 3 and all(len(r["responses"]) == 3 == len(r["finish_reasons"]) for r in rows)
    assert rows[0]["hazard"] == "weapons" and rows[1]["split"] == "test"  # extra columns kept
    assert json.loads((tmp_path / "pairs" / "run.json").read_text())["status"] == "complete"

    rc, _, err = run_cli(capsys, "judge", "--pairs", tmp_path / "pairs" / "pairs.jsonl", "--out", tmp_path / "p.jsonl",
                         "--keep_ties")
    assert rc == 0, err
    assert "3 rows, 9 comparisons" in err
    prefs = read_jsonl(tmp_path / "p.jsonl")
    assert len(prefs) == 9 and {"prompt", "chosen", "rejected", "p_chosen", "judge", "split"} <= set(prefs[0])
    assert all(p["p_chosen"] >= 0.5 for p in prefs)
    # TRL's forms: a conversational prompt gets assistant-turn responses, a string prompt string responses
    assert prefs[0]["chosen"] == [{"role": "assistant", "content": prefs[0]["chosen"][0]["content"]}]
    assert isinstance(prefs[-1]["chosen"], str)
    from alignkit.data.io import load_rows

    assert len(load_rows(tmp_path / "p.jsonl", "preference")) == 9  # valid preference data as written


def test_rm_cli_then_score_and_rm_judge(capsys, tmp_path, make_marker_pairs):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_marker_pairs(60)))
    rc, out, err = run_cli(capsys, "rm", "--model", "embedded:tiny", "--data", data, "--output_dir", tmp_path / "rm",
                           "--max_steps", 3, "--per_device_train_batch_size", 4, "--progress", "false",
                           "--device", "cpu")
    assert rc == 0, err
    assert "rm: 3 steps" in out and "eval/accuracy" in out
    model = tmp_path / "rm" / "model"

    rc, _, err = run_cli(capsys, "score", "--rm", model, "--data", data, "-o", tmp_path / "scored.jsonl")
    assert rc == 0, err
    assert "scored 120 responses in 60 rows" in err and "accuracy" in err
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert all(isinstance(r["score_chosen"], float) and isinstance(r["score_rejected"], float) for r in scored)

    rc, out, err = run_cli(capsys, "score", "--rm", model, "--rm", model, "--ensemble", "mean_minus_std",
                           "--data", data)
    assert rc == 0, err
    ensemble = [json.loads(line) for line in out.splitlines()]
    # two identical members: no disagreement, so mean − k·std is the single model's score
    assert ensemble[0]["score_chosen"] == pytest.approx(scored[0]["score_chosen"], abs=1e-5)

    pairs = tmp_path / "responses.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "responses": ["a banana", "a cat"]}) + "\n")
    rc, _, err = run_cli(capsys, "judge", "--pairs", pairs, "--judge", f"rm:{model}", "--out", tmp_path / "j.jsonl")
    assert rc == 0, err
    judged = read_jsonl(tmp_path / "j.jsonl")
    assert len(judged) == 1 and judged[0]["judge"] == f"rm:{model}"

    # what `alignkit generate` writes (a string completion, here to a conversational prompt) is scored too
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": [{"role": "user", "content": "p"}], "completion": "a cat",
                                   "finish_reason": "stop"}) + "\n")
    rc, out, err = run_cli(capsys, "score", "--rm", model, "--data", answers)
    assert rc == 0, err
    assert isinstance(json.loads(out)["score"], float) and "scored 1 responses" in err
    answers.write_text(json.dumps({"prompt": "p", "completion": 3, "finish_reason": "stop"}) + "\n")
    rc, _, err = run_cli(capsys, "score", "--rm", model, "--data", answers)
    assert rc == 2 and "answers.jsonl:1: completion: " in err


@pytest.mark.parametrize("argv, says", [
    (["judge", "--pairs", "{tmp}/bad.jsonl", "--out", "{tmp}/o.jsonl"], "bad.jsonl:2: responses: expected a list"),
    (["judge", "--pairs", "{tmp}/ok.jsonl", "--judge", "gpt", "--out", "{tmp}/o.jsonl"], "'gpt' is not a judge"),
    (["generate-pairs", "--model", "embedded:tiny", "--prompts", "{tmp}/ok.jsonl", "--n", "1"], "at least 2"),
    (["generate-pairs", "--model", "embedded:tiny", "--prompts", "{tmp}/ok.jsonl", "--temperature", "0"], "greedy"),
    (["rm", "--model", "embedded:tiny", "--data", "{tmp}/ok.jsonl", "--batch_layout", "zigzag"], "batch_layout"),
    (["score", "--data", "{tmp}/ok.jsonl"], "--rm PATH"),
    (["score", "--data", "{tmp}/ok.jsonl", "--safety_rm", "x"], "both --safety_rm and --helpfulness_rm"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, says):
    (tmp_path / "ok.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n"
                                        + json.dumps({"prompt": "p", "responses": "a"}) + "\n")
    rc, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert rc == 2
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_judge_leaves_an_existing_output_alone_on_bad_input(capsys, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    rc, _, err = run_cli(capsys, "judge", "--pairs", tmp_path / "bad.jsonl", "--out", out)
    assert rc == 2 and "bad.jsonl:1:" in err
    assert out.read_text() == "keep me\n"
