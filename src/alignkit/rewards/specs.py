"""Spec strings that name reward sources, judges and harm judges: a bare kind (`rules`, `guard`, `none`) or
`KIND:ARGUMENT` (`rm:PATH`, `llm:MODEL`, `openai:URL#MODEL`, `contains:TEXT`, ...). One `SpecKinds` per
family parses a spec into (kind, argument) and, for a spec it does not know, raises one error that lists
the family's kinds; what each kind builds stays with its family (`rewards.sources`, `feedback.judges`,
`safety.scorers`). A PATH or DIR naming a model or a guard may also be the run directory of the alignkit
command that trained it (`models.load.resolve_model_path` finds its final model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alignkit.errors import AlignkitError

FUNCTION = "module:function, file.py:function"
"""The usage of the catch-all kind "function": any other spec with a colon names a Python function."""


@dataclass(frozen=True)
class SpecKinds:
    """One family of specs, as the usages its error lists: "rules (...)" is the bare kind `rules`, "rm:PATH
    (...)" the kind `rm` with a required argument, FUNCTION the catch-all. `unknown` frames the error:
    "{spec!r} is not a judge; use {listing}"."""

    what: str
    usages: tuple[str, ...]
    unknown: str

    def listing(self) -> str:
        """The usages, "a, b or c"."""
        *rest, last = self.usages
        return f"{', '.join(rest)} or {last}" if rest else last

    def parse(self, spec: str) -> tuple[str, str]:
        """(kind, argument) of `spec`: "" for a bare kind, the whole spec for the catch-all."""
        name, colon, argument = spec.partition(":")
        for usage in (u for u in self.usages if u != FUNCTION):
            kind = re.match(r"[^:\s,(]+", usage).group(0)
            if usage[len(kind):].startswith(":"):
                if name == kind and argument:
                    return kind, argument
            elif spec == kind:
                return kind, ""
        if FUNCTION in self.usages and colon:
            return "function", spec
        raise AlignkitError(f"{self.what}: " + self.unknown.format(spec=spec, listing=self.listing()))


REWARD_SPECS = SpecKinds("reward", ("rm:PATH", "rules", "llm:MODEL", "openai:URL#MODEL", FUNCTION, "contains:TEXT",
                                    "max_words:N"), unknown="unknown source {spec!r}; use {listing}")
JUDGE_SPECS = SpecKinds("judge", (
    "rules (the written rubric)", "rm:PATH (a reward model), rm:PATH,PATH,... (their mean)",
    "llm:MODEL (a local LM's A/B probabilities)", "llm-cot:MODEL (after its reasoning, clamped to [0.4, 0.6])",
    "llm-score:MODEL (each reply scored alone by P(Yes) vs P(No))",
    "openai:URL[#MODEL] (an OpenAI-compatible completions server)"), unknown="{spec!r} is not a judge; use {listing}")
HARM_JUDGE_SPECS = SpecKinds("harm_judge", ("guard", "guard:DIR", "none", "llm:MODEL", "openai:URL[#MODEL]"),
                             unknown="expected {listing}, got {spec!r}")
