"""The hazard taxonomy: categories a guard flags, their S-codes, definitions, look-alikes and refusals.

The taxonomy is data (`hazards.yaml` next to this file, or a user's YAML of the same shape), organised after
the MLCommons hazard categories. Each category has an id (`violent_crimes`), a short code (`S1`, what the
guard prints, as Llama Guard does), a one-line definition, what is *not* covered (benign look-alikes that
must stay safe) and a refusal message that names the risk and offers safe help (the safety-SFT loop uses it).
A malformed entry is reported as one line: `PATH:LINE: categories[i].FIELD: why`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignkit.errors import AlignkitError

PACKAGED = Path(__file__).with_name("hazards.yaml")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^S[1-9][0-9]*$")
_TEXT_FIELDS = ("id", "code", "name", "definition", "refusal")


@dataclass(frozen=True)
class Hazard:
    id: str
    code: str
    name: str
    definition: str
    not_covered: tuple[str, ...]
    refusal: str


@dataclass(frozen=True)
class Taxonomy:
    hazards: tuple[Hazard, ...]
    path: str

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.hazards]

    def get(self, hazard_id: str) -> Hazard:
        for h in self.hazards:
            if h.id == hazard_id:
                return h
        raise AlignkitError(f"{self.path}: unknown hazard category {hazard_id!r}; known: {', '.join(self.ids)}")

    def code(self, hazard_id: str) -> str:
        return self.get(hazard_id).code

    def by_code(self, code: str) -> Hazard:
        for h in self.hazards:
            if h.code == code:
                return h
        raise AlignkitError(f"{self.path}: unknown hazard code {code!r}")


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """The packaged taxonomy, or the one in `path`; AlignkitError with one line for the first malformed entry."""
    p = Path(path) if path is not None else PACKAGED
    if not p.is_file():
        raise AlignkitError(f"{p}: file: taxonomy does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)  # nodes carry line numbers for the error messages
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise AlignkitError(f"{where}: yaml: {getattr(e, 'problem', None) or 'invalid YAML'}") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not data["categories"]:
        raise AlignkitError(f"{p}:1: categories: expected a non-empty list of hazard categories")
    lines = [1] * len(data["categories"])
    for key, value in root.value:
        if key.value == "categories":
            lines = [item.start_mark.line + 1 for item in value.value]

    hazards, seen_ids, seen_codes = [], set(), set()
    for i, (entry, line) in enumerate(zip(data["categories"], lines)):
        def bad(field: str, why: str):
            return AlignkitError(f"{p}:{line}: categories[{i}].{field}: {why}")

        if not isinstance(entry, dict):
            raise bad("entry", "expected a mapping with id, code, name, definition, not_covered, refusal")
        unknown = sorted(set(entry) - {*_TEXT_FIELDS, "not_covered"})
        if unknown:
            raise bad(unknown[0], "unknown field")
        for field in _TEXT_FIELDS:
            value = entry.get(field)
            if not isinstance(value, str) or not value.strip():
                raise bad(field, "missing" if value is None else "expected a non-empty string")
        if not _ID.match(entry["id"]):
            raise bad("id", f"{entry['id']!r} is not snake_case")
        if not _CODE.match(entry["code"]):
            raise bad("code", f"{entry['code']!r} is not of the form S1, S2, ...")
        if entry["id"] in seen_ids:
            raise bad("id", f"{entry['id']!r} appears twice")
        if entry["code"] in seen_codes:
            raise bad("code", f"{entry['code']!r} appears twice")
        not_covered = entry.get("not_covered")
        if not isinstance(not_covered, list) or not not_covered \
                or not all(isinstance(s, str) and s.strip() for s in not_covered):
            raise bad("not_covered", "expected a non-empty list of strings (the benign look-alikes)")
        seen_ids.add(entry["id"])
        seen_codes.add(entry["code"])
        hazards.append(Hazard(entry["id"], entry["code"], entry["name"].strip(), " ".join(entry["definition"].split()),
                              tuple(" ".join(s.split()) for s in not_covered), " ".join(entry["refusal"].split())))
    return Taxonomy(tuple(hazards), str(p))
