"""Content filters (safety/filters.py): PII redaction of every kind and form, obfuscation that must not defeat
it, linear time on adversarial 1 MB inputs, normalisation and deny-lists; property-based with hypothesis."""

from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.errors import AlignkitError
from alignkit.safety.filters import PII_KINDS, DenyList, iban_valid, luhn_valid, normalise, redact_pii

ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"  # zero-width space/non-joiner/joiner, word joiner, BOM, soft hyphen
DASHES = "\u2010\u2011\u2013\u2014\u2212\ufe63\uff0d"


def fullwidth(text: str) -> str:
    """ASCII letters, digits and punctuation as their fullwidth forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# ----------------------------------------------------------------------------------------------------
# each kind and form


@pytest.mark.parametrize("text, expected", [
    ("pay 4111.1111.1111.1111 now", "pay [CREDIT_CARD] now"),
    ("pay 4111/1111/1111/1111 now", "pay [CREDIT_CARD] now"),
    ("amex 3782-822463-10005.", "amex [CREDIT_CARD]."),
    ("amex 3782.822463.10005.", "amex [CREDIT_CARD]."),
    ("junk before: 7 4111 1111 1111 1111", "junk before: 7 [CREDIT_CARD]"),
    ("call +14155552671, 4155552671 or (415)5552671.", "call [PHONE], [PHONE] or [PHONE]."),
    ("call 1-415-555-2671 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
    ("SSN 123-45-6789 or 123 45 6789.", "SSN [SSN] or [SSN]."),
    ("IBAN GB82 WEST 1234 5698 7654 32, DE89370400440532013000.", "IBAN [IBAN], [IBAN]."),
    ("IBAN GB82 WEST 1234 5698 7654 32 THEN more", "IBAN [IBAN] THEN more"),
    ("mail josé@example.com or a.b+c@mail.co.uk.", "mail [EMAIL] or [EMAIL]."),
])
def test_each_kind_and_form_is_redacted(text, expected):
    assert redact_pii(text)[0] == expected


@pytest.mark.parametrize("text", [
    "not a card 4111.1111.1111.1112 or 4111/1111/1111/1112",  # Luhn-invalid: left whole, not a phone either
    "pi is 3.14159265358979 and e 2.718281828459045",  # decimals are not dotted cards
    "SSN-shaped but invalid: 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567, 123-45-0000, 123-45 6789",
    "GB82 WEST 1234 5698 7654 33 fails mod-97",
    "unix time 1700000000, order 1234567890123456789012, meeting 2024-01-15, v1.2.3.4",
    "a@b, x@y.z, trailing@ and @alone",
])
def test_lookalikes_of_pii_are_left_alone(text):
    assert redact_pii(text) == (text, [])


def test_checks_by_hand():
    """GB82 WEST 1234 5698 7654 32 -> WEST12345698765432GB82 -> W=32 E=14 S=28 T=29, G=16 B=11:
    3214282912345698765432161182 mod 97 = 1. Changing the last digit breaks it."""
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")
    assert int("3214282912345698765432161182") % 97 == 1
    assert not iban_valid("GB82 WEST") and not luhn_valid("41x1") and not luhn_valid("")  # too short; not digits


def test_kinds_filter_and_order_of_kinds_found():
    text = "card 4111111111111111, ssn 123-45-6789, bo@x.io"
    assert redact_pii(text, kinds=["ssn"]) == ("card 4111111111111111, ssn [SSN], bo@x.io", ["ssn"])
    assert redact_pii(text)[1] == ["credit_card", "ssn", "email"]  # in the order they appear
    assert set(PII_KINDS) == {"email", "phone", "credit_card", "ssn", "iban"}


# ----------------------------------------------------------------------------------------------------
# obfuscation


@pytest.mark.parametrize("text, expected", [
    ("card 4111\u200b1111\u200b1111\u200b1111!", "card [CREDIT_CARD]!"),  # zero-width spaces go with it
    ("card " + fullwidth("4111 1111 1111 1111"), "card [CREDIT_CARD]"),
    ("card \u0664\u0661\u0661\u0661" * 1 + "111111111111", "card [CREDIT_CARD]"),  # Arabic-Indic digits
    ("mail " + fullwidth("bob@ex.com") + " ok", "mail [EMAIL] ok"),
    ("mail b\u00adob@e\u200dx.com", "mail [EMAIL]"),
    ("call 415\u2010555\u20102671, 415\u2013555\u20132671 or 415\u2212555\u22122671",
     "call [PHONE], [PHONE] or [PHONE]"),
    ("ssn 1\u03012\u03013-4\u03325-6789", "ssn [SSN]"),  # combining marks inside the number
])
def test_obfuscation_does_not_defeat_redaction(text, expected):
    assert redact_pii(text)[0] == expected


def test_text_without_pii_comes_back_unchanged_character_for_character():
    text = "E = mc², ﬁne ＡＢＣ, naïve café 2024\u201001\u201015, zero\u200bwidth, \u0663 apples"
    assert redact_pii(text) == (text, [])


# ----------------------------------------------------------------------------------------------------
# linear time: a generous bound that only a super-linear blow-up breaks (measured: under 0.3 s each)


def repeat(unit: str, size: int = 1 << 20) -> str:
    return (unit * (size // len(unit) + 1))[:size]


@pytest.mark.parametrize("unit", ["1", "1 ", "1.", "1111 ", ".", "@", "a", "a@", "a.", "a@a.", "a.b-c@d-e.f",
                                  ".-", "1-2 3.4/5", "+1", "(415)", "GB82 WEST ", "A1", "4\u200b", "\uff14",
                                  "\u0663", "1\u2010", "123-45-"])
def test_redaction_is_linear_on_adversarial_megabytes(unit):
    text = repeat(unit)
    start = time.perf_counter()
    redact_pii(text)
    assert time.perf_counter() - start < 5.0


# ----------------------------------------------------------------------------------------------------
# normalisation and deny-lists


def test_normalise_undoes_lookalikes():
    assert normalise("B\u200bO\u00adMB ｂｏｍｂ b\u0332omb BÓMB") == "bomb bomb bomb bomb"
    assert normalise("Straße \u0130 \u2460 \u0663 a\u2010b a\u2212b") == "strasse i 1 3 a-b a-b"


def test_deny_list_keywords_are_whole_words_with_any_ends_and_spaces():
    deny = DenyList(keywords=["bomb", "c++", "how to make", "@admin"])
    assert deny.search("a BO\u200bMB!") and not deny.search("a bombastic speech")
    assert deny.search("I like C++.") and deny.search("HOW  TO\nMAKE it") and deny.search("ping x@admin")
    assert not deny.search("how to bake")
    patterns = DenyList(patterns=[r"api[_-]?key\s*=\s*\w+"])
    assert patterns and patterns.search("API\u200b_KEY = abc") and not DenyList()
    with pytest.raises(AlignkitError, match="empty after normalisation"):
        DenyList(keywords=["\u200b "])
    with pytest.raises(AlignkitError, match="not a regular expression"):
        DenyList(patterns=["(unclosed"])


def obfuscate_char(draw, c: str, *, change_case: bool) -> str:
    form = draw(st.sampled_from(["plain", "fullwidth", "invisible", "mark"] + ["case"] * change_case))
    if form == "fullwidth":
        c = fullwidth(c)
    elif form == "invisible":
        c = c + draw(st.sampled_from(ZERO_WIDTH))
    elif form == "mark":
        c = c + draw(st.sampled_from("\u0301\u0308\u0332"))  # acute, diaeresis, low line
    elif form == "case":
        c = c.upper()
    if c == "-":
        c = draw(st.sampled_from("-" + DASHES))
    return c


@st.composite
def obfuscated_keywords(draw):
    words = draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8), min_size=1, max_size=3))
    keyword = " ".join(words)
    return keyword, "".join(obfuscate_char(draw, c, change_case=True) if c != " " else c for c in keyword)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obfuscated_keywords(), st.text(), st.text())
def test_deny_list_finds_an_obfuscated_keyword_anywhere(keyword_and_hidden, before, after):
    keyword, hidden = keyword_and_hidden
    assert DenyList(keywords=[keyword]).search(f"{before} {hidden} {after}")


# ----------------------------------------------------------------------------------------------------
# property: generated PII in benign text, obfuscated, never survives; benign text is never touched


def luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it Luhn-valid."""
    return prefix + next(d for d in "0123456789" if luhn_valid(prefix + d))


@st.composite
def cards(draw):
    digits = luhn_complete("4" + draw(st.text("0123456789", min_size=14, max_size=14)))
    separator = draw(st.sampled_from(["", " ", "-", ".", "/"]))
    return separator.join(digits[i:i + 4] for i in range(0, 16, 4)), "credit_card"


@st.composite
def ssns(draw):
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    separator = draw(st.sampled_from(["-", " "]))
    return f"{area:03d}{separator}{group:02d}{separator}{serial:04d}", "ssn"


@st.composite
def ibans(draw):
    country = draw(st.sampled_from(["GB", "DE", "FR", "NL", "ES", "IT"]))
    bban = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=11, max_size=30))
    check = 98 - int((bban + country + "00").translate({ord(c): str(ord(c) - 55) for c in country + bban
                                                        if c.isalpha()})) % 97
    compact = f"{country}{check:02d}{bban}"
    spaced = draw(st.booleans())
    return (" ".join(compact[i:i + 4] for i in range(0, len(compact), 4)) if spaced else compact), "iban"


@st.composite
def emails(draw):
    local = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=16))
    labels = draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
                           min_size=1, max_size=3))
    tld = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6))
    return f"{local}@{'.'.join(labels)}.{tld}", "email"


@st.composite
def phones(draw):
    area, exchange = draw(st.integers(200, 999)), draw(st.integers(200, 999))
    line = f"{draw(st.integers(0, 9999)):04d}"
    form = draw(st.sampled_from(["{a}-{e}-{l}", "({a}) {e}-{l}", "{a}.{e}.{l}", "{a}{e}{l}", "({a}){e}{l}",
                                 "+1{a}{e}{l}", "+1 {a} {e} {l}", "1-{a}-{e}-{l}"]))
    return form.format(a=area, e=exchange, l=line), "phone"


def no_digit_or_at(c: str) -> bool:
    """Benign characters: none whose compatibility form holds a digit or an "@" (so no PII can be built)."""
    return not any(ch.isdigit() or ch in "@" for ch in unicodedata.normalize("NFKD", c))


BENIGN = st.text(st.characters(blacklist_categories=("Cs",)).filter(no_digit_or_at), max_size=40)
LOWER_BENIGN = st.text(st.sampled_from("abcdefghij klmnop,;:!?'\"éßñ\u200b\u2014"), max_size=30)


@st.composite
def obfuscated_pii(draw):
    pii, kind = draw(st.one_of(cards(), ssns(), ibans(), emails(), phones()))
    return pii, kind, "".join(obfuscate_char(draw, c, change_case=False) for c in pii)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obfuscated_pii(), LOWER_BENIGN, LOWER_BENIGN)
def test_generated_pii_never_survives_redaction(pii_kind_hidden, before, after):
    pii, kind, hidden = pii_kind_hidden
    redacted, found = redact_pii(f"{before} {hidden} {after}")
    assert kind in found
    folded = normalise(redacted)
    assert not any(c.isdigit() for c in folded)  # the benign text has none: every digit of the PII is gone
    assert "@" not in folded
    assert redacted.startswith(before + " ") and redacted.endswith(" " + after)


@settings(max_examples=300, deadline=None)
@given(BENIGN)
def test_benign_text_is_returned_unchanged(text):
    assert redact_pii(text) == (text, [])
