"""`alignkit cai principles | revise | label`: Constitutional AI from the shell (docs/cai.md)."""

from __future__ import annotations


def cmd_principles(args) -> int:
    from alignkit.feedback.constitution import load_constitution, packaged_names

    constitution = load_constitution(args.constitution)
    print(f"constitution {constitution.name} (packaged: {', '.join(packaged_names())})")
    print(f"\ncritique -> revision principles ({len(constitution.critiques)}):")
    for c in constitution.critiques:
        print(f"  {c.name}\n    critique: {c.critique}\n    revision: {c.revision}")
    print(f"\ncomparison principles ({len(constitution.comparisons)}):")
    for c in constitution.comparisons:
        print(f"  {c.name}: {c.question}")
    print(f"\nfew-shot examples: {len(constitution.examples)}")
    return 0


def cmd_revise(args) -> int:
    from alignkit.cli import _config_from_args
    from alignkit.feedback.cai import CAIReviseConfig, run_cai_revise

    run_cai_revise(_config_from_args(CAIReviseConfig, args))
    return 0


def cmd_label(args) -> int:
    from alignkit.cli import _config_from_args
    from alignkit.feedback.cai import CAILabelConfig, run_cai_label

    run_cai_label(_config_from_args(CAILabelConfig, args))
    return 0


def add_commands(commands, option, parser_class, config_command) -> None:
    from alignkit.feedback.cai import CAILabelConfig, CAIReviseConfig

    cai = commands.add_parser("cai", help="Constitutional AI: principles, critique and revision, RLAIF labels",
                              description="Constitutional AI (docs/cai.md).")
    sub = cai.add_subparsers(title="cai commands", dest="cai_command", metavar="COMMAND", parser_class=parser_class)
    p = sub.add_parser("principles", help="list a constitution's principles",
                       description="Print a constitution's critique/revision pairs and comparison questions.")
    option(p, "--constitution", default="default", help="a packaged name or a YAML file (default: default)")
    p.set_defaults(func=cmd_principles)
    config_command(sub, "revise", CAIReviseConfig, cmd_revise, "phase 1: answer, critique and revise under drawn "
                   "principles", "Answer each prompt, then critique and revise the answer under drawn principles; "
                   "writes SFT data (prompt -> final revision), preferences (revision over original) and an audit of "
                   "every model call. A killed run resumes where it stopped.")
    config_command(sub, "label", CAILabelConfig, cmd_label, "phase 2: an LLM judge labels response pairs with soft "
                   "preferences", "Ask an LLM judge which response is better under drawn comparison principles "
                   "(A/B probabilities, both orders averaged, or each reply scored alone); writes preference rows "
                   "with the soft label as p_chosen and margin.")
    cai.set_defaults(func=lambda args: cai.print_help() or 2)
