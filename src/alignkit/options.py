"""Command-line options from config dataclasses: the argparse pieces every command-wiring module shares.

A bottom-layer module (it imports only `config` and `errors`), so the CLI and the modules that wire commands
(`safety/cli.py`, `feedback/cai_cli.py`, ...) import their argparse helpers from here, never from `cli.py`.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

from alignkit.config import Words, base_type, build_config, flat_fields, keeps_commas, load_yaml

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


def dest(name: str, flags: dict[str, tuple[str, ...]] | None = None) -> str:
    """The argparse destination of config field `name`: its own name, or the first of its `flags`."""
    own = (flags or {}).get(name)
    return own[0].lstrip("-").replace("-", "_") if own else name


class _ListWords(argparse.Action):
    """A list option's words (nargs="+") as `config.Words`, so `coerce` also reads commas and JSON in them."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, Words(values))


def _list_help(kind, default, verbatim: bool) -> tuple[str, str, str]:
    """(metavar, the accepted form, the default as it would be typed) for a list-typed field."""
    args = typing.get_args(kind)
    metavar = {int: "N", float: "X"}.get(args[0] if args else str, "VALUE")
    form = " (space-separated, or JSON; commas stay in a value)" if verbatim else \
        " (space- or comma-separated, or JSON)"
    items = [str(item) for item in default or ()]
    simple = all(item and not any(c in item for c in " ,[]\"'") for item in items)
    shown = (" ".join(items) if simple else json.dumps(list(default), ensure_ascii=False)) if items else ""
    return metavar, form, shown


def add_arguments(parser, cls, *, flags: dict[str, tuple[str, ...]] | None = None, typed: bool = False,
                  required: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
    """One `--name` (and `--name-with-dashes`) option per flat field of config class `cls`.

    The help is the field's docstring and its default. Untyped (the default), an unset option stays out
    of the result and values stay strings, so a `--config` recipe can sit under the flags and
    `build_config` coerces and checks everything in one place. typed=True gives argparse's own int/float
    checks and the config's defaults in the result (`alignkit generate`). flags: spellings of a field
    (the first one names the option and its destination; the field's own name stays an alias), on top of
    the config's CLI_ALIASES. required: fields that must be given. exclude: fields the command does not offer.
    A list field takes one or more words (`--x a b`), each also comma-separated (`--x a,b`) unless the field
    is marked KEEP_COMMAS, or a JSON array (`--x '["a, b"]'`); `--x ''` is an empty list.
    """
    aliases = {**getattr(cls, "CLI_ALIASES", {})}
    verbatim = keeps_commas(cls)
    for name, (_, kind, default, doc) in flat_fields(cls).items():
        if name in exclude:
            continue
        base, optional = base_type(kind)
        shown = "" if default in (None, "") or name in required else f" (default: {default})"
        form, metavar = "", {int: "N", float: "X"}.get(base, "VALUE")
        is_list = (typing.get_origin(base) or base) in (list, tuple)
        if is_list:
            metavar, form, typed_default = _list_help(base, default, name in verbatim)
            shown = f" (default: {typed_default})" if typed_default and name not in required else ""
        kwargs: dict[str, Any] = {"help": ((doc or name) + form + shown).replace("%", "%%"),  # argparse: %
                                  "metavar": metavar, "dest": dest(name, flags)}
        if base is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        if is_list:
            kwargs.update(nargs="+", action=_ListWords)
        if name in required:
            kwargs.update(required=True)
        elif typed:
            kwargs.update(default=default)
        else:
            kwargs.update(default=argparse.SUPPRESS)
        if typed and base in (int, float) and not optional:
            kwargs.update(type=base)
        names = (flags or {}).get(name) or (f"--{name}",)
        extra = tuple(n for n in (f"--{name}", *aliases.get(name, ())) if n not in names)
        option(parser, names[0], *names[1:], *extra, **kwargs)


def config_from_args(cls, args, flags: dict[str, tuple[str, ...]] | None = None, defaults: dict | None = None):
    """The config a command line asks for: `defaults` (the command's own, e.g. orpo's loss_type), then the
    `--config` recipe, then the options given."""
    recipe = load_yaml(args.config) if getattr(args, "config", None) else {}
    recipe.pop("method", None)  # a pipeline stage's key; harmless in a single command's recipe
    given = {name: getattr(args, dest(name, flags)) for name in flat_fields(cls) if hasattr(args, dest(name, flags))}
    return build_config(cls, {**(defaults or {}), **recipe, **given})
