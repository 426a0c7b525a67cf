"""`alignkit data | models | judge-agreement | score | pipeline | report | demo`: the commands that are not a
config command (see `alignkit.commands.TOOLS`). Each `add_*` fills the parser the CLI made for its command.

The command bodies import what they use when they run (this module is loaded only for its commands, and
tests replace library functions such as `data.io.validate` by attribute).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.options import EXIT_BAD_INPUT, Parser, option

KINDS = ("sft", "preference", "unpaired", "prompt")


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


def add_data(data) -> None:
    sub = data.add_subparsers(title="data commands", dest="data_command", metavar="COMMAND", parser_class=Parser)
    p = sub.add_parser("validate", help="check a dataset; one line per problem, exit 2 when invalid",
                       description="Check every row of a dataset file. Prints one `PATH:LINE: FIELD: why` line per "
                       "problem and exits 2, or exits 0 when the file is valid.")
    p.add_argument("path", help="JSONL(.gz), JSON, Parquet, CSV/TSV file or a saved HF dataset directory")
    option(p, "--kind", choices=KINDS, help="expected format (default: detected from the first row)")
    option(p, "--split", help="split of a saved HF DatasetDict (default: train)")
    option(p, "--max_problems", type=int, default=50, help="most problems to print (default: 50)")
    p.set_defaults(func=cmd_data_validate)

    p = sub.add_parser("stats", help="counts, length percentiles, duplicates and ties",
                       description="Describe a dataset: rows, format, length percentiles, duplicate rows and "
                       "prompts, ties.")
    p.add_argument("path", help="dataset file or saved HF dataset directory")
    option(p, "--kind", choices=KINDS, help="expected format (default: detected)")
    option(p, "--tokenizer", help="also report lengths in tokens of this model's tokenizer")
    option(p, "--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=cmd_data_stats)
    data.set_defaults(func=lambda args: data.print_help() or EXIT_BAD_INPUT)


def cmd_models(args) -> int:
    from alignkit.models import embedded

    print(f"cache: {embedded.cache_dir()}  (set ALIGNKIT_CACHE to move it)")
    for name, description in embedded.DESCRIPTIONS.items():
        path = embedded.checkpoint_dir(embedded.PREFIX + name)
        state = "cached" if (path / "config.json").exists() else "built on first use"
        print(f"  {embedded.PREFIX + name:<34} {description} [{state}]")
    print("Also accepted: a directory written by save_pretrained, or a hub id (needs network access).")
    return 0


def add_models(p) -> None:
    p.description = ("List the embedded models, whether each is cached, and the cache directory (ALIGNKIT_CACHE "
                     "moves it).")
    p.set_defaults(func=cmd_models)


def cmd_judge_agreement(args) -> int:
    from alignkit.data.io import load_rows
    from alignkit.feedback.judge_agreement import judge_agreement
    from alignkit.feedback.judges import make_judge

    rows = load_rows(args.data, "preference")
    report = judge_agreement(make_judge(args.judge, device=args.device, constitution=args.constitution), rows)
    print(json.dumps(report))
    return 0


def add_judge_agreement(p) -> None:
    p.description = ("Ask a judge about every labelled pair of a preference file (for example `alignkit annotate "
                     "export` output) and report its agreement and Cohen's kappa with the labels.")
    option(p, "--judge", required=True, help="rules, rm:PATH, llm:MODEL, llm-cot:MODEL or openai:URL[#MODEL]")
    option(p, "--data", "--preferences", required=True, help="preference rows (prompt, chosen, rejected; tie)")
    option(p, "--constitution", default="default", help="for LLM judges: the comparison principles")
    option(p, "--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=cmd_judge_agreement)


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


def add_score(p) -> None:
    p.description = ("Score every response in a file (prompt+completion, preference pairs, or generate-pairs rows) "
                     "with a reward model, an ensemble, or the safety+helpfulness rule.")
    option(p, "--data", "--dataset_name", required=True, help="rows to score")
    option(p, "--rm", "--reward_model", action="append", default=[], help="reward model directory (repeat for an "
           "ensemble)")
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


def cmd_pipeline(args) -> int:
    from alignkit.pipeline import run_pipeline

    run_pipeline(args.recipe, {"output_dir": args.output_dir} if args.output_dir else None)
    return 0


def add_pipeline(p) -> None:
    p.description = ("Run the stages of a YAML recipe in order; a stage whose output is complete is skipped and an "
                     "interrupted one resumes.")
    p.add_argument("recipe", help="recipe file, or a packaged recipe name (demo, tiny)")
    option(p, "--output_dir", help="pipeline directory (default: the recipe's output_dir)")
    p.set_defaults(func=cmd_pipeline)


def cmd_report(args) -> int:
    from alignkit.engine.report import write_report
    from alignkit.engine.stages import summary_row
    from alignkit.engine.summary import write_pipeline_summary
    from alignkit.pipeline import SECTIONS

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
    print(write_pipeline_summary(root, [summary_row(d.name, d) for d in stages], SECTIONS))
    return 0


def add_report(p) -> None:
    p.description = ("Rebuild a run directory's report.html from its metrics.jsonl, or every stage's report and "
                     "the summary of a pipeline directory.")
    p.add_argument("run_dir", help="run directory or pipeline directory")
    p.set_defaults(func=cmd_report)


def cmd_demo(args) -> int:
    from alignkit.demo import run_demo

    run_demo(args.output_dir)
    return 0


def add_demo(p) -> None:
    p.description = ("Answer the built-in prompts with SmolLM2, fine-tune it with LoRA on the built-in SFT data, "
                     "answer again, and show both.")
    option(p, "--output_dir", help="where the demo's stages go (default: runs/demo)")
    p.set_defaults(func=cmd_demo)
