"""Configs: flat dataclasses whose field docstrings are their `--help`, filled from YAML and the command line.

A method's config may compose shared parts as nested dataclass fields (`train: TrainSettings`); users
still see flat keys (`learning_rate: 1e-5` in YAML, `--learning_rate 1e-5` on the command line), and each
key is routed to the part that owns it. Unknown keys are errors, with a suggestion. The command-line side (argparse options from these fields) is
`alignkit.options`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the string literal after `name: type = ...`)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass).strip())
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def flat_fields(cls, instance=None) -> dict[str, tuple[list[str], Any, Any, str]]:
    """name -> (path of attribute names, type, default, help) for every leaf field, nested parts flattened.

    A nested part's defaults are those of the instance its field's default_factory makes (RewardConfig's
    TrainSettings has learning_rate 1e-4, not TrainSettings' own 2e-5)."""
    out = {}
    hints, docs = _hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = getattr(instance, f.name) if instance is not None else _default(f)
        if dataclasses.is_dataclass(kind):
            for name, (path, sub_kind, sub_default, doc) in flat_fields(kind, default).items():
                out[name] = ([f.name, *path], sub_kind, sub_default, doc)
        else:
            out[f.name] = ([f.name], kind, default, docs.get(f.name, ""))
    return out


def base_type(kind):
    """Strip Optional[...] / X | None; returns (type, optional)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return kind, False


def coerce(name: str, value: Any, kind) -> Any:
    """Turn a YAML or command-line value into the field's type; AlignkitError when it cannot."""
    base, optional = base_type(kind)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise AlignkitError(f"config: {name}: needs a value")
    origin = typing.get_origin(base) or base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin in (dict, list):
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, origin):
                raise ValueError
            return value
        if base is str or base is Any:
            return value if not isinstance(value, (int, float)) or base is Any else str(value)
        return value
    except (ValueError, TypeError, json.JSONDecodeError):
        what = getattr(base, "__name__", str(base))
        raise AlignkitError(f"config: {name}: expected {what}, got {value!r}") from None


def build_config(cls, values: dict[str, Any] | None = None, recipe: str | Path | None = None):
    """An instance of `cls` from a YAML recipe's keys, then `values` on top (command-line overrides),
    checked (`checked`), so a bad option is one line before anything loads."""
    merged: dict[str, Any] = {}
    if recipe is not None:
        merged.update(load_yaml(recipe))
    merged.update(values or {})
    fields = flat_fields(cls)
    unknown = [k for k in merged if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AlignkitError(f"config: unknown option {key!r}{hint}")
    nested: dict[str, Any] = {}
    for key, value in merged.items():
        path, kind, _, _ = fields[key]
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = coerce(key, value, kind)
    return checked(_instantiate(cls, nested))


def checked(config):
    """`config` after its `check()`, which runs once per set of values: the CLI and the pipeline check a
    config when they build it and the run owner (engine.run) checks it again only if it changed since."""
    if not hasattr(config, "check"):
        return config
    state = repr(to_flat_dict(config))
    if getattr(config, "_checked_values", None) != state:
        config.check()
        object.__setattr__(config, "_checked_values", state)
    return config


def _instantiate(cls, values: dict, default=None):
    """`cls` with `values` set; unset fields keep `default`'s values (a nested part's default_factory instance)."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            if dataclasses.is_dataclass(hints[f.name]):
                base = getattr(default, f.name) if default is not None else _default(f)
                v = _instantiate(hints[f.name], v, base)
            kwargs[f.name] = v
    return dataclasses.replace(default, **kwargs) if default is not None else cls(**kwargs)


def to_flat_dict(config) -> dict[str, Any]:
    """The config as flat key/value pairs (what config.yaml holds)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(to_flat_dict(value))
        else:
            out[f.name] = value
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise AlignkitError(f"{path}: file: recipe does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise AlignkitError(f"{where}: yaml: {getattr(e, 'problem', None) or 'invalid YAML'}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AlignkitError(f"{path}: yaml: a recipe must be a mapping of option: value")
    return data


def save_yaml(path: str | Path, data: dict) -> None:
    """Write YAML atomically."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, p)
