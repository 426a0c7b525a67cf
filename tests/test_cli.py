"""The command line: help and version, option spellings, one-line errors, and generation end to end on
the tiny embedded model. Commands run in-process through `alignkit.cli.main`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignkit import __version__
from alignkit.cli import build_parser, main

TINY = "embedded:tiny"


def run_cli(capsys, *argv):
    """Run `alignkit ARGV` in-process; returns (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version and usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """argparse wraps help at the terminal width; a fixed width keeps option names on one line."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Hello there", "id": 1},
            {"prompt": [{"role": "user", "content": "What is 2+2?"}], "id": 2},
            {"prompt": "Name a colour.", "id": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# help and version


def test_version(capsys):
    rc, out, err = run_cli(capsys, "--version")
    assert (rc, out, err) == (0, f"alignkit {__version__}\n", "")


@pytest.mark.parametrize("argv,mentions", [
    ([], ["data", "generate", "models", "sft", "pipeline", "report", "demo", "--version"]),
    (["data"], ["validate", "stats"]),
    (["data", "validate"], ["PATH", "--kind", "--split", "--max_problems", "--max-problems", "sft", "preference",
                            "unpaired", "prompt", "exit"]),
    (["data", "stats"], ["--kind", "--tokenizer", "--json"]),
    (["generate"], ["--model_name_or_path", "--model-name-or-path", "--model", "--prompts", "--dataset_name",
                    "--data", "--output", "-o", "--max_new_tokens", "--max-new-tokens", "--temperature", "--top_p",
                    "--top_k", "--num_return_sequences", "--num_generations", "--batch_size", "--seed", "--device",
                    "--dtype", "--torch_dtype"]),
    (["models"], ["ALIGNKIT_CACHE"]),
    (["sft"], ["--config", "--model_name_or_path", "--model", "--dataset_name", "--data", "--output_dir",
               "--max_steps", "--learning_rate", "--per_device_train_batch_size", "--gradient_accumulation_steps",
               "--use_peft", "--lora_r", "--packing", "--resume", "--seed", "--report_to"]),
    (["pipeline"], ["recipe", "--output_dir"]),
    (["report"], ["run_dir"]),
    (["demo"], ["--output_dir", "SmolLM2"]),
], ids=["alignkit", "data", "data-validate", "data-stats", "generate", "models", "sft", "pipeline", "report",
        "demo"])
def test_help(capsys, argv, mentions):
    rc, out, err = run_cli(capsys, *argv, "--help")
    assert rc == 0 and err == ""
    assert out.startswith(f"usage: alignkit {' '.join(argv)}".rstrip())
    for word in mentions:
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", out), word


def test_no_command_prints_help_and_exits_2(capsys):
    rc, out, _ = run_cli(capsys)
    assert rc == 2 and out.startswith("usage: alignkit")
    rc, out, _ = run_cli(capsys, "data")
    assert rc == 2 and out.startswith("usage: alignkit data")


# ----------------------------------------------------------------------------------------------------
# option spellings


def _parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("model_flag", ["--model_name_or_path", "--model-name-or-path", "--model"])
@pytest.mark.parametrize("data_flag", ["--prompts", "--dataset_name", "--dataset-name", "--data"])
def test_model_and_data_aliases(model_flag, data_flag):
    args = _parse("generate", model_flag, TINY, data_flag, "p.jsonl")
    assert (args.model_name_or_path, args.prompts) == (TINY, "p.jsonl")


@pytest.mark.parametrize("under,dash,value,dest,expected", [
    ("--max_new_tokens", "--max-new-tokens", "5", "max_new_tokens", 5),
    ("--num_return_sequences", "--num-return-sequences", "3", "num_return_sequences", 3),
    ("--num_generations", "--num-generations", "3", "num_return_sequences", 3),
    ("--top_p", "--top-p", "0.5", "top_p", 0.5),
    ("--top_k", "--top-k", "7", "top_k", 7),
    ("--batch_size", "--batch-size", "2", "batch_size", 2),
    ("--per_device_eval_batch_size", "--per-device-eval-batch-size", "2", "batch_size", 2),
    ("--output_file", "--output-file", "o.jsonl", "output", "o.jsonl"),
    ("--torch_dtype", "--torch-dtype", "float32", "dtype", "float32"),
])
def test_generate_dash_and_underscore_spellings(under, dash, value, dest, expected):
    base = ("generate", "--model", TINY, "--prompts", "p.jsonl")
    assert getattr(_parse(*base, under, value), dest) == expected
    assert getattr(_parse(*base, dash, value), dest) == expected


def test_generate_defaults_and_short_output():
    args = _parse("generate", "--model", TINY, "--prompts", "p.jsonl", "-o", "out.jsonl")
    assert args.output == "out.jsonl"
    assert (args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.num_return_sequences,
            args.batch_size, args.seed, args.device, args.dtype) == (256, 0.7, 1.0, 0, 1, 8, 0, "auto", "auto")


def test_validate_spellings():
    for flag in ("--max_problems", "--max-problems"):
        assert _parse("data", "validate", "x.jsonl", flag, "3").max_problems == 3
    assert _parse("data", "validate", "x.jsonl").max_problems == 50
    assert _parse("sft", "--max-steps", "4", "--learning-rate", "1e-4").max_steps == "4"
    assert _parse("sft", "--use_peft").use_peft == "true"  # a bare boolean flag means true


# ----------------------------------------------------------------------------------------------------
# usage errors: one line on stderr, exit 2


@pytest.mark.parametrize("argv,says", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["models", "--bogus"], "unrecognized arguments: --bogus"),
    (["data", "validate"], "the following arguments are required: path"),
    (["data", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["data", "validate", "x.jsonl", "--kind", "pairs"], "invalid choice: 'pairs'"),
    (["data", "validate", "x.jsonl", "--max-problems", "many"], "invalid int value: 'many'"),
    (["generate", "--prompts", "p.jsonl"], "the following arguments are required: --model_name_or_path"),
    (["generate", "--model", TINY], "the following arguments are required: --prompts"),
    (["generate", "--model", TINY, "--prompts", "p.jsonl", "--max_new_tokens", "abc"], "invalid int value: 'abc'"),
    (["generate", "--model", TINY, "--prompts", "p.jsonl", "--temperature"], "expected one argument"),
    (["generate", "--model", TINY, "--prompts", "p.jsonl", "--temperature", "hot"], "invalid float value: 'hot'"),
])
def test_usage_errors_are_one_line(capsys, argv, says):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert re.fullmatch(r"alignkit( [a-z]+)*: error: .+ \(see `alignkit( [a-z]+)* --help`\)", line), line
    assert says in line


@pytest.mark.parametrize("option,value,says", [
    ("--temperature", "-1", "temperature: must be >= 0, got -1.0"),
    ("--max_new_tokens", "0", "max_new_tokens: must be at least 1, got 0"),
    ("--top_p", "0", "top_p: must be in (0, 1], got 0.0"),
    ("--top-k", "-3", "top_k: must be >= 0, got -3"),
    ("--num_return_sequences", "0", "num_return_sequences: must be at least 1, got 0"),
    ("--batch-size", "0", "batch_size: must be at least 1, got 0"),
    ("--dtype", "float8", "unknown dtype 'float8'; use auto, float32, bfloat16 or float16"),
    ("--device", "toaster", "unknown device 'toaster'; use auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_sampling_and_placement_values(capsys, prompts_file, tmp_path, option, value, says):
    out_path = tmp_path / "out.jsonl"
    rc, out, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts_file, option, value,
                           "-o", out_path)
    assert (rc, out) == (2, "")
    assert one_line(err) == f"alignkit: error: {says}"
    assert not out_path.exists()


# ----------------------------------------------------------------------------------------------------
# generate


def test_generate_greedy_writes_one_row_per_prompt(capsys, prompts_file, tmp_path):
    out_path = tmp_path / "out" / "gen.jsonl"
    rc, out, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts_file, "--max_new_tokens", "5",
                           "--temperature", "0", "-o", out_path)
    assert rc == 0 and out == ""
    assert "wrote 3 completions to" in err and "Traceback" not in err
    rows = read_jsonl(out_path)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[1]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]  # extra columns and prompt kept
    for row in rows:
        assert isinstance(row["completion"], str)
        assert row["finish_reason"] in ("stop", "length")
    # greedy is deterministic whatever the seed
    again = tmp_path / "again.jsonl"
    assert run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts_file, "--max-new-tokens", "5",
                   "--temperature", "0", "--seed", "123", "-o", again)[0] == 0
    assert read_jsonl(again) == rows
    assert not [p.name for p in out_path.parent.iterdir() if p.name != "gen.jsonl"]  # no temp files


def test_generate_to_stdout(capsys, prompts_file):
    rc, out, _ = run_cli(capsys, "generate", "--model", TINY, "--data", prompts_file, "--max_new_tokens", "3",
                         "--temperature", "0")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {"prompt", "id", "completion", "finish_reason"} for r in rows)


def test_generate_num_return_sequences_doubles_rows(capsys, prompts_file, tmp_path):
    out_path = tmp_path / "out.jsonl"
    rc, _, _ = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts_file, "--max_new_tokens", "4",
                       "--temperature", "1.0", "--num_return_sequences", "2", "--batch_size", "2", "-o", out_path)
    assert rc == 0
    rows = read_jsonl(out_path)
    assert [r["id"] for r in rows] == [1, 1, 2, 2, 3, 3]
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)


def test_generate_sampling_is_deterministic_with_a_seed(capsys, prompts_file, tmp_path):
    def sample(seed, name):
        out_path = tmp_path / name
        argv = ["generate", "--model", TINY, "--prompts", prompts_file, "--max_new_tokens", "8",
                "--temperature", "1.0", "--seed", seed, "-o", out_path]
        assert run_cli(capsys, *argv)[0] == 0
        return [r["completion"] for r in read_jsonl(out_path)]

    first, second, other = sample("7", "a.jsonl"), sample("7", "b.jsonl"), sample("8", "c.jsonl")
    assert first == second
    assert first != other


def test_generate_bad_prompts_file_is_one_line(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": "   "}) + "\n")
    out_path = tmp_path / "out.jsonl"
    out_path.write_text("precious\n")
    rc, out, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts, "-o", out_path)
    assert (rc, out) == (2, "")
    assert one_line(err) == f"{prompts}:2: prompt: empty string"
    assert out_path.read_text() == "precious\n"  # nothing already written is lost


def test_generate_prompts_ending_with_assistant_turn(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello"}]}) + "\n")
    rc, out, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts)
    assert (rc, out) == (2, "")
    assert one_line(err) == (f"{prompts}:1: prompt: conversation must end with the user or system turn, "
                             "got a final 'assistant' turn")


def test_generate_many_bad_prompts_are_capped(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": ""}) + "\n" for _ in range(25)))
    rc, _, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", prompts)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 21
    assert lines[0] == f"{prompts}:1: prompt: empty string"
    assert lines[-1] == "... and 5 more (see `alignkit data validate`)"


def test_generate_missing_prompts_file(capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    rc, out, err = run_cli(capsys, "generate", "--model", TINY, "--prompts", missing)
    assert (rc, out) == (2, "")
    assert one_line(err) == f"alignkit: error: {missing}: file: does not exist"


@pytest.mark.parametrize("model,says", [
    ("embedded:nope", "unknown embedded model 'embedded:nope'; known: embedded:smollm2-135m-instruct, embedded:tiny"),
    ("embedded:tiny@abc", "embedded model 'embedded:tiny@abc': the part after @ must be an integer seed"),
    ("embedded:smollm2-135m-instruct@3", "only embedded:tiny takes a seed"),
    ("./no/such/checkpoint", "./no/such/checkpoint: tokenizer: no such directory"),
    ("no-such-org/no-such-model-alignkit-test", "no-such-org/no-such-model-alignkit-test: tokenizer: cannot load ("),
])
def test_generate_unknown_model_is_one_line(capsys, prompts_file, model, says):
    rc, out, err = run_cli(capsys, "generate", "--model", model, "--prompts", prompts_file)
    assert (rc, out) == (2, "")
    line = one_line(err)
    assert line.startswith("alignkit: error: ") and says in line, line


def test_generate_model_path_that_is_a_file(capsys, prompts_file):
    rc, _, err = run_cli(capsys, "generate", "--model", prompts_file, "--prompts", prompts_file)
    assert rc == 2
    assert one_line(err) == f"alignkit: error: {prompts_file}: tokenizer: no such directory"


def test_generate_from_saved_checkpoint_path(capsys, prompts_file, tmp_path, tiny_model_path):
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    common = ["--prompts", prompts_file, "--max_new_tokens", "4", "--temperature", "0"]
    assert run_cli(capsys, "generate", "--model", TINY, *common, "-o", out_a)[0] == 0
    assert run_cli(capsys, "generate", "--model", tiny_model_path, *common, "-o", out_b)[0] == 0
    assert read_jsonl(out_a) == read_jsonl(out_b)


# ----------------------------------------------------------------------------------------------------
# other commands


def test_models_lists_both_embedded_models(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    rc, out, err = run_cli(capsys, "models")
    assert rc == 0 and err == ""
    assert f"cache: {tmp_path / 'cache'}" in out
    for name in ("embedded:smollm2-135m-instruct", "embedded:tiny"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert line.endswith("[built on first use]")
    assert not (tmp_path / "cache").exists()  # listing builds nothing


def test_models_shows_cached(capsys, tiny_model_path):
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("embedded:tiny "))
    assert line.endswith("[cached]")


def test_data_stats_json_parses(capsys, tmp_path):
    path = tmp_path / "pref.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "c", "rejected": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, _ = run_cli(capsys, "data", "stats", path, "--json")
    assert rc == 0
    stats = json.loads(out)
    assert (stats["kind"], stats["rows"], stats["valid_rows"], stats["ties"], stats["duplicate_rows"]) == (
        "preference", 3, 2, 1, 1)
    rc, out, _ = run_cli(capsys, "data", "stats", path, "--json", "--tokenizer", TINY, "--kind", "preference")
    assert rc == 0 and set(json.loads(out)["tokens"]) == {"prompt", "chosen", "rejected"}


def test_demo_recipe_plans_its_stages(tmp_path):
    """`alignkit demo` runs the packaged demo recipe (timed in the closing notes, too slow for the suite):
    the real model answers, is fine-tuned with LoRA, and the fine-tuned model answers again; it then samples
    response pairs, the rubric judges them, a reward model and a DPO policy learn the judgments, and the DPO
    policy's held-out win rate against the SFT policy is judged; PPO follows, and a red team attacks its
    policy last."""
    from alignkit.config import load_yaml
    from alignkit.pipeline import plan, resolve_recipe

    stages = plan(load_yaml(resolve_recipe("demo")), "demo", {"output_dir": str(tmp_path)})
    assert [(s["name"], s["method"]) for s in stages] == [
        ("before", "generate"), ("sft", "sft"), ("after", "generate"), ("pairs", "generate_pairs"),
        ("judge", "judge"), ("reward_model", "reward_model"), ("dpo", "dpo"), ("sft_answers", "generate"),
        ("dpo_answers", "generate"), ("win_rate", "win_rate"), ("ppo", "ppo"), ("ppo_answers", "generate"),
        ("ppo_win_rate", "win_rate"), ("redteam", "redteam")]
    values = {s["name"]: s["values"] for s in stages}
    assert values["redteam"]["model_name_or_path"] == str(tmp_path / "ppo" / "model")
    assert values["before"]["model_name_or_path"] == "embedded:smollm2-135m-instruct"
    assert values["sft"]["use_peft"] is True
    assert values["after"]["model_name_or_path"] == str(tmp_path / "sft" / "model")
    assert values["pairs"]["model_name_or_path"] == str(tmp_path / "sft" / "model")
    assert values["judge"]["dataset_name"] == str(tmp_path / "pairs" / "pairs.jsonl")
    assert values["reward_model"]["dataset_name"] == str(tmp_path / "judge" / "preferences.jsonl")
    assert values["dpo"]["model_name_or_path"] == str(tmp_path / "sft" / "model")
    assert values["dpo"]["ref"] == "adapter" and values["dpo"]["use_peft"] is True
    assert values["dpo_answers"]["dataset_split"] == "test" == values["sft_answers"]["dataset_split"]
    assert values["win_rate"]["dataset_name"] == str(tmp_path / "dpo_answers" / "generations.jsonl")
    assert values["win_rate"]["baseline"] == str(tmp_path / "sft_answers" / "generations.jsonl")
    assert values["ppo"]["reward_funcs"] == "rm:" + str(tmp_path / "reward_model" / "model")
    assert values["ppo"]["ref"] == "adapter" and values["ppo"]["value_model"] == "shared"


def test_internal_error_is_one_line_unless_debugging(capsys, monkeypatch):
    import alignkit.data.io

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(alignkit.data.io, "validate", boom)
    monkeypatch.delenv("ALIGNKIT_DEBUG", raising=False)
    rc, out, err = run_cli(capsys, "data", "validate", "x.jsonl")
    assert (rc, out) == (1, "")
    assert one_line(err) == ("alignkit: internal error: RuntimeError: something broke "
                             "(rerun with ALIGNKIT_DEBUG=1 for the traceback)")
    monkeypatch.setenv("ALIGNKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        main(["data", "validate", "x.jsonl"])


# ----------------------------------------------------------------------------------------------------
# one registry, lazy loading, options checked before a model loads


def test_one_registry_for_the_cli_and_the_pipeline():
    """Every config command is a pipeline method with the same config class and run function, and
    `alignkit generate` shows the defaults of the config the pipeline's generate stage uses."""
    from alignkit.commands import COMMANDS, ORDER, TOOLS, make_config
    from alignkit.pipeline import method_parts

    assert sorted(ORDER) == sorted({c.path[0] for c in COMMANDS.values()} | {t.cli for t in TOOLS})
    for name, command in COMMANDS.items():
        assert method_parts(name) == command.load()
    config_cls, _ = method_parts("generate")
    sampling = config_cls().sampling
    args = _parse("generate", "--model", TINY, "--prompts", "p.jsonl")
    assert (args.temperature, args.max_new_tokens, args.top_p) == (sampling.temperature, sampling.max_new_tokens,
                                                                   sampling.top_p)
    # a command's own defaults hold in a recipe stage too, under the stage's values
    assert make_config(COMMANDS["orpo"], {"dataset_name": "x.jsonl"}).loss_type == "orpo"
    assert make_config(COMMANDS["rloo"], {"dataset_name": "x.jsonl"}).advantage == "rloo"
    assert _parse("orpo", "--loss_type", "cpo").loss_type == "cpo"


def test_help_loads_no_model_library_and_no_command_module():
    import subprocess
    import sys

    code = ("import sys\nfrom alignkit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(','.join(m for m in ('torch', 'transformers', 'alignkit.methods.sft', 'alignkit.safety.proxy_cli',"
            " 'alignkit.pipeline') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage: alignkit") and out.stderr.strip() == ""


def test_lower_modules_never_import_the_cli():
    src = Path(__file__).resolve().parents[1] / "src" / "alignkit"
    importers = [str(p.relative_to(src)) for p in src.rglob("*.py") if p.name != "cli.py"
                 and re.search(r"^\s*(from alignkit\.cli import|from alignkit import cli|import alignkit\.cli)",
                               p.read_text(encoding="utf-8"), re.MULTILINE)]
    assert importers == []


def test_unsupported_scheduler_is_one_line_before_any_model_loads(capsys, monkeypatch, tmp_path):
    """cosine_with_min_lr needs min_lr_rate, which no option passes: refused while the config is built."""
    from alignkit.methods import sft

    monkeypatch.setattr(sft, "train_sft", lambda config: pytest.fail("train_sft ran"))
    out_dir = tmp_path / "run"
    rc, out, err = run_cli(capsys, "sft", "--model", TINY, "--data", "builtin:sft.jsonl", "--output_dir", out_dir,
                           "--lr_scheduler_type", "cosine_with_min_lr")
    assert (rc, out) == (2, "")
    assert one_line(err).startswith("alignkit: error: config: lr_scheduler_type: cosine_with_min_lr needs min_lr")
    assert not out_dir.exists()
