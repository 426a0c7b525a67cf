"""Constitutions as data: critique/revision principle pairs, comparison questions, yes/no assessment
questions (for judges that score one reply at a time) and few-shot examples,
read from YAML (`feedback/constitutions/*.yaml` ship with alignkit; users pass their own file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignkit.errors import AlignkitError

PACKAGED = Path(__file__).parent / "constitutions"


@dataclass(frozen=True)
class Critique:
    name: str
    critique: str  # asks the critic to find one kind of flaw
    revision: str  # asks the reviser to fix exactly that flaw


@dataclass(frozen=True)
class Comparison:
    name: str
    question: str  # answered with (A) or (B)


@dataclass
class Constitution:
    name: str
    critiques: list[Critique]
    comparisons: list[Comparison]
    examples: list[dict] = field(default_factory=list)
    assessments: list[Comparison] = field(default_factory=list)  # yes/no questions about one reply

    def critique(self, name: str) -> Critique:
        return next(c for c in self.critiques if c.name == name)


def packaged_names() -> list[str]:
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def load_constitution(spec: str = "default") -> Constitution:
    """A packaged constitution by name, or a YAML file; one clear line for anything malformed."""
    path = Path(spec) if Path(spec).is_file() else PACKAGED / f"{spec}.yaml"
    if not path.is_file():
        raise AlignkitError(f"{spec}: constitution: no such file or packaged name (packaged: "
                            f"{', '.join(packaged_names())})")
    data = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    if not isinstance(data, dict):
        raise AlignkitError(f"{where}: constitution: expected a mapping with critiques and comparisons")
    critiques, comparisons = [], []
    for i, item in enumerate(data.get("critiques") or []):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("name", "critique", "revision")):
            raise AlignkitError(f"{where}: critiques[{i}]: needs name, critique and revision texts")
        critiques.append(Critique(item["name"], item["critique"].strip(), item["revision"].strip()))
    assessments = []
    for key, target in (("comparisons", comparisons), ("assessments", assessments)):
        for i, item in enumerate(data.get(key) or []):
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                     for k in ("name", "question")):
                raise AlignkitError(f"{where}: {key}[{i}]: needs name and question texts")
            target.append(Comparison(item["name"], item["question"].strip()))
    if not critiques and not comparisons:
        raise AlignkitError(f"{where}: constitution: no critiques and no comparisons")
    names = {c.name for c in critiques}
    examples = data.get("examples") or []
    for i, example in enumerate(examples):
        keys = ("prompt", "response", "principle", "critique", "revision")
        if not isinstance(example, dict) or not all(isinstance(example.get(k), str) for k in keys):
            raise AlignkitError(f"{where}: examples[{i}]: needs {', '.join(keys)}")
        if example["principle"] not in names:
            raise AlignkitError(f"{where}: examples[{i}]: principle: {example['principle']!r} is not a critique")
    return Constitution(str(data.get("name") or path.stem), critiques, comparisons, list(examples), assessments)
