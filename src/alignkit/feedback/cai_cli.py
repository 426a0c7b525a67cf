"""`alignkit cai principles`, and the `cai` group that `cai revise | label` (config commands) join (docs/cai.md)."""

from __future__ import annotations

from alignkit.feedback.constitution import load_constitution, packaged_names
from alignkit.options import EXIT_BAD_INPUT, Parser, option


def cmd_principles(args) -> int:
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


def add_commands(cai):
    """Fill the `alignkit cai` group; returns its sub-commands object, where the CLI adds the config commands
    `cai revise` and `cai label` (alignkit.commands)."""
    sub = cai.add_subparsers(title="cai commands", dest="cai_command", metavar="COMMAND", parser_class=Parser)
    cai.description = "Constitutional AI (docs/cai.md)."
    p = sub.add_parser("principles", help="list a constitution's principles",
                       description="Print a constitution's critique/revision pairs and comparison questions.")
    option(p, "--constitution", default="default", help="a packaged name or a YAML file (default: default)")
    p.set_defaults(func=cmd_principles)
    cai.set_defaults(func=lambda args: cai.print_help() or EXIT_BAD_INPUT)
    return sub
