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


KEEP_COMMAS = {"split_commas": False}
"""Field metadata (`field(..., metadata=KEEP_COMMAS)`) for a list whose items may hold commas (regular
expressions): a string is one item, never split at commas."""


class Words(list):
    """The words a list option got on the command line (`--x a b,c`), each still a spelling to read: a JSON
    array, else comma-separated items. `coerce` takes a real list (YAML, Python) item by item as it is."""


def keeps_commas(cls) -> set[str]:
    """Flat names of `cls`'s fields marked KEEP_COMMAS, nested parts included."""
    out, hints = set(), _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= keeps_commas(hints[f.name])
        elif f.metadata.get("split_commas") is False:
            out.add(f.name)
    return out


def _scalar(value: Any, base) -> Any:
    """`value` as a bool, int, float or str (`base`); ValueError or TypeError when it is not one."""
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
    if base is str or base is Any:
        return value if not isinstance(value, (int, float)) or base is Any else str(value)
    return value


def _spelled(word: str, split_commas: bool) -> list:
    """The items one string spells: a JSON array's items, else its comma-separated parts (blank ones dropped),
    else (split_commas False) the string itself; '' is no items."""
    if word.strip().startswith("["):
        try:
            parsed = json.loads(word)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    if not split_commas:
        return [word] if word else []
    return [part.strip() for part in word.split(",") if part.strip()]


def _items(name: str, value: Any, base, split_commas: bool) -> list | tuple:
    """A list (or tuple) field's value: a real list item by item, a string or command-line `Words` read by
    `_spelled`; each item coerced to the element type."""
    origin = typing.get_origin(base) or base
    if isinstance(value, str):
        items = _spelled(value, split_commas)
    elif isinstance(value, Words):
        items = [item for word in value for item in _spelled(str(word), split_commas)]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        what = getattr(origin, "__name__", str(origin))
        raise AlignkitError(f"config: {name}: expected {what}, got {value!r}")
    args = typing.get_args(base)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise AlignkitError(f"config: {name}: expected {len(args)} values, got {len(items)}: {value!r}")
        kinds = list(args)
    else:
        kinds = [args[0] if args else Any] * len(items)
    out = []
    for item, kind in zip(items, kinds):
        try:
            if kind is str and isinstance(item, (list, dict)):
                raise ValueError
            out.append(_scalar(item, kind) if kind in (bool, int, float, str, Any) else item)
        except (ValueError, TypeError):
            what = getattr(kind, "__name__", str(kind))
            raise AlignkitError(f"config: {name}: expected a list of {what}; {item!r} is not one") from None
    return tuple(out) if origin is tuple else out


def coerce(name: str, value: Any, kind, *, split_commas: bool = True) -> Any:
    """Turn a YAML or command-line value into the field's type; AlignkitError when it cannot.

    A list (or tuple) field takes a real list, or a string, or the command line's `Words`, each string a JSON
    array or comma-separated items (`split_commas` False: one item, for a field marked KEEP_COMMAS); ''
    is an empty list (None for an optional one). Items are coerced to the element type."""
    base, optional = base_type(kind)
    if optional and isinstance(value, Words) and len(value) == 1:
        value = value[0]
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise AlignkitError(f"config: {name}: needs a value")
    origin = typing.get_origin(base) or base
    if origin in (list, tuple):
        return _items(name, value, base, split_commas)
    try:
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return _scalar(value, base)
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
    verbatim = keeps_commas(cls)
    for key, value in merged.items():
        path, kind, _, _ = fields[key]
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = coerce(key, value, kind, split_commas=key not in verbatim)
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
