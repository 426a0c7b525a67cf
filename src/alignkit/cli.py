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
    from alignkit.data.io import load_rows, write_jsonl
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rollout.generate import generate

    settings = _sampling(args)
    settings.check()
    rows = load_rows(args.prompts, "prompt")
    tokenizer = load_tokenizer(args.model_name_or_path, padding_side="left")
    model = load_policy(args.model_name_or_path, dtype=args.dtype, device=args.device)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], settings)
    records = [
        {**row, "completion": g.completion, "finish_reason": g.finish_reason}
        for row, gens in zip(rows, outputs) for g in gens
    ]
    if args.output:
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} completions to {args.output}", file=sys.stderr)
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    return 0


def cmd_demo(args) -> int:
    from alignkit.data.builtin import builtin_prompts
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rollout.generate import SamplingSettings, generate

    print(f"alignkit {__version__} demo: {args.model_name_or_path} answers the built-in prompts (greedy decoding)\n")
    tokenizer = load_tokenizer(args.model_name_or_path, padding_side="left")
    model = load_policy(args.model_name_or_path, dtype="float32", device=args.device)
    prompts = [row["prompt"] for row in builtin_prompts()]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0, batch_size=args.batch_size)
    for prompt, (gen,) in zip(prompts, generate(model, tokenizer, prompts, settings)):
        question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        cut = "" if gen.finish_reason == "stop" else " [...]"
        print(f"Q: {question}\nA: {gen.completion}{cut}\n")
    return 0


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
    option(p, "--prompts", "--dataset_name", "--data", required=True, help="file of prompt rows")
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

    p = commands.add_parser("demo", help="run the main job on the embedded model (what `make demo` runs)")
    option(p, "--model_name_or_path", "--model", default="embedded:smollm2-135m-instruct",
           help="model to run (default: embedded:smollm2-135m-instruct)")
    option(p, "--max_new_tokens", type=int, default=96, help="most tokens per answer (default: 96)")
    option(p, "--batch_size", type=int, default=4, help="prompts per batch (default: 4)")
    option(p, "--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.set_defaults(func=cmd_demo)
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
    try:
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
