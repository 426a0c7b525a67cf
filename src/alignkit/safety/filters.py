"""Content filters the guardrails apply to text: PII redaction and deny-lists, and the normalisation that keeps
look-alike characters from walking around them (docs/guard.md, "Content filters").

Normalisation. An attacker (or a model told to by a prompt injection) can hide a word or a number behind
characters that look the same or nothing at all: zero-width spaces and joiners, soft hyphens, bidi marks
(Unicode format characters, Cf), combining marks (Mn), fullwidth or mathematical letters and digits, other
scripts' digits, accented letters, and hyphens other than "-". Two forms undo this:

- `normalise(text)`, for deny-lists: NFKD, casefolded, Cf and Mn characters removed (accents too: "bómb" is
  "bomb"), dash-like characters made "-", every decimal digit made its ASCII digit, then NFC.
- the detection copy, for PII: the same, character by character, but not casefolded (an IBAN's country code
  is upper case), so "josé@example.com" is an email and "４１１１" four digits. PII is found in this copy
  and then replaced in the text *as given*: each span is mapped back to the original characters. So text
  without PII comes back unchanged, character for character (no NFKD rewrites of "x²" or "ﬁ" in a model's
  answer), and a number written with zero-width spaces inside it is replaced whole, the zero-width spaces
  with it.

PII kinds (`PII_KINDS`), each replaced by `[KIND]`:

- credit_card: 13-19 digits, optionally separated by single spaces or dashes anywhere, or grouped 4-4-4-4(-3),
  4-6-5 or 4-6-4 by a consistent "." or "/"; only Luhn-valid ones. A Luhn-invalid number is left alone (and
  never half-redacted as a phone number); up to `CARD_RETRIES` leading groups of it are dropped to look for a
  valid card behind junk digits ("7 4111 1111 1111 1111").
- iban: two capital letters, two check digits and up to 30 capitals or digits, written together or in groups
  of four separated by single spaces, 15-34 characters in all; only ones passing the ISO 7064 mod-97 check.
- ssn: a US social security number NNN-NN-NNNN or NNN NN NNNN (area not 000, 666 or 9xx, group not 00,
  serial not 0000). Unseparated nine-digit numbers are not taken: too many of them are something else.
- email: a run of local-part characters, "@", dot-separated domain labels and a top-level domain of letters.
- phone: an optional +country code and area code followed by NNN(N)-NNNN with spaces, dots or dashes; an
  E.164 number "+14155552671"; a North American number without separators "4155552671", "(415)5552671",
  "14155552671". Never part of a longer digit run.

Linear time. Python's `re` backtracks, so a pattern with nested or overlapping quantifiers can take quadratic
or exponential time on crafted text (the old email pattern took 0.2 s on 16 KB of "a"). Every pattern here is
either bounded in length (a failed attempt costs a bounded number of steps, so a scan is O(n)), or made of
possessive quantifiers (`++`, which never give back) that may only start at the beginning of a run (a
lookbehind), so each character is read a bounded number of times. Luhn and mod-97 run once per candidate.

Deny-lists. `DenyList(patterns, keywords)`: keywords are matched as whole words (a keyword's end only needs a
word boundary where that end is a word character; a space in a keyword matches any run of whitespace) in
`normalise(text)`. Patterns are the operator's own regular expressions, run as given on both the normalised
and the raw text: their cost on hostile input is the operator's responsibility (avoid nested quantifiers such
as `(a+)+` and unbounded `.*` followed by a rare literal). Not undone: look-alike letters of other scripts
(Cyrillic "о" for Latin "o"), words spelt out or split by spaces, and encodings (Base64, leetspeak).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from itertools import accumulate

from alignkit.errors import AlignkitError

PII_KINDS = ("email", "phone", "credit_card", "ssn", "iban")

# dash-like characters that are not "-" (NFKD leaves them): hyphen, non-breaking hyphen, figure dash, en and
# em dashes, horizontal bar, minus sign, hyphen bullet, small em dash, small and fullwidth hyphen-minus
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63\uff0d")
_INVISIBLE = ("Cf", "Mn")  # format characters (zero-width, soft hyphen, bidi) and combining marks
_MAX_CACHED_CHARS = 1 << 16  # the per-character tables stay bounded whatever text they see


def _fold_char(ch: str) -> str:
    """One character of NFKD output as both normal forms want it: invisible ones dropped, digits ASCII, dashes "-"."""
    category = unicodedata.category(ch)
    if category in _INVISIBLE:
        return ""
    if category == "Nd":
        return str(unicodedata.decimal(ch))
    return "-" if ch in _DASHES else ch


class _CharTable(dict):
    """ord -> replacement string for `str.translate`, computed on first use and cached (up to a bound).

    A dict, because str.translate looks hits up in C: a 1 MB text costs one C pass, not a Python call per
    character."""

    def __init__(self, fold):
        super().__init__((i, chr(i)) for i in range(128))  # ASCII maps to itself: no call for the common case
        self.fold = fold

    def __missing__(self, key: int) -> str:
        value = self.fold(chr(key))
        if len(self) < _MAX_CACHED_CHARS:
            self[key] = value
        return value


_LIGHT = _CharTable(_fold_char)
_DETECTION = _CharTable(lambda ch: unicodedata.normalize("NFKD", ch).translate(_LIGHT))


def normalise(text: str) -> str:
    """The form deny-lists match against: NFKD (fullwidth and other compatibility letters and digits become
    plain ones, accents come apart from their letters), casefolded, format characters (zero-width spaces and
    joiners, soft hyphens, bidi marks) and combining marks removed (so "bómb" is "bomb"), dash-like characters
    made "-", decimal digits of any script made ASCII, then recomposed (NFC)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text).casefold().translate(_LIGHT))


# ----------------------------------------------------------------------------------------------------
# the detection copy and the way back to the original text


class _DetectionCopy:
    """`text` with each character replaced by its NFKD form, invisible characters dropped, digits made ASCII and
    dashes "-" (not casefolded), and a map from positions in the copy back to positions in `text`.

    Only the "irregular" characters, those whose replacement is not exactly one character, shift positions;
    the map keeps one entry per occurrence of them, so ordinary text (even all non-ASCII) costs nothing."""

    def __init__(self, text: str):
        self.text = text
        self.copy = text if text.isascii() else text.translate(_DETECTION)
        self.positions: list[int] = []  # where each irregular character sits in `text`
        if not text.isascii():
            irregular = [c for c in set(text) if len(_DETECTION[ord(c)]) != 1]
            if irregular:
                pattern = re.compile("[" + "".join(map(re.escape, irregular)) + "]")
                self.positions = [m.start() for m in pattern.finditer(text)]
        self.lengths = [len(_DETECTION[ord(text[i])]) for i in self.positions]
        self.shift_after = list(accumulate(n - 1 for n in self.lengths))  # copy index - text index after each
        self.copy_starts = [p + s - n + 1 for p, s, n in zip(self.positions, self.shift_after, self.lengths)]

    def original(self, index: int) -> int:
        """The position in `text` of the character that produced the copy's character at `index`."""
        k = bisect_right(self.copy_starts, index) - 1
        if k < 0:
            return index
        if index < self.copy_starts[k] + self.lengths[k]:
            return self.positions[k]  # inside one character's expansion ("½" -> "1⁄2")
        return index - self.shift_after[k]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The characters of `text` behind copy[start:end], dropped invisible characters inside it included."""
        return self.original(start), self.original(end - 1) + 1


# ----------------------------------------------------------------------------------------------------
# PII patterns and checks

# cards: 13-19 digits with optional single spaces/dashes anywhere, or groups with one consistent "." or "/"
CARD = re.compile(r"(?<!\d)(?:(?:\d[ -]?){12,18}\d"
                  r"|\d{4}([./])(?:\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{6}\1\d{4,5}))(?!\d)", re.ASCII)
CARD_RETRIES = 3  # leading groups dropped from a Luhn-invalid candidate to look for a card behind them
_CARD_SEPARATOR = re.compile(r"[ ./-]")
_NOT_DIGITS = str.maketrans("", "", " ./-")

IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])",
                  re.ASCII)
IBAN_RETRIES = 2  # trailing space-separated groups dropped from a candidate that fails mod-97
_IBAN_LETTERS = {ord(c): str(i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", start=10)}

SSN = re.compile(r"(?<![\w.-])(?<!\d )(?!000|666|9)\d{3}([ -])(?!00)\d{2}\1(?!0000)\d{4}(?![\w]|[ .-]\d)",
                 re.ASCII)

# possessive runs that may only start at the beginning of a run of local-part characters: linear (see above)
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@(?:[A-Za-z0-9-]++\.)+[A-Za-z]{2,}+(?![A-Za-z0-9-])",
                   re.ASCII)

# never inside a word or a longer number, so a Luhn-invalid card is not half-redacted as a phone number
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:"
    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])?\d{3,4}[ .-]\d{4}"  # (555) 123-4567, +44 20 7946 0958
    r"|\+[1-9]\d{6,14}"  # E.164: +14155552671
    r"|(?:1[ .-]?)?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]?[2-9]\d{2}[ .-]?\d{4}"  # 4155552671, 1-415-555-2671
    r")(?![ .-]?\d)", re.ASCII)

_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")  # digit -> digit sum of twice it


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits: doubling every second digit from the right, the digit sum
    is a multiple of 10. (Bytes arithmetic in C: it runs once per card candidate, adversarial input included.)"""
    if not (digits.isascii() and digits.isdigit()):
        return False
    reversed_digits = digits.encode("ascii")[::-1]
    kept, doubled = reversed_digits[0::2], reversed_digits[1::2].translate(_DOUBLED)
    return (sum(kept) + sum(doubled) - ord("0") * len(digits)) % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: 15-34 characters; moving the first four to the end and letters to 10..35, mod 97 is 1."""
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34 or not compact.isascii() or not compact.isalnum():
        return False
    return int((compact[4:] + compact[:4]).upper().translate(_IBAN_LETTERS)) % 97 == 1


def _find_cards(copy: str) -> list[tuple[int, int]]:
    spans, pos, retries = [], 0, 0
    while (match := CARD.search(copy, pos)) is not None:
        if luhn_valid(match.group().translate(_NOT_DIGITS)):
            spans.append(match.span())
            pos, retries = match.end(), 0
            continue
        separator = _CARD_SEPARATOR.search(copy, match.start(), match.end())
        if separator is not None and retries < CARD_RETRIES:
            pos, retries = separator.end(), retries + 1  # try again from the next group
        else:
            pos, retries = match.end(), 0
    return spans


def _find_ibans(copy: str) -> list[tuple[int, int]]:
    spans = []
    for match in IBAN.finditer(copy):
        candidate = match.group()
        for _ in range(IBAN_RETRIES + 1):
            if iban_valid(candidate):
                spans.append((match.start(), match.start() + len(candidate)))
                break
            if " " not in candidate:
                break
            candidate = candidate.rsplit(" ", 1)[0]  # a word in capitals may have joined as a last group
    return spans


def _finder(pattern: re.Pattern):
    return lambda copy: [m.span() for m in pattern.finditer(copy)]


# in this order; a later kind never matches inside an earlier one's span (it is masked out)
_DETECTORS = (("iban", _find_ibans), ("credit_card", _find_cards), ("ssn", _finder(SSN)),
              ("email", _finder(EMAIL)), ("phone", _finder(PHONE)))
_MASK = "\x00"  # not a digit, word character or separator: masked spans are invisible to the later patterns


def _mask(copy: str, spans: list[tuple[int, int]]) -> str:
    pieces, last = [], 0
    for start, end in spans:
        pieces += [copy[last:start], _MASK * (end - start)]
        last = end
    pieces.append(copy[last:])
    return "".join(pieces)


def redact_pii(text: str, kinds=PII_KINDS) -> tuple[str, list[str]]:
    """`text` with PII of the given kinds replaced by [EMAIL], [PHONE], [CREDIT_CARD], [SSN], [IBAN]; and the
    kind of each replacement, in the order they appear in the text.

    PII is looked for in the detection copy (NFKD, invisible characters dropped, digits ASCII, dashes "-") and
    replaced in `text` as given, so "４１１１\u200b1111…" is caught and text without PII is returned unchanged."""
    detection = _DetectionCopy(text)
    copy, found = detection.copy, []
    for kind, find in _DETECTORS:
        if kind in kinds:
            spans = find(copy)
            if spans:
                found += [(start, end, kind) for start, end in spans]
                copy = _mask(copy, spans)
    if not found:
        return text, []
    pieces, last, kinds_found = [], 0, []
    for start, end, kind in sorted(found):
        start, end = detection.original_span(start, end)
        start = max(start, last)  # two spans ending and starting inside one expanded character
        if end <= start:
            continue
        pieces += [text[last:start], f"[{kind.upper()}]"]
        kinds_found.append(kind)
        last = end
    pieces.append(text[last:])
    return "".join(pieces), kinds_found


# ----------------------------------------------------------------------------------------------------
# deny-lists


def _keyword_pattern(keyword: str) -> re.Pattern:
    """A whole-word pattern for a keyword in normalised text: a word boundary at each end that is a word
    character ("c++" still matches before a space), any run of whitespace where the keyword has a space."""
    words = normalise(keyword).split()
    if not words:
        raise AlignkitError(f"deny_keywords: {keyword!r} is empty after normalisation (it would match everything)")
    body = r"\s+".join(map(re.escape, words))
    before = r"(?<!\w)" if re.match(r"\w", words[0][0]) else ""
    after = r"(?!\w)" if re.match(r"\w", words[-1][-1]) else ""
    return re.compile(before + body + after)


class DenyList:
    """Whole-word keywords matched against `normalise(text)`; the operator's regular expressions matched
    case-insensitively against `normalise(text)` and against the text as given (so a pattern written for
    the raw text still works). Patterns run as given: their worst-case cost is the operator's to bound."""

    def __init__(self, patterns: list[str] = (), keywords: list[str] = ()):
        self.patterns = []
        for pattern in patterns:
            try:
                self.patterns.append(re.compile(pattern, re.I))
            except re.error as error:
                raise AlignkitError(f"deny_patterns: {pattern!r} is not a regular expression ({error})") from None
        self.keywords = [_keyword_pattern(k) for k in keywords]

    def __bool__(self) -> bool:
        return bool(self.patterns or self.keywords)

    def search(self, text: str) -> bool:
        folded = normalise(text)
        return (any(k.search(folded) for k in self.keywords)
                or any(p.search(folded) or p.search(text) for p in self.patterns))
