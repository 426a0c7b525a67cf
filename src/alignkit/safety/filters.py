"""Content filters the guardrails apply to text: PII redaction (emails, phone numbers, Luhn-checked card
numbers) and the pieces deny-lists need."""

from __future__ import annotations

import re

PII_KINDS = ("email", "phone", "credit_card")


EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes; only Luhn-valid ones are redacted
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# an optional +country code, an optional area code, then NNN(N)-NNNN; never part of a longer digit run
# (so a Luhn-invalid card number is not half-redacted as a phone number)
PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])?"
                   r"\d{3,4}[ .-]\d{4}(?![ .-]?\d)")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum: doubling every second digit from the right, the digit sum is a multiple of 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redact_pii(text: str, kinds=PII_KINDS) -> tuple[str, list[str]]:
    """`text` with PII replaced by [EMAIL], [PHONE], [CREDIT_CARD]; and the kind of each replacement."""
    found: list[str] = []

    def card(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group())
        if not luhn_valid(digits):
            return match.group()
        found.append("credit_card")
        return "[CREDIT_CARD]"

    def plain(kind: str):
        def replace(_match: re.Match) -> str:
            found.append(kind)
            return f"[{kind.upper()}]"
        return replace

    # cards first: a card number's groups must not be taken for a phone number
    if "credit_card" in kinds:
        text = CARD.sub(card, text)
    if "email" in kinds:
        text = EMAIL.sub(plain("email"), text)
    if "phone" in kinds:
        text = PHONE.sub(plain("phone"), text)
    return text, found


# ----------------------------------------------------------------------------------------------------
# normalisation and deny-lists


def normalise(text: str) -> str:
    """The form deny-lists match against: NFKC (fullwidth and other compatibility letters become plain
    ones), format characters (zero-width spaces and joiners, soft hyphens, bidi marks) removed, dash-like
    characters made "-", casefolded."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.translate(_DASHES).casefold()


_DASHES = {ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"}


class DenyList:
    """Regular expressions and whole-word keywords, matched case-insensitively against `normalise(text)`
    (and against the text as given, so a pattern written for the raw text still works)."""

    def __init__(self, patterns: list[str] = (), keywords: list[str] = ()):
        self.patterns = [re.compile(p, re.I) for p in patterns]
        self.patterns += [re.compile(r"(?<!\w)" + re.escape(normalise(k)) + r"(?!\w)", re.I) for k in keywords]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def search(self, text: str) -> bool:
        folded = normalise(text)
        return any(p.search(folded) or p.search(text) for p in self.patterns)
