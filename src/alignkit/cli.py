"""`alignkit <command>`: parse the command line, build a config, call the library. Nothing else lives here.

Options use TRL/transformers names and accept dashes or underscores (`--max_new_tokens` or
`--max-new-tokens`). Every error is one line on stderr and a non-zero exit (2 for bad input); set
ALIGNKIT_DEBUG=1 to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from alignkit import __version__
from alignkit.errors import AlignkitError, DataError

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `alignkit generate: error: ... (see --help)`."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def option(parser, name: str, *aliases: str, **kwargs):
    """Add `--a_b` with its `--a-b` spelling (and any aliases) as one option."""
    names = [name]
    for flag in (name, *aliases):
        for spelling in (flag, flag.replace("_", "-") if flag.startswith("--") else flag):
            if spelling not in names:
                names.append(spelling)
    kwargs.setdefault("dest", name.lstrip("-").replace("-", "_"))
    return parser.add_argument(*names, **kwargs)


def config_command(commands, name: str, config_cls, func, help_text: str, description: str, aliases=()):
    """A command whose options are a config dataclass's fields, plus --config RECIPE.yaml."""
    from dataclasses import fields

    from alignkit.config import add_arguments

    clash = {f.name for f in fields(config_cls)} & set(NOT_CONFIG)
    if clash:
        raise TypeError(f"{config_cls.__name__}: field(s) {', '.join(sorted(clash))} clash with the CLI's own options")
    p = commands.add_parser(name, aliases=list(aliases), help=help_text, description=description)
    option(p, "--config", help="YAML recipe of option: value pairs")
    add_arguments(p, config_cls)
    p.set_defaults(func=func)
    return p


# ----------------------------------------------------------------------------------------------------
# data


def cmd_data_validate(args) -> int:
    from alignkit.data.io import validate

    try:
        result = validate(args.path, args.kind, args.split)
    except AlignkitError as e:
        print(e)
        return EXIT_BAD_INPUT
    for problem in result.problems[: args.max_problems]:
        print(problem.format(args.path))
    hidden = len(result.problems) - args.max_problems
    if hidden > 0:
        print(f"... and {hidden} more problems (raise --max-problems to see them)", file=sys.stderr)
    if result.problems:
        return EXIT_BAD_INPUT
    print(f"{args.path}: {len(result.rows)} rows, kind {result.kind}: valid", file=sys.stderr)
    return 0


def cmd_data_stats(args) -> int:
    from alignkit.data.stats import dataset_stats, format_stats

    tokenizer = None
    if args.tokenizer:
        from alignkit.models.load import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    stats = dataset_stats(args.path, args.kind, tokenizer)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


# ----------------------------------------------------------------------------------------------------
# models and generation


def cmd_models(args) -> int:
    from alignkit.models import embedded

    print(f"cache: {embedded.cache_dir()}  (set ALIGNKIT_CACHE to move it)")
    for name, description in embedded.DESCRIPTIONS.items():
        path = embedded.checkpoint_dir(embedded.PREFIX + name)
        state = "cached" if (path / "config.json").exists() else "built on first use"
        print(f"  {embedded.PREFIX + name:<34} {description} [{state}]")
    print("Also accepted: a directory written by save_pretrained, or a hub id (needs network access).")
    return 0


def _sampling(args):
    from alignkit.rollout.generate import SamplingSettings

    return SamplingSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        num_return_sequences=args.num_return_sequences, batch_size=args.batch_size, seed=args.seed,
    )


def cmd_generate(args) -> int:
    from alignkit.data.io import write_jsonl
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rollout.generate import as_records, generate
    from alignkit.rollout.pairs import load_prompt_rows

    settings = _sampling(args)
    settings.check()
    rows = load_prompt_rows(args.prompts, split=args.dataset_split)
    tokenizer = load_tokenizer(args.model_name_or_path, padding_side="left")
    model = load_policy(args.model_name_or_path, dtype=args.dtype, device=args.device)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], settings)
    records = as_records(rows, outputs)
    if args.output:
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} completions to {args.output}", file=sys.stderr)
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    return 0


# argparse destinations that are the CLI's own, never config fields (a field of one of these names would be
# dropped silently: config_command refuses such a config)
NOT_CONFIG = ("func", "command", "config", "method", "title", "cai_command", "annotate_command", "guard_command")


def _overrides(args, skip=NOT_CONFIG) -> dict:
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_train(args) -> int:
    """Every training command: the --config recipe, flags over it, the method's config, its train function."""
    from alignkit.pipeline import method_parts

    config_cls, train = method_parts(args.method)
    config = _config_from_args(config_cls, args)
    result = train(config)
    from alignkit.engine.distributed import is_main_process

    if is_main_process():  # under --num_processes every process gets here; one prints
        _print_finished(args.title or config.loss_type, result.output_dir, result)
    return 0


def _config_from_args(cls, args):
    from alignkit.config import build_config, load_yaml

    recipe = {k: v for k, v in load_yaml(args.config).items() if k != "method"} if args.config else {}
    return build_config(cls, {**recipe, **_overrides(args)})


def cmd_judge_agreement(args) -> int:
    from alignkit.data.io import load_rows
    from alignkit.feedback.judge_agreement import judge_agreement
    from alignkit.feedback.judges import make_judge

    rows = load_rows(args.data, "preference")
    report = judge_agreement(make_judge(args.judge, device=args.device, constitution=args.constitution), rows)
    print(json.dumps(report))
    return 0


def cmd_best_of_n(args) -> int:
    from alignkit.rollout.best_of_n import BestOfNConfig, run_best_of_n

    run_best_of_n(_config_from_args(BestOfNConfig, args))
    return 0


def cmd_generate_pairs(args) -> int:
    from alignkit.rollout.pairs import GeneratePairsConfig, run_generate_pairs

    output = args.output
    config = _config_from_args(GeneratePairsConfig, _without(args, "output"))
    path = run_generate_pairs(config, output)
    print(f"wrote {config.sampling.num_return_sequences} responses per prompt to {path}", file=sys.stderr)
    return 0


def cmd_judge(args) -> int:
    from alignkit.feedback.stage import JudgeConfig, judge_file

    output = args.out
    config = _config_from_args(JudgeConfig, _without(args, "out"))
    path, stats = judge_file(config, output)
    kept = " (kept)" if config.keep_ties else " (dropped)"
    empty = f", {stats['skipped_empty']} pairs with an empty response skipped" if stats["skipped_empty"] else ""
    print(f"judge {config.judge}: {stats['rows']} rows, {stats['comparisons']} comparisons -> "
          f"{stats['preferences']} preferences, {stats['ties']} ties{kept}{empty}; wrote {path}", file=sys.stderr)
    return 0


def cmd_win_rate(args) -> int:
    from alignkit.feedback.winrate import WinRateConfig, run_win_rate

    path = run_win_rate(_config_from_args(WinRateConfig, args))
    print(f"wrote {path} and {path.parent / 'comparisons.jsonl'}", file=sys.stderr)
    return 0


def _without(args, *names):
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in names})


def cmd_score(args) -> int:
    from alignkit.rewards.score import score_file

    summary = score_file(args.data, _reward_source(args), args.output)
    print(summary, file=sys.stderr)
    return 0


def _reward_source(args):
    from alignkit.rewards.combine import Ensemble, SafetyHelpfulness
    from alignkit.rewards.model import RewardModel

    def load(path):
        return RewardModel(path, device=args.device, batch_size=args.batch_size, max_length=args.max_length)

    if bool(args.safety_rm) != bool(args.helpfulness_rm):
        raise AlignkitError("score: give both --safety_rm and --helpfulness_rm, or neither")
    if args.safety_rm:
        if args.rm:
            raise AlignkitError("score: --rm cannot be combined with --safety_rm/--helpfulness_rm")
        return SafetyHelpfulness(load(args.safety_rm), load(args.helpfulness_rm), args.safety_threshold,
                                 whitened=not args.no_whiten)
    if not args.rm:
        raise AlignkitError("score: give a reward model with --rm PATH (repeat it for an ensemble)")
    members = [load(path) for path in args.rm]
    return members[0] if len(members) == 1 else Ensemble(members, args.ensemble, args.uncertainty_k)


def _print_finished(method: str, out, result) -> None:
    name = next((k for k in ("loss", "objective/scores", "reward") if k in result.last_metrics), None)
    final = f"; final {name} {result.last_metrics[name]:.4f}" if name else ""
    evals = ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items())
    print(f"{method}: {result.steps} steps in {result.seconds:.0f} s{final}"
          + (f", {evals}" if evals else "")
          + (f"; {result.skipped_steps} steps skipped" if result.skipped_steps else ""))
    print(f"  model:   {out / 'model'}\n  report:  {out / 'report.html'}\n  metrics: {out / 'metrics.jsonl'}")


def cmd_pipeline(args) -> int:
    from alignkit.pipeline import run_pipeline

    run_pipeline(args.recipe, {"output_dir": args.output_dir} if args.output_dir else None)
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from alignkit.engine.report import write_pipeline_summary, write_report
    from alignkit.pipeline import summary_row

    root = Path(args.run_dir)
    if not root.is_dir():
        raise AlignkitError(f"{root}: not a directory")
    if (root / "metrics.jsonl").exists() or (root / "run.json").exists():
        print(write_report(root))
        return 0
    stages = [d for d in sorted(root.iterdir()) if (d / "run.json").exists()]
    if not stages:
        raise AlignkitError(f"{root}: no metrics.jsonl or run.json here or in its subdirectories; "
                            "is it a run directory?")
    for stage in stages:
        if (stage / "metrics.jsonl").exists():
            write_report(stage)
    print(write_pipeline_summary(root, [summary_row(d.name, d) for d in stages]))
    return 0


def cmd_demo(args) -> int:
    from alignkit.data.io import read_jsonl_file
    from alignkit.pipeline import run_pipeline

    print(f"alignkit {__version__} demo: SmolLM2-135M-Instruct answers, learns from the built-in SFT data "
          "(LoRA) and answers again; then it samples response pairs, a simulated annotator labels them, a reward "
          "model and a DPO policy learn those preferences, and the annotator compares DPO's answers with SFT's\n",
          flush=True)
    root = run_pipeline("demo", {"output_dir": args.output_dir} if args.output_dir else None)
    before = read_jsonl_file(root / "before" / "generations.jsonl")
    after = read_jsonl_file(root / "after" / "generations.jsonl")
    for b, a in zip(before, after):
        question = b["prompt"][-1]["content"] if isinstance(b["prompt"], list) else b["prompt"]
        print(f"\nQ: {question}\n  before: {_one_line(b['completion'])}\n  after:  {_one_line(a['completion'])}")
    _print_reward_model_result(root)
    _print_win_rate(root)
    _print_redteam(root)
    print(f"\nreports: {root / 'index.html'}")
    return 0


def _print_redteam(root) -> None:
    """The demo's red-team stage: attack success and over-refusal of the final (PPO) policy."""
    import json

    path = root / "redteam" / "results.json"
    if not path.exists():
        return
    from alignkit.safety.redteam import _pct

    results = json.loads(path.read_text())
    worst = max(results["asr"]["by_attack"].items(), key=lambda item: item[1]["rate"] or 0.0)
    print(f"\nred team (PPO policy, {results['asr']['overall']['n']} attacked held-out requests): attack success "
          f"{_pct(results['asr']['overall'])}, most effective attack {worst[0]} {_pct(worst[1])}; over-refusal on "
          f"benign look-alikes {_pct((results.get('over_refusal') or {}).get('any'))}")


def _print_reward_model_result(root) -> None:
    """The demo's reward model against the simulated annotator, on pairs for the held-out prompts."""
    from alignkit.data.io import read_jsonl_file
    from alignkit.engine.outputs import read_status

    judged = read_status(root / "judge")
    accuracy = read_status(root / "reward_model").get("eval", {}).get("eval/accuracy")
    if not judged or accuracy is None:
        return
    from alignkit.feedback.stats import wilson_interval

    held_out = sum(r.get("split") == "test" for r in read_jsonl_file(root / "judge" / "preferences.jsonl"))
    low, high = wilson_interval(accuracy * held_out, held_out)
    print(f"\npreferences: the simulated annotator (rubric) judged {judged['comparisons']} response pairs: "
          f"{judged['preferences']} preferences, {judged['ties']} ties")
    print(f"reward model: held-out accuracy {accuracy:.1%} (95% interval {low:.0%}-{high:.0%}) against the "
          f"annotator's labels on {held_out} pairs for test-split prompts; 50% is chance")


def _print_win_rate(root) -> None:
    """The demo's DPO (and PPO) policies against their SFT starting point, on the held-out prompts."""
    from alignkit.engine.outputs import read_status
    from alignkit.feedback.winrate import describe

    summary = read_status(root / "win_rate")
    if summary.get("status") == "complete":
        print(f"\nDPO: {describe(summary, 'the DPO policy', 'the SFT policy')}, answering held-out prompts")
    _print_ppo_result(root)


def _print_ppo_result(root) -> None:
    """The demo's PPO stage: reward-model score and KL over training, then its held-out win rate."""
    import json

    from alignkit.engine.outputs import read_status
    from alignkit.feedback.winrate import describe

    metrics = root / "ppo" / "metrics.jsonl"
    if read_status(root / "ppo").get("status") != "complete" or not metrics.exists():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    k = max(1, len(rows) // 4)
    first = sum(r["objective/scores"] for r in rows[:k]) / k
    last = sum(r["objective/scores"] for r in rows[-k:]) / k
    kl = sum(r["objective/kl"] for r in rows[-k:]) / k
    print(f"\nPPO: reward-model score {first:.2f} -> {last:.2f} (mean of the first and last {k} of {len(rows)} "
          f"updates), KL to the SFT policy {kl:.2f} nats per response at the end")
    summary = read_status(root / "ppo_win_rate")
    if summary.get("status") == "complete":
        print(f"PPO: {describe(summary, 'the PPO policy', 'the SFT policy')}, answering held-out prompts")


def _one_line(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="alignkit", description="Align language models with what people prefer.")
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=Parser)

    data = commands.add_parser("data", help="validate and describe datasets")
    data_commands = data.add_subparsers(title="data commands", dest="data_command", metavar="COMMAND",
                                        parser_class=Parser)
    kinds = ("sft", "preference", "unpaired", "prompt")
    p = data_commands.add_parser("validate", help="check a dataset; one line per problem, exit 2 when invalid",
                                 description="Check every row of a dataset file. Prints one `PATH:LINE: FIELD: "
                                 "why` line per problem and exits 2, or exits 0 when the file is valid.")
    p.add_argument("path", help="JSONL(.gz), JSON, Parquet, CSV/TSV file or a saved HF dataset directory")
    option(p, "--kind", choices=kinds, help="expected format (default: detected from the first row)")
    option(p, "--split", help="split of a saved HF DatasetDict (default: train)")
    option(p, "--max_problems", type=int, default=50, help="most problems to print (default: 50)")
    p.set_defaults(func=cmd_data_validate)

    p = data_commands.add_parser("stats", help="counts, length percentiles, duplicates and ties",
                                 description="Describe a dataset: rows, format, length percentiles, "
                                 "duplicate rows and prompts, ties.")
    p.add_argument("path", help="dataset file or saved HF dataset directory")
    option(p, "--kind", choices=kinds, help="expected format (default: detected)")
    option(p, "--tokenizer", help="also report lengths in tokens of this model's tokenizer")
    option(p, "--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=cmd_data_stats)
    data.set_defaults(func=lambda args: data.print_help() or EXIT_BAD_INPUT)

    p = commands.add_parser("generate", help="sample responses to a file of prompts",
                            description="Sample responses to prompt-format rows ({\"prompt\": ...}); writes "
                            "JSONL rows with a completion field.")
    option(p, "--model_name_or_path", "--model", required=True,
           help="embedded:smollm2-135m-instruct, embedded:tiny, a local checkpoint or a hub id")
    option(p, "--prompts", "--dataset_name", "--data", required=True,
           help="file of prompt rows (several: comma-separated)")
    option(p, "--dataset_split", help="only rows whose split column has this value (e.g. test)")
    option(p, "--output", "--output_file", "-o", help="write JSONL here (default: print to stdout)")
    option(p, "--max_new_tokens", type=int, default=256, help="most tokens per response (default: 256)")
    option(p, "--temperature", type=float, default=0.7, help="sampling temperature, 0 for greedy (default: 0.7)")
    option(p, "--top_p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    option(p, "--top_k", type=int, default=0, help="sample from the k most likely tokens, 0 for all (default: 0)")
    option(p, "--num_return_sequences", "--num_generations", type=int, default=1,
           help="responses per prompt (default: 1)")
    option(p, "--batch_size", "--per_device_eval_batch_size", type=int, default=8,
           help="prompts per batch (default: 8)")
    option(p, "--seed", type=int, default=0, help="random seed (default: 0)")
    option(p, "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    option(p, "--dtype", "--torch_dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.set_defaults(func=cmd_generate)

    p = commands.add_parser("models", help="list the embedded models and where they are cached",
                            description="List the embedded models, whether each is cached, and the cache "
                            "directory (ALIGNKIT_CACHE moves it).")
    p.set_defaults(func=cmd_models)

    from alignkit.config import add_arguments
    from alignkit.engine.launch import add_options as add_launch_options
    from alignkit.pipeline import method_parts

    training = (  # command, pipeline method, help, description, aliases, defaults
        ("sft", "sft", "supervised fine-tuning on demonstrations", "Supervised fine-tuning.", (), {}),
        ("rm", "reward_model", "train a Bradley-Terry reward model on preference pairs",
         "Train a reward model (an LM with a scalar head) on preference data with the Bradley-Terry loss.",
         ("reward",), {}),
        ("dpo", "dpo", "direct preference optimisation (DPO, cDPO, robust, IPO, hinge, RPO)",
         "Train a policy on preference pairs with DPO or a reference-based variant.", (), {}),
        ("simpo", "simpo", "SimPO preference optimisation (no reference model)",
         "SimPO: length-normalised, reference-free.", (), {"loss_type": "simpo", "title": None}),
        ("orpo", "simpo", "ORPO preference optimisation (no reference model)",
         "ORPO: odds-ratio term + NLL, reference-free.", (), {"loss_type": "orpo", "title": None}),
        ("cpo", "simpo", "CPO preference optimisation (no reference model)",
         "CPO: DPO with a uniform reference + NLL.", (), {"loss_type": "cpo", "title": None}),
        ("kto", "kto", "KTO on unpaired thumbs-up/down data (or pairs, split in two)",
         "Kahneman-Tversky optimisation: learns from labelled single completions; preference pairs are split "
         "into a desirable and an undesirable example.", (), {}),
        ("grpo", "grpo", "online RL with group-relative advantages (GRPO, Dr. GRPO, REINFORCE++)",
         "Sample a group of responses per prompt, score them with reward sources, and follow the group-relative "
         "advantage (docs/rl.md).", (), {}),
        ("ppo", "ppo", "PPO with a KL penalty, a value model and GAE (RLHF)",
         "PPO: sample, score, penalise KL to the reference per token, GAE with a value model, several clipped "
         "epochs per rollout (docs/rl.md).", (), {}),
        ("rloo", "grpo", "online RL with RLOO's leave-one-out baseline",
         "RLOO: GRPO's loop with each response's baseline the mean reward of the other responses to its prompt.",
         (), {"advantage": "rloo"}),
    )
    for name, method, summary, description, aliases, defaults in training:
        p = commands.add_parser(name, aliases=list(aliases), help=summary,
                                description=f"{description} Options override the --config recipe; TRL's option "
                                "names work.")
        option(p, "--config", help="YAML recipe of option: value pairs")
        add_arguments(p, method_parts(method)[0])
        add_launch_options(p, option)
        p.set_defaults(func=cmd_train, method=method, **{"title": name, **defaults})

    from alignkit.rollout.pairs import GeneratePairsConfig

    p = commands.add_parser("generate-pairs", aliases=["generate_pairs"],
                            help="sample N responses per prompt for judging",
                            description="Sample several responses per prompt; writes one JSONL row per prompt with "
                            "a responses list, ready for `alignkit judge` or the annotation app.")
    option(p, "--config", help="YAML recipe of option: value pairs")
    option(p, "--output", "-o", help="write the pairs here (default: OUTPUT_DIR/pairs.jsonl with a run.json)")
    add_arguments(p, GeneratePairsConfig)
    p.set_defaults(func=cmd_generate_pairs)

    p = commands.add_parser("judge-agreement", aliases=["judge_agreement"],
                            help="how far a judge agrees with labelled preferences (e.g. human labels)",
                            description="Ask a judge about every labelled pair of a preference file (for example "
                            "`alignkit annotate export` output) and report its agreement and Cohen's kappa with the "
                            "labels.")
    option(p, "--judge", required=True, help="rules, rm:PATH, llm:MODEL, llm-cot:MODEL or openai:URL[#MODEL]")
    option(p, "--data", "--preferences", required=True, help="preference rows (prompt, chosen, rejected; tie)")
    option(p, "--constitution", default="default", help="for LLM judges: the comparison principles")
    option(p, "--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=cmd_judge_agreement)

    from alignkit.rollout.best_of_n import BestOfNConfig

    config_command(commands, "best-of-n", BestOfNConfig, cmd_best_of_n, "sample n responses, keep the best by reward",
                   "Best-of-n (rejection) sampling: n responses per prompt, scored by reward sources (rm:PATH, "
                   "rules, a Python function, ...); writes the best as SFT data and best-over-worst preferences.",
                   aliases=["best_of_n"])

    from alignkit.feedback.stage import JudgeConfig

    p = commands.add_parser("judge", help="judge response pairs and write preference data",
                            description="Compare every pair of responses in a pairs file with a judge and write "
                            "preference rows (prompt, chosen, rejected, p_chosen), ready for `alignkit rm`.")
    option(p, "--config", help="YAML recipe of option: value pairs")
    option(p, "--out", "--output", "-o", help="write the preferences here (default: OUTPUT_DIR/preferences.jsonl)")
    add_arguments(p, JudgeConfig)
    p.set_defaults(func=cmd_judge)

    from alignkit.feedback.winrate import WinRateConfig

    config_command(commands, "win-rate", WinRateConfig, cmd_win_rate, "win rate of one policy's answers against "
                   "another's", "Judge the answers of policy A against policy B's to the same prompts (two "
                   "`alignkit generate` outputs) and report A's win rate with a 95% interval.", aliases=["win_rate"])

    p = commands.add_parser("score", help="score prompt/response rows with reward models",
                            description="Score every response in a file (prompt+completion, preference pairs, or "
                            "generate-pairs rows) with a reward model, an ensemble, or the safety+helpfulness rule.")
    option(p, "--data", "--dataset_name", required=True, help="rows to score")
    option(p, "--rm", "--reward_model", action="append", default=[],
           help="reward model directory (repeat for an ensemble)")
    option(p, "--ensemble", choices=("mean", "min", "mean_minus_std"), default="mean",
           help="how an ensemble combines its members (default: mean)")
    option(p, "--uncertainty_k", type=float, default=1.0, help="k of mean_minus_std (default: 1.0)")
    option(p, "--safety_rm", help="safety reward model (with --helpfulness_rm: the Llama 2 combination)")
    option(p, "--helpfulness_rm", help="helpfulness reward model")
    option(p, "--safety_threshold", type=float, default=0.15,
           help="use the safety score when sigmoid(safety) is below this (default: 0.15)")
    option(p, "--no_whiten", action="store_true", help="report the combined score before whitening")
    option(p, "--output", "-o", help="write the scored rows here (default: print them)")
    option(p, "--batch_size", type=int, default=16, help="sequences per batch (default: 16)")
    option(p, "--max_length", type=int, default=1024, help="longest prompt+response in tokens (default: 1024)")
    option(p, "--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=cmd_score)

    p = commands.add_parser("pipeline", help="run a recipe's stages in order, skipping completed ones",
                            description="Run the stages of a YAML recipe in order; a stage whose output is "
                            "complete is skipped and an interrupted one resumes.")
    p.add_argument("recipe", help="recipe file, or a packaged recipe name (demo, tiny)")
    option(p, "--output_dir", help="pipeline directory (default: the recipe's output_dir)")
    p.set_defaults(func=cmd_pipeline)

    p = commands.add_parser("report", help="rebuild report.html of a run (or index.html of a pipeline)",
                            description="Rebuild a run directory's report.html from its metrics.jsonl, or "
                            "every stage's report and the summary of a pipeline directory.")
    p.add_argument("run_dir", help="run directory or pipeline directory")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("demo", help="run the demo pipeline on the embedded model (what `make demo` runs)",
                            description="Answer the built-in prompts with SmolLM2, fine-tune it with LoRA on "
                            "the built-in SFT data, answer again, and show both.")
    option(p, "--output_dir", help="where the demo's stages go (default: runs/demo)")
    p.set_defaults(func=cmd_demo)

    from alignkit.annotate.cli import add_commands as add_annotate_commands
    from alignkit.feedback.cai_cli import add_commands as add_cai_commands
    from alignkit.safety.cli import add_commands as add_safety_commands

    add_annotate_commands(commands, option, Parser)
    add_cai_commands(commands, option, Parser, config_command)
    add_safety_commands(commands, option, Parser, config_command)
    return parser


def _one_line_warnings() -> None:
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"alignkit: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    _one_line_warnings()
    # --num_processes / --accelerate_config: the same command again, on N processes (engine/launch.py)
    launch = {k: vars(args).pop(k) for k in ("num_processes", "accelerate_config") if k in vars(args)}
    try:
        if launch:
            from alignkit.engine.launch import relaunch

            return relaunch(sys.argv[1:] if argv is None else argv, launch.get("num_processes"),
                            launch.get("accelerate_config"))
        return args.func(args)
    except DataError as e:
        for problem in e.problems[:20]:
            print(problem, file=sys.stderr)
        if len(e.problems) > 20:
            print(f"... and {len(e.problems) - 20} more (see `alignkit data validate`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AlignkitError as e:
        print(f"alignkit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("alignkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and cut off: not an error worth a message
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:  # a bug in alignkit or a library: one line, traceback on request
        if os.environ.get("ALIGNKIT_DEBUG"):
            raise
        text = str(e).strip().splitlines()
        print(f"alignkit: internal error: {type(e).__name__}: {text[0] if text else ''} "
              "(rerun with ALIGNKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
