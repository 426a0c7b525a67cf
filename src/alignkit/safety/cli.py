"""The `alignkit guard` group: `train | classify` (guard_cli.py), `serve | add-key` (proxy_cli.py); docs/guard.md
and docs/guardrails.md. `alignkit redteam` and `alignkit safety-loop` are config commands (alignkit.commands)."""

from __future__ import annotations

from alignkit.options import EXIT_BAD_INPUT, Parser
from alignkit.safety.guard_cli import add_commands
from alignkit.safety.proxy_cli import add_serve_command


def add_guard_commands(guard):
    """Fill the `alignkit guard` group; returns its sub-commands object."""
    guard.description = "A multi-label hazard classifier for prompts and responses (docs/guard.md)."
    sub = guard.add_subparsers(title="guard commands", dest="guard_command", metavar="COMMAND", parser_class=Parser)
    add_commands(sub)
    add_serve_command(sub)
    guard.set_defaults(func=lambda args: guard.print_help() or EXIT_BAD_INPUT)
    return sub
