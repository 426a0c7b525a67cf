"""Red-team attacks: deterministic rewrites of a request that try to get a refused answer out of a model.

    attacks = parse_attacks("none,base64,roleplay+refusal_suppression,many_shot:k=8")
    for attack in attacks:
        rng = attack_rng(seed, request_text(request), attack.name)
        attacked = attack.transform(request, rng)      # a conversation to send to the model
        plain = attack.decode(reply)                   # the reply as plain text, for the scorer

A spec is a comma-separated list; `+` composes attacks left to right (the composed attack's name is the
spec), and `:key=value` (repeatable) sets a parameter. Interactive attacks (escalation) need the model's
replies: run them with `run_interactive`. Each attack's docstring says what weakness it probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from alignkit.errors import AlignkitError
from alignkit.safety.attacks.base import (Attack, Composed, InteractiveAttack, Messages, as_messages, attack_rng,
                                          request_text)
from alignkit.safety.attacks.encodings import Base64, CharSplit, Leetspeak, Rot13
from alignkit.safety.attacks.escalation import Escalation, run_interactive
from alignkit.safety.attacks.framing import ManyShot, PayloadSplit, PrefixInjection, RefusalSuppression, Roleplay

ATTACKS: dict[str, Callable[..., Attack | InteractiveAttack]] = {
    "none": Attack,
    "base64": Base64,
    "rot13": Rot13,
    "leetspeak": Leetspeak,
    "char_split": CharSplit,
    "roleplay": Roleplay,
    "many_shot": ManyShot,
    "payload_split": PayloadSplit,
    "refusal_suppression": RefusalSuppression,
    "prefix_injection": PrefixInjection,
    "escalation": Escalation,
}

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _parameters(factory: Callable) -> dict[str, str]:
    """name → type name of the parameters a factory takes (dataclass fields; none for plain classes)."""
    if not dataclasses.is_dataclass(factory):
        return {}
    return {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(factory)}


def _convert(attack: str, key: str, kind: str, value: str):
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise AlignkitError(f"attacks: {attack}: {key} must be an integer, got {value!r}") from None
    if kind == "bool":
        if value.lower() not in _TRUE + _FALSE:
            raise AlignkitError(f"attacks: {attack}: {key} must be true or false, got {value!r}")
        return value.lower() in _TRUE
    return value


def build_attack(part: str) -> Attack | InteractiveAttack:
    """One attack from `name` or `name:key=value:key=value`; its name is the text it was built from."""
    name, *settings = part.split(":")
    if name not in ATTACKS:
        raise AlignkitError(f"attacks: unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    factory = ATTACKS[name]
    parameters = _parameters(factory)
    kwargs = {}
    for setting in settings:
        key, eq, value = setting.partition("=")
        if key not in parameters:
            valid = f"valid: {', '.join(parameters)}" if parameters else f"{name} takes no parameters"
            raise AlignkitError(f"attacks: {name}: unknown parameter {key!r}; {valid}")
        if key in kwargs:
            raise AlignkitError(f"attacks: {name}: parameter {key!r} is set twice in {part!r}")
        if not eq:
            raise AlignkitError(f"attacks: {name}: parameter {key!r} needs a value, as in {name}:{key}=VALUE")
        kwargs[key] = _convert(name, key, parameters[key], value)
    attack = factory(**kwargs)
    if settings:
        attack.name = part
    return attack


def parse_attacks(spec: str) -> list[Attack | InteractiveAttack]:
    """The attacks named by a spec such as "none,base64,roleplay+refusal_suppression,many_shot:k=8"."""
    attacks = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise AlignkitError(f"attacks: empty entry in {spec!r}; valid attacks: {', '.join(ATTACKS)}")
        parts = [build_attack(part.strip()) for part in item.split("+")]
        if len(parts) == 1:
            attacks.append(parts[0])
            continue
        interactive = [p.name for p in parts if isinstance(p, InteractiveAttack)]
        if interactive:
            raise AlignkitError(f"attacks: {interactive[0]} is interactive and cannot be composed with '+' "
                                f"(in {item!r})")
        attacks.append(Composed(parts, "+".join(p.name for p in parts)))
    return attacks


__all__ = [
    "ATTACKS", "Attack", "Base64", "CharSplit", "Composed", "Escalation", "InteractiveAttack", "Leetspeak",
    "ManyShot", "Messages", "PayloadSplit", "PrefixInjection", "RefusalSuppression", "Roleplay", "Rot13",
    "as_messages", "attack_rng", "build_attack", "parse_attacks", "request_text", "run_interactive",
]
