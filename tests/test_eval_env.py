"""pass@k and its bootstrap interval; `alignkit eval` in an environment and on single responses; `alignkit
env-demos` writes replay-checked SFT rows, one per assistant turn, that SFT's tokenization accepts."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.cli import main
from alignkit.config import build_config
from alignkit.data.io import load_rows
from alignkit.errors import AlignkitError
from alignkit.methods.evaluate import EvalConfig, run_eval
from alignkit.methods.sft import tokenize_sft
from alignkit.rollout.env_demos import EnvDemosConfig, run_env_demos
from alignkit.stats import bootstrap_mean, pass_at_k

# ----------------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_hand_worked():
    """n=5, c=2: pass@1 = 1 − C(3,1)/C(5,1) = 1 − 3/5 = 0.4; pass@2 = 1 − C(3,2)/C(5,2) = 1 − 3/10 = 0.7;
    pass@4 = 1 (every 4 of 5 samples include a passing one). No passes: 0; all pass: 1."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    # large n stays finite where C(n, k) would not fit a float
    assert 0 < pass_at_k(2000, 3, 100) < 1


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 1, 0), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_share_of_k_subsets_with_a_pass(nck):
    """The estimator equals the exact share of k-subsets of the n samples holding at least one pass."""
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)


def test_bootstrap_mean_interval():
    same = bootstrap_mean([0.25] * 10)
    assert same["mean"] == same["low"] == same["high"] == 0.25 and same["n"] == 10
    rng = random.Random(1)
    values = [rng.random() for _ in range(50)]
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again  # seeded: the same values give the same interval
    assert first["low"] < first["mean"] < first["high"]
    # about ±1.96 standard errors for a mean of 50 values
    spread = math.sqrt(sum((v - first["mean"]) ** 2 for v in values) / 49 / 50)
    assert first["high"] - first["low"] == pytest.approx(2 * 1.96 * spread, rel=0.2)
    assert bootstrap_mean([]) == {"mean": None, "low": None, "high": None, "n": 0}


# ----------------------------------------------------------------------------------------------------
# eval

E_ENV = '''
class LetterE:
    """Reward 1 as soon as the model writes the letter e; one retry after "try again"."""

    def reset(self, row):
        self.turn = 0
        return None

    def step(self, action):
        self.turn += 1
        if "e" in action:
            return None, 1.0, True
        return ("try again", 0.0, False) if self.turn == 1 else (None, 0.0, True)
'''

E_REWARD = '''
def has_e(prompts, completions, **columns):
    return [1.0 if "e" in c else 0.0 for c in completions]
'''


def _file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_summary(summary: dict, samples: list[dict], problems: int, n: int, ks: list[int]) -> None:
    """eval.json agrees with samples.jsonl, and pass@k is a probability that grows with k."""
    assert summary["problems"] == problems and summary["samples_per_problem"] == n
    assert summary["samples"] == len(samples) == problems * n
    assert sum(summary["finish_reasons"].values()) == len(samples)
    for s in samples:
        assert s["passed"] == (s["reward"] >= summary["success_threshold"])
    passed = [sum(s["passed"] for s in samples[p * n:(p + 1) * n]) for p in range(problems)]
    assert summary["passed_samples"] == sum(passed)
    means = []
    for k in ks:
        r = summary["pass_at_k"][str(k)]
        assert r["mean"] == pytest.approx(sum(pass_at_k(n, c, k) for c in passed) / problems)
        assert 0 <= r["low"] <= r["mean"] + 1e-12 and r["mean"] <= r["high"] + 1e-12 and r["high"] <= 1
        means.append(r["mean"])
    assert means == sorted(means)
    reward = summary["mean_reward"]
    assert reward["mean"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))


def test_eval_in_an_environment_end_to_end(tmp_path, capsys):
    env = _file(tmp_path, "letter_e.py", E_ENV) + ":LetterE"
    out = tmp_path / "eval"
    argv = ["eval", "--model", TINY, "--prompts", "builtin:prompts.jsonl", "--dataset_split", "none",
            "--max_problems", "3", "--environment", env, "--max_turns", "2", "--num_samples", "4",
            "--temperature", "1.0", "--k", "1", "2", "--max_new_tokens", "6", "--output_dir", str(out),
            "--device", "cpu"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pass@1 ") and ", pass@2 " in line and line.endswith("on 3 problems")
    summary, samples = json.loads((out / "eval.json").read_text()), _read(out / "samples.jsonl")
    _check_summary(summary, samples, 3, 4, [1, 2])
    assert summary["environment"] == env and 1 <= summary["mean_turns"] <= 2
    assert 0 < summary["passed_samples"] < len(samples)  # some samples pass, some not: pass@k has work to do
    assert set(summary["finish_reasons"]) <= {"done", "length", "max_turns", "max_tokens"}
    for s in samples:
        assert "prompt" in s and 1 <= s["turns"] <= 2 and s["sample"] in range(4)
        assert [m["role"] for m in s["transcript"]][::2] == ["assistant"] * s["turns"]
        assert s["reward"] == (1.0 if "e" in s["transcript"][-1]["content"] else 0.0)
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["pass@1"] == round(summary["pass_at_k"]["1"]["mean"], 4)
    # seeded: the same settings sample the same episodes
    again = build_config(EvalConfig, {**summary["settings"], "output_dir": str(tmp_path / "again")})
    run_eval(again)
    assert _read(tmp_path / "again" / "samples.jsonl") == samples


def test_eval_against_a_baseline_reports_paired_differences(tmp_path, capsys):
    """The same settings twice: every paired difference is exactly 0 with a [0, 0] interval; a baseline whose
    samples are edited to fail everywhere gives +pass@1 equal to this run's pass@1; other problems are refused."""
    env = _file(tmp_path, "letter_e.py", E_ENV) + ":LetterE"
    values = {"model_name_or_path": TINY, "dataset_name": "builtin:prompts.jsonl", "dataset_split": None,
              "max_problems": 4, "environment": env, "max_turns": 2, "num_return_sequences": 3, "temperature": 1.0,
              "k": "1,2", "max_new_tokens": 6, "device": "cpu"}
    run_eval(build_config(EvalConfig, {**values, "output_dir": str(tmp_path / "a")}))
    run_eval(build_config(EvalConfig, {**values, "output_dir": str(tmp_path / "b"), "baseline": str(tmp_path / "a")}))
    (versus,) = json.loads((tmp_path / "b" / "eval.json").read_text())["vs_baselines"]
    for r in [*versus["pass_at_k"].values(), versus["mean_reward"]]:
        assert r["mean"] == r["low"] == r["high"] == 0.0
    assert "against a: pass@1 +0.0 points" in capsys.readouterr().out
    failing = [{**s, "passed": False, "reward": 0.0} for s in _read(tmp_path / "a" / "samples.jsonl")]
    (tmp_path / "a" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in failing))
    run_eval(build_config(EvalConfig, {**values, "output_dir": str(tmp_path / "c"),
                                       "baseline": str(tmp_path / "a" / "eval.json")}))
    summary = json.loads((tmp_path / "c" / "eval.json").read_text())
    assert summary["vs_baselines"][0]["pass_at_k"]["1"]["mean"] == pytest.approx(summary["pass_at_k"]["1"]["mean"])
    with pytest.raises(AlignkitError, match="evaluated other problems"):
        run_eval(build_config(EvalConfig, {**values, "max_problems": 3, "output_dir": str(tmp_path / "d"),
                                           "baseline": str(tmp_path / "a")}))


def test_eval_single_responses_scored_by_a_reward_function(tmp_path, capsys):
    reward = _file(tmp_path, "has_e.py", E_REWARD) + ":has_e"
    prompts = tmp_path / "problems.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}.", "split": split}) + "\n"
                               for w, split in [("cats", "test"), ("dogs", "train"), ("trees", "test")]))
    out = tmp_path / "single"
    config = build_config(EvalConfig, {"model_name_or_path": TINY, "dataset_name": str(prompts),
                                       "reward_funcs": reward, "num_return_sequences": 2, "temperature": 1.0,
                                       "k": "1,2", "max_new_tokens": 6, "output_dir": str(out), "device": "cpu"})
    assert run_eval(config) == out / "eval.json"
    assert capsys.readouterr().out.strip().endswith("on 2 problems (test split)")
    summary, samples = json.loads((out / "eval.json").read_text()), _read(out / "samples.jsonl")
    _check_summary(summary, samples, 2, 2, [1, 2])
    assert summary["environment"] is None and "mean_turns" not in summary
    assert {s["split"] for s in samples} == {"test"}
    for s in samples:
        assert "transcript" not in s and s["finish_reason"] in ("stop", "length")
        assert s["reward"] == (1.0 if "e" in s["completion"] else 0.0)
        assert s["rewards"] == {"has_e": s["reward"]}


@pytest.mark.parametrize("extra, says", [
    (["--num_samples", "4"], "config: temperature: 4 samples per problem need temperature > 0"),
    (["--num_samples", "2", "--temperature", "1", "--k", "1", "3"], "config: k: each k must be between 1 and"),
    (["--environment", ""], "config: reward_funcs: without an environment"),
    (["--environment", "no_such_module_xyz:Env"], "environment"),
    (["--max_turns", "0"], "config: max_turns: must be at least 1"),
    (["--dataset_split", "validation"], "split: no rows with split 'validation'"),
])
def test_eval_bad_settings_are_one_line(tmp_path, capsys, extra, says):
    argv = ["eval", "--model", TINY, "--prompts", "builtin:calculator.jsonl", "--environment", "calculator",
            "--max_new_tokens", "4", "--max_problems", "1", "--output_dir", str(tmp_path / "e"),
            "--device", "cpu", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_eval_on_the_builtin_calculator(tmp_path):
    out = tmp_path / "calc"
    config = build_config(EvalConfig, {"model_name_or_path": TINY, "dataset_name": "builtin:calculator.jsonl",
                                       "environment": "calculator", "max_problems": 2, "max_new_tokens": 6,
                                       "max_turns": 2, "output_dir": str(out), "device": "cpu"})
    run_eval(config)
    summary, samples = json.loads((out / "eval.json").read_text()), _read(out / "samples.jsonl")
    _check_summary(summary, samples, 2, 1, [1])
    assert summary["dataset_split"] == "test" and {s["split"] for s in samples} == {"test"}


# ----------------------------------------------------------------------------------------------------
# env-demos

ECHO_ENV = '''
from alignkit.envs.base import ToolEnvironment, format_tool_call


class Echo(ToolEnvironment):
    """Echo the word with the tool, then answer it. Rows with "bad": "answer" demonstrate a wrong answer,
    "bad": "tool" a tool reply the environment would not give."""

    tools = [{"name": "echo", "description": "repeat a word",
              "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}]

    def question(self, row):
        return f"Repeat the word {row['word']}."

    def call(self, name, arguments):
        return arguments["word"].upper()

    def score(self, answer):
        return float(answer == self.row["word"].upper())

    def demonstration(self, row):
        self.row = row
        answer = "WRONG" if row.get("bad") == "answer" else row["word"].upper()
        reply = "something else" if row.get("bad") == "tool" else self.call("echo", {"word": row["word"]})
        return self.opening(row) + [
            {"role": "assistant", "content": format_tool_call("echo", {"word": row["word"]})},
            {"role": "tool", "content": reply},
            {"role": "assistant", "content": f"<answer>{answer}</answer>"},
        ]
'''


def _echo(tmp_path) -> tuple[str, str]:
    env = _file(tmp_path, "echo_env.py", ECHO_ENV) + ":Echo"
    rows = [{"prompt": "p", "word": "apple", "split": "train"}, {"prompt": "p", "word": "pear", "split": "train"},
            {"prompt": "p", "word": "plum", "split": "train", "bad": "answer"},
            {"prompt": "p", "word": "fig", "split": "train", "bad": "tool"},
            {"prompt": "p", "word": "kiwi", "split": "test"}]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return env, str(data)


def test_env_demos_writes_one_checked_row_per_assistant_turn(tmp_path, tiny_tokenizer):
    env, data = _echo(tmp_path)
    out = tmp_path / "demos"
    config = build_config(EnvDemosConfig, {"environment": env, "dataset_name": data, "output_dir": str(out)})
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 demonstrations .*1 with a final reward below 1; "
                                         r"1 with tool replies other than the environment's"):
        path = run_env_demos(config)
    assert path == out / "demos.jsonl"
    rows = _read(path)
    assert len(rows) == 4  # apple and pear, two assistant turns each; the test split's kiwi is not read
    for row in rows:
        assert row["split"] == "train" and [m["role"] for m in row["completion"]] == ["assistant"]
        assert row["prompt"][-1]["role"] in ("user", "tool")
    first, second = rows[0], rows[1]
    assert [m["role"] for m in second["prompt"]] == ["system", "user", "assistant", "tool"]
    assert second["prompt"][-1]["content"] == "APPLE" and second["completion"][0]["content"] == "<answer>APPLE</answer>"
    assert second["prompt"][:len(first["prompt"]) + 1] == first["prompt"] + first["completion"]
    status = json.loads((out / "run.json").read_text())
    assert (status["demonstrations"], status["dropped"], status["rows"]) == (2, 2, 4)
    # SFT reads the rows ("tool" turns included) and trains exactly the row's assistant turn
    assert load_rows(path, "sft") == rows
    examples, dropped = tokenize_sft(tiny_tokenizer, [second], max_length=1024)
    assert dropped == 0
    trained = [t for t, m in zip(examples[0].input_ids, examples[0].loss_mask) if m]
    assert tiny_tokenizer.decode(trained, skip_special_tokens=True).strip() == "<answer>APPLE</answer>"
    assert trained[-1] == tiny_tokenizer.eos_token_id


def test_env_demos_whole_conversations(tmp_path, tiny_tokenizer):
    env, data = _echo(tmp_path)
    config = build_config(EnvDemosConfig, {"environment": env, "dataset_name": data, "per_turn": False,
                                           "dataset_split": "test", "output_dir": str(tmp_path / "whole")})
    rows = _read(run_env_demos(config))
    assert len(rows) == 1 and rows[0]["split"] == "test"
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    examples, _ = tokenize_sft(tiny_tokenizer, rows, max_length=1024)
    trained = tiny_tokenizer.decode([t for t, m in zip(examples[0].input_ids, examples[0].loss_mask) if m])
    assert "KIWI</answer>" in trained and "Repeat the word" not in trained


def test_env_demos_of_the_builtin_calculator(tmp_path, tiny_tokenizer):
    out = tmp_path / "calc.jsonl"
    config = build_config(EnvDemosConfig, {"environment": "calculator", "dataset_name": "builtin:calculator.jsonl",
                                           "max_problems": 5, "output_dir": str(tmp_path / "unused")})
    assert run_env_demos(config, output=out) == out
    rows = load_rows(out, "sft")
    assert len(rows) >= 5 and all(r["split"] == "train" for r in rows)
    assert not (tmp_path / "unused" / "run.json").exists()  # an explicit output file: no run directory
    examples, dropped = tokenize_sft(tiny_tokenizer, rows, max_length=2048)
    assert dropped == 0 and all(sum(e.loss_mask) for e in examples)


@pytest.mark.parametrize("extra, says", [
    ([], "config: environment: give the environment"),
    (["--environment", "calculator", "--dataset_name", ""], "config: dataset_name: give the prompt rows"),
    (["--environment", "calculator", "--max_problems", "-1"], "config: max_problems: must be >= 0"),
    (["--environment", "DEMOLESS"], "has no demonstrations"),
])
def test_env_demos_bad_settings_are_one_line(tmp_path, capsys, extra, says):
    demoless = _file(tmp_path, "demoless.py", "from alignkit.envs.base import ToolEnvironment\n\n\n"
                     "class Demoless(ToolEnvironment):\n    pass\n") + ":Demoless"
    extra = [demoless if word == "DEMOLESS" else word for word in extra]
    argv = ["env-demos", "--prompts", "builtin:calculator.jsonl", "--max_problems", "1",
            "--output_dir", str(tmp_path / "d"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
