"""Configs from YAML and flags, the pipeline runner, and the training commands of the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from alignkit.cli import main
from alignkit.config import build_config, field_docs, flat_fields, to_flat_dict
from alignkit.errors import AlignkitError
from alignkit.methods.sft import SFTConfig


@dataclass
class Inner:
    rate: float = 0.1
    """How fast."""


@dataclass
class Outer:
    name: str = "x"
    """What it is called."""
    count: int = 1
    """How many."""
    flag: bool = False
    """Whether."""
    maybe: int | None = None
    """Optional number."""
    inner: Inner = field(default_factory=Inner)
    """Shared part."""


def test_flat_keys_reach_nested_parts_and_are_coerced():
    config = build_config(Outer, {"name": "y", "count": "3", "flag": "true", "rate": "0.5", "maybe": "none"})
    assert (config.name, config.count, config.flag, config.inner.rate, config.maybe) == ("y", 3, True, 0.5, None)
    assert to_flat_dict(config) == {"name": "y", "count": 3, "flag": True, "maybe": None, "rate": 0.5}


def test_unknown_keys_and_bad_values_are_one_line_errors():
    with pytest.raises(AlignkitError, match=r"unknown option 'cout' \(did you mean count\?\)"):
        build_config(Outer, {"cout": 2})
    with pytest.raises(AlignkitError, match="count: expected int, got 'many'"):
        build_config(Outer, {"count": "many"})
    with pytest.raises(AlignkitError, match="flag: expected bool"):
        build_config(Outer, {"flag": "perhaps"})
    with pytest.raises(AlignkitError, match="count: expected int, got 2.5"):
        build_config(Outer, {"count": 2.5})


def test_field_docstrings_become_help():
    docs = field_docs(Outer)
    assert docs["count"] == "How many." and docs["rate"] == "How fast." if "rate" in docs else True
    fields = flat_fields(SFTConfig)
    assert "learning_rate" in fields and "max_steps" in fields and "lora_r" in fields
    assert all(help_text for _, _, _, help_text in fields.values()), "every option has a one-line help"


def test_recipe_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset_name: a.jsonl\nlearning_rate: 1.0e-4\nmax_steps: 7\n")
    config = build_config(SFTConfig, {"max_steps": "9"}, recipe=recipe)
    assert (config.dataset_name, config.train.learning_rate, config.train.max_steps) == ("a.jsonl", 1e-4, 9)
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: [unclosed\n")
    with pytest.raises(AlignkitError, match=r"bad.yaml:\d+: yaml:"):
        build_config(SFTConfig, {}, recipe=bad)


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sft_command_trains_and_says_where_outputs_are(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "sft", "--model", "embedded:tiny", "--data", "builtin:sft.jsonl",
                           "--output-dir", tmp_path, "--max_steps", 2, "--per_device_train_batch_size", 2,
                           "--max_length", 128, "--progress", "false")
    assert rc == 0, err
    assert "sft: 2 steps" in out and str(tmp_path / "model") in out and "report.html" in out
    # rerunning into a finished run without --resume is refused in one line
    rc, out, err = run_cli(capsys, "sft", "--model", "embedded:tiny", "--data", "builtin:sft.jsonl",
                           "--output-dir", tmp_path, "--max_steps", 2, "--progress", "false")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--resume" in err


def test_sft_command_reads_a_recipe_and_rejects_unknown_keys(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: embedded:tiny\ndataset_name: builtin:sft.jsonl\nlerning_rate: 1\n")
    rc, out, err = run_cli(capsys, "sft", "--config", recipe, "--output_dir", tmp_path / "o")
    assert rc == 2
    assert err.strip() == "alignkit: error: config: unknown option 'lerning_rate' (did you mean learning_rate?)"
    rc, out, err = run_cli(capsys, "sft", "--model", "embedded:tiny", "--data", tmp_path / "missing.jsonl",
                           "--output_dir", tmp_path / "o2")
    assert rc == 2 and "missing.jsonl: file: does not exist" in err


def test_pipeline_runs_stages_then_skips_them(tmp_path, capsys):
    from alignkit.engine.outputs import read_status

    rc, out, err = run_cli(capsys, "pipeline", "tiny", "--output_dir", tmp_path)
    assert rc == 0, err
    assert read_status(tmp_path / "sft")["status"] == "complete"
    rows = [json.loads(line) for line in (tmp_path / "answers" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("completion" in r for r in rows)
    index = (tmp_path / "index.html").read_text()
    assert "sft/report.html" in index
    prefs = [json.loads(line) for line in (tmp_path / "judge" / "preferences.jsonl").read_text().splitlines()]
    assert prefs and {"chosen", "rejected", "split"} <= set(prefs[0])
    rm = read_status(tmp_path / "reward_model")
    assert rm["status"] == "complete" and "eval/accuracy" in rm["eval"]  # held out: the prompts' test split
    assert "judge (rules): " in out and " preferences, " in out
    from alignkit.demo import print_reward_model_result as _print_reward_model_result

    _print_reward_model_result(tmp_path)  # what `alignkit demo` ends with
    shown = capsys.readouterr().out
    assert "reward model: held-out accuracy" in shown and "95% interval" in shown
    rc, out, err = run_cli(capsys, "pipeline", "tiny", "--output_dir", tmp_path)
    dpo = read_status(tmp_path / "dpo")
    assert dpo["status"] == "complete" and "eval/rewards/accuracies" in dpo["eval"]
    win = json.loads((tmp_path / "win_rate" / "win_rate.json").read_text())
    assert win["prompts"] == 132 and win["wins"] + win["losses"] + win["ties"] == 132  # the test-split prompts
    assert win["a"] == str(tmp_path / "dpo_answers" / "generations.jsonl")
    assert rc == 0 and out.count("complete, skipped") == 12
    ppo = read_status(tmp_path / "ppo")
    assert ppo["status"] == "complete" and "objective/kl" in ppo["final"]
    import yaml

    ppo_config = yaml.safe_load((tmp_path / "ppo" / "config.yaml").read_text())
    assert ppo_config["reward_funcs"] == "rm:" + str(tmp_path / "reward_model" / "model")  # rm:stage:reward_model
    from alignkit.demo import print_win_rate as _print_win_rate

    _print_win_rate(tmp_path)
    shown = capsys.readouterr().out
    assert "DPO: the DPO policy vs the SFT policy: win rate" in shown
    assert "PPO: reward-model score" in shown and "PPO: the PPO policy vs the SFT policy: win rate" in shown
    # a recipe that extends tiny adds GRPO on the same reward model; the finished stages are skipped
    extended = tmp_path / "tiny-grpo.yaml"
    extended.write_text(
        "extends: tiny\nstages:\n  - name: grpo\n    method: grpo\n    config:\n"
        "      model_name_or_path: stage:sft\n      dataset_name: builtin:helpful.jsonl\n"
        "      reward_funcs: rm:stage:reward_model\n      num_generations: 2\n"
        "      per_device_train_batch_size: 4\n      max_completion_length: 8\n      max_steps: 2\n")
    rc, out, err = run_cli(capsys, "pipeline", extended, "--output_dir", tmp_path)
    assert rc == 0, err
    assert out.count("complete, skipped") == 12 and "(grpo): running" in out
    assert "reward" in read_status(tmp_path / "grpo")["final"]


def test_pipeline_resumes_an_interrupted_stage(tmp_path, capsys, monkeypatch):
    import alignkit.methods.sft as sft

    real = sft.sft_loss
    calls = {"n": 0}

    def crash_late(model, batch):
        import torch

        calls["n"] += torch.is_grad_enabled()  # count training micro-batches, not evaluation ones
        if calls["n"] == 6:  # step 6 of 8; the checkpoint of step 4 exists
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(sft, "sft_loss", crash_late)
    rc, out, err = run_cli(capsys, "pipeline", "tiny", "--output_dir", tmp_path)
    assert rc == 130
    from alignkit.engine.outputs import read_status

    assert read_status(tmp_path / "sft")["status"] == "stopped"
    monkeypatch.setattr(sft, "sft_loss", real)
    rc, out, err = run_cli(capsys, "pipeline", "tiny", "--output_dir", tmp_path)
    assert rc == 0, err
    assert "resuming from step-000004" in out
    assert read_status(tmp_path / "sft")["steps"] == 8


def test_pipeline_recipe_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - method: sft\n  - method: generate\n    config: {model_name_or_path: 'stage:nope'}\n")
    rc, out, err = run_cli(capsys, "pipeline", bad, "--output_dir", tmp_path / "o")
    assert rc == 2 and "stage:nope" in err and "names no earlier stage" in err
    rc, out, err = run_cli(capsys, "pipeline", "no-such-recipe")
    assert rc == 2 and "packaged recipes: demo, demo-cai, demo-full, demo-grpo, demo-tools, tiny" in err
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\nstages: []\n")
    rc, out, err = run_cli(capsys, "pipeline", loop)
    assert rc == 2 and "extends" in err and "a cycle" in err


def test_cai_stages_run_in_a_pipeline(tmp_path, capsys):
    recipe = tmp_path / "tiny-cai.yaml"
    recipe.write_text(
        "extends: tiny\nstages:\n"
        "  - {name: cai_revise, method: cai_revise, config: {model_name_or_path: stage:sft, "
        "dataset_name: builtin:harmful.jsonl, max_prompts: 3, max_new_tokens: 4}}\n"
        "  - {name: cai_sft, method: sft, config: {model_name_or_path: stage:sft, dataset_name: stage:cai_revise, "
        "max_steps: 2, per_device_train_batch_size: 2}}\n"
        "  - {name: cai_label, method: cai_label, config: {dataset_name: stage:pairs, judge: 'llm:embedded:tiny'}}\n"
        "  - {name: cai_dpo, method: dpo, config: {model_name_or_path: stage:cai_sft, dataset_name: stage:cai_label, "
        "max_steps: 2, per_device_train_batch_size: 2}}\n")
    rc, out, err = run_cli(capsys, "pipeline", recipe, "--output_dir", tmp_path / "run")
    assert rc == 0, err
    from alignkit.engine.outputs import read_status

    assert read_status(tmp_path / "run" / "cai_revise")["prompts"] == 3
    label = read_status(tmp_path / "run" / "cai_label")
    assert label["status"] == "complete" and "kappa_with_rules" in label
    assert read_status(tmp_path / "run" / "cai_dpo")["status"] == "complete"


def test_packaged_demo_grpo_recipe_extends_the_demo():
    from alignkit.pipeline import load_recipe, plan, resolve_recipe

    path = resolve_recipe("demo-grpo")
    stages = plan(load_recipe(path), str(path))
    names = [s["name"] for s in stages]
    demo = [s["name"] for s in plan(load_recipe(resolve_recipe("demo")), "demo")]
    assert names == demo + ["grpo", "grpo_answers", "grpo_win_rate"]
    grpo = stages[names.index("grpo")]["values"]
    assert grpo["output_dir"] == "runs/demo/grpo" and grpo["reward_funcs"] == "rm:runs/demo/reward_model/model"
    cai = plan(load_recipe(resolve_recipe("demo-cai")), "demo-cai")
    assert [s["name"] for s in cai][len(demo):] == ["cai_revise", "cai_sft", "cai_pairs", "cai_label", "cai_dpo",
                                                   "cai_answers", "cai_win_rate"]
    assert cai[-3]["values"]["dataset_name"] == "runs/demo/cai_label/preferences.jsonl"


def test_packaged_demo_tools_recipe_plans_and_checks(tmp_path):
    """demo-tools: every stage's config is valid (checked as the pipeline checks it) and the evaluations compare
    the same held-out problems against the earlier ones."""
    from alignkit.commands import get, make_config
    from alignkit.pipeline import load_recipe, plan, resolve_recipe

    path = resolve_recipe("demo-tools")
    stages = plan(load_recipe(path), str(path), {"output_dir": str(tmp_path)})
    assert [s["name"] for s in stages] == ["demos", "before", "sft", "sft_eval", "grpo", "after"]
    for stage in stages:
        make_config(get(stage["method"]), stage["values"])
    values = {s["name"]: s["values"] for s in stages}
    assert values["grpo"]["environment"] == "calculator" and values["grpo"]["dataset_train_split"] == "train"
    assert {values[n]["dataset_split"] for n in ("before", "sft_eval", "after")} == {"test"}
    assert values["after"]["baseline"] == f"{tmp_path}/before/eval.json,{tmp_path}/sft_eval/eval.json"


def test_report_command_rebuilds_a_report(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / i}) + "\n" for i in range(1, 5)))
    rc, out, err = run_cli(capsys, "report", run_dir)
    assert rc == 0 and (run_dir / "report.html").exists()
    rc, out, err = run_cli(capsys, "report", tmp_path / "nothing")
    assert rc == 2


def test_nested_defaults_survive_partial_overrides():
    """A nested part made by a default_factory keeps its own defaults when only some of its keys are set:
    RewardConfig trains at 1e-4 (TRL's RewardTrainer default) even when only max_steps is given."""
    from alignkit.methods.reward_model import RewardConfig
    from alignkit.rollout.pairs import GeneratePairsConfig

    config = build_config(RewardConfig, {"dataset_name": "x.jsonl", "max_steps": 3})
    assert (config.train.learning_rate, config.train.max_steps) == (1e-4, 3)
    pairs = build_config(GeneratePairsConfig, {"dataset_name": "p.jsonl", "max_new_tokens": 8})
    sampling = pairs.sampling
    assert (sampling.num_return_sequences, sampling.temperature, sampling.max_new_tokens) == (2, 0.8, 8)
    assert flat_fields(RewardConfig)["learning_rate"][2] == 1e-4  # --help shows the method's default


def test_demo_full_has_the_demos_stages_with_more_of_each():
    """`demo-full` is the longer demo: the same stages and methods, into its own directory, with more training
    steps and longer answers than the short `demo` that `make demo` runs."""
    from alignkit.pipeline import load_recipe, plan, resolve_recipe

    short = plan(load_recipe(resolve_recipe("demo")), "demo")
    full = plan(load_recipe(resolve_recipe("demo-full")), "demo-full")
    assert [(s["name"], s["method"]) for s in full] == [(s["name"], s["method"]) for s in short]
    assert all(s["values"]["output_dir"].startswith("runs/demo-full/") for s in full)
    values = {s["name"]: (s["values"], f["values"]) for s, f in zip(short, full)}
    for name in ("sft", "reward_model", "dpo", "ppo"):
        assert values[name][0]["max_steps"] < values[name][1]["max_steps"], name
    assert values["sft_answers"][0]["max_new_tokens"] < values["sft_answers"][1]["max_new_tokens"]
