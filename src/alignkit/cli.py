"""`alignkit <command>`: parse the command line, build a config, call the library. Nothing else lives here.

The commands are the registry's (`alignkit.commands`): config commands, whose options are their config's
fields, and tools (data, models, score, ...). Only the chosen command's module is imported, so `alignkit
--help` loads no model library. Options use TRL/transformers names and accept dashes or underscores
(`--max_new_tokens` or `--max-new-tokens`). Every error is one line on stderr and a non-zero exit (2 for
bad input); set ALIGNKIT_DEBUG=1 to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from alignkit import __version__
from alignkit.commands import COMMANDS, ORDER, TOOLS, Command, under
from alignkit.engine.launch import add_options as add_launch_options
from alignkit.engine.launch import hide_deepspeed_unless_chosen, relaunch
from alignkit.errors import AlignkitError, DataError
from alignkit.options import EXIT_BAD_INPUT, Parser, add_arguments, config_from_args, option

# argparse destinations of the CLI's own; a config field of one of these names could not be set
RESERVED = ("func", "command", "command_spec", "config", "output", "num_processes", "accelerate_config")


def add_command_options(parser, command: Command) -> None:
    """Fill `parser` (made for `command`) with its config's options; `main` runs it from `args.command_spec`."""
    config_cls, _ = command.load()
    clash = set(config_cls.__dataclass_fields__) & set(RESERVED)
    if clash:
        raise TypeError(f"{config_cls.__name__}: field(s) {', '.join(sorted(clash))} clash with the CLI's options")
    if not command.typed:  # a typed command's result holds every default, which would hide a recipe's values
        option(parser, "--config", help="YAML recipe of option: value pairs")
    if command.output_flags:
        where = "print to stdout" if command.typed else f"OUTPUT_DIR/{command.output} with a run.json"
        option(parser, *command.output_flags, dest="output", default=None, help=f"write here (default: {where})")
    add_arguments(parser, config_cls, flags=command.flags, typed=command.typed, required=command.required,
                  exclude=command.exclude)
    if command.trains:
        add_launch_options(parser, option)
    parser.set_defaults(command_spec=command)


def _add(commands, name: str, entry, fill: bool) -> None:
    """One command (or group) of the registry; its options only when `fill` (it is the one that runs)."""
    description = entry.description if isinstance(entry, Command) else ""
    p = commands.add_parser(name, aliases=list(entry.aliases), help=entry.help, description=description or None)
    if not fill:
        return
    if isinstance(entry, Command):
        add_command_options(p, entry)
        return
    module, function = entry.fill.split(":")
    sub = getattr(importlib.import_module(module), function)(p)
    for command in under(name) if sub is not None else ():
        _add(sub, command.path[-1], command, True)


def build_parser() -> Parser:
    """The whole `alignkit` parser: every command with its options (imports every command's module)."""
    return _build(None)


def parser_for(argv: list[str]) -> Parser:
    """The parser `main` uses: the options of the command named in argv only (fast --help, lazy imports)."""
    return _build(next((word for word in argv if not word.startswith("-")), ""))


def _build(only: str | None) -> Parser:
    """The `alignkit` parser; with `only`, the options of that command alone (the others list their help)."""
    parser = Parser(prog="alignkit", description="Align language models with what people prefer.")
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=Parser)
    entries = {**{c.path[0]: c for c in COMMANDS.values() if len(c.path) == 1}, **{t.cli: t for t in TOOLS}}
    for name in ORDER:
        entry = entries[name]
        _add(commands, name, entry, only is None or only in (name, *entry.aliases))
    return parser


# ----------------------------------------------------------------------------------------------------
# what the command line does around a config command's run function (the pipeline calls it bare)


def run_command(command: Command, args) -> int:
    config_cls, run = command.load()
    config = config_from_args(config_cls, args, command.flags, command.defaults)
    if command.trains:
        _train(command, config, run)
    else:
        AROUND.get(command.name, lambda config, run, args: run(config))(config, run, args)
    return 0


def _train(command: Command, config, run) -> None:
    from alignkit.engine.distributed import is_main_process

    result = run(config)
    if not is_main_process():  # under --num_processes every process gets here; one prints
        return
    title = config.loss_type if "loss_type" in command.defaults else " ".join(command.path)
    metrics = result.last_metrics
    # online RL's headline is its reward (its loss, now logged by the shared engine too, says little)
    name = next((k for k in ("objective/scores", "reward", "loss") if k in metrics), None)
    final = f"; final {name} {metrics[name]:.4f}" if name else ""
    evals = ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items())
    out = result.output_dir
    print(f"{title}: {result.steps} steps in {result.seconds:.0f} s{final}" + (f", {evals}" if evals else "")
          + (f"; {result.skipped_steps} steps skipped" if result.skipped_steps else ""))
    print(f"  model:   {out / 'model'}\n  report:  {out / 'report.html'}\n  metrics: {out / 'metrics.jsonl'}")


def _generate(config, run, args) -> None:
    """`alignkit generate`: the completions to a file (-o) or stdout, no run directory."""
    path = run(config, args.output or "-")
    if path is not None:
        from alignkit.data.io import read_jsonl_file

        print(f"wrote {len(read_jsonl_file(path))} completions to {path}", file=sys.stderr)


def _generate_pairs(config, run, args) -> None:
    path = run(config, args.output)
    print(f"wrote {config.sampling.num_return_sequences} responses per prompt to {path}", file=sys.stderr)


def _judge(config, run, args) -> None:
    from alignkit.feedback.stage import judge_file

    path, stats = judge_file(config, args.output)
    kept = " (kept)" if config.keep_ties else " (dropped)"
    empty = f", {stats['skipped_empty']} pairs with an empty response skipped" if stats["skipped_empty"] else ""
    print(f"judge {config.judge}: {stats['rows']} rows, {stats['comparisons']} comparisons -> "
          f"{stats['preferences']} preferences, {stats['ties']} ties{kept}{empty}; wrote {path}", file=sys.stderr)


def _win_rate(config, run, args) -> None:
    path = run(config)
    print(f"wrote {path} and {path.parent / 'comparisons.jsonl'}", file=sys.stderr)


AROUND = {"generate": _generate, "generate_pairs": _generate_pairs, "judge": _judge, "win_rate": _win_rate,
          "env_demos": lambda config, run, args: run(config, args.output)}  # it prints what it wrote


# ----------------------------------------------------------------------------------------------------


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"alignkit: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = parser_for(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    command = getattr(args, "command_spec", None)
    if command is None and not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    _one_line_warnings()
    hide_deepspeed_unless_chosen()
    # --num_processes / --accelerate_config: the same command again, on N processes (engine/launch.py)
    launch = {k: vars(args).pop(k) for k in ("num_processes", "accelerate_config") if k in vars(args)}
    try:
        if launch:
            return relaunch(sys.argv[1:] if argv is None else argv, launch.get("num_processes"),
                            launch.get("accelerate_config"))
        return run_command(command, args) if command else args.func(args)
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
