"""Train/eval separation: is a training text the same as, or a near-duplicate of, an evaluation text?

Two texts are near-duplicates when any of these holds (docs/data.md, "Train/eval separation"):

- their normalised forms are equal: Unicode NFKC, case-folded, every run of non-alphanumerics one space;
- their content words (normalised words minus a short stop-word list, a trailing plural "s" dropped), when the
  smaller set has at least 2: overlap with a Jaccard index of at least `CONTENT_JACCARD` (0.75), or one set
  holds the other and is at most twice its size. So "How can I kill a Python process?" and "how do I kill a
  python process quickly" are near-duplicates, and so are "How do I make a simple vinaigrette?" and the same
  question "for a green salad", while the minimal pair "How can I kill a spider?" / "How can I kill a
  person?" is not;
- at least `SHINGLE_CONTAINMENT` (half) of the word 5-grams of the shorter text occur in the longer one, when
  the shorter has at least `SHINGLE_MIN` (6) of them: a longer prompt pasted inside a training row. (Short
  texts share 5-grams such as "tell me how to make" without being copies.)

An evaluation set we may not copy into the repository (XSTest) is compared through its `fingerprint`: the
salted SHA-256 digests of its normalised text, content words and 5-grams, which `near_duplicates` compares
exactly as it compares texts, without the text itself.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

CONTENT_JACCARD = 0.75
SHINGLE_CONTAINMENT = 0.5
SHINGLE = 5
SHINGLE_MIN = 6
SALT = "alignkit-overlap-v1"
STOP = frozenset("""a an the and or but if of to in on at by for with from into about as is are was were be been
being am do does did doing done have has had having i me my mine myself you your yours we us our they them their
he him his she her it its this that these those there here what which who whom whose when where why how can could
would should will shall may might must not no so than then too very just also any some all each every one ones
get got please tell give let make explain show know want need like way best good""".split())


@dataclass(frozen=True)
class Fingerprint:
    """What `near_duplicates` compares: digests of the normalised text, its content words and its 5-grams."""

    text: str
    words: frozenset[str]
    shingles: frozenset[str]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _digest(part: str) -> str:
    return hashlib.sha256(f"{SALT}\0{part}".encode()).hexdigest()[:16]


def fingerprint(text: str) -> Fingerprint:
    words = normalise(text).split()
    content = {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
               for w in words if w not in STOP}
    shingles = {" ".join(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}
    return Fingerprint(_digest(" ".join(words)), frozenset(map(_digest, content)), frozenset(map(_digest, shingles)))


def near_duplicate(a: Fingerprint, b: Fingerprint) -> bool:
    if a.text == b.text:
        return True
    small, large = sorted((a.words, b.words), key=len)
    if len(small) >= 2 and (len(small & large) / len(small | large) >= CONTENT_JACCARD
                            or (small <= large and 2 * len(small) >= len(large))):
        return True
    small, large = sorted((a.shingles, b.shingles), key=len)
    return len(small) >= SHINGLE_MIN and len(small & large) / len(small) >= SHINGLE_CONTAINMENT


def near_duplicates(train: list[Fingerprint], evaluation: list[Fingerprint]) -> list[tuple[int, int]]:
    """(train index, eval index) of every near-duplicate pair. Only pairs sharing a digest are compared."""
    index: dict[str, list[int]] = {}
    for j, e in enumerate(evaluation):
        for key in {e.text, *e.words, *e.shingles}:
            index.setdefault(key, []).append(j)
    pairs = []
    for i, t in enumerate(train):
        candidates = {j for key in {t.text, *t.words, *t.shingles} for j in index.get(key, ())}
        pairs += [(i, j) for j in sorted(candidates) if near_duplicate(t, evaluation[j])]
    return pairs


def to_json(fp: Fingerprint) -> dict:
    return {"text": fp.text, "words": sorted(fp.words), "shingles": sorted(fp.shingles)}


def from_json(row: dict) -> Fingerprint:
    return Fingerprint(row["text"], frozenset(row["words"]), frozenset(row["shingles"]))
