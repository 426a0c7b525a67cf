"""Time PII redaction on 1 MB adversarial inputs (issue 19): each kind alone and all kinds together.

The inputs are long runs of what the patterns look for (digits, separators, '@', dots, IBAN-like groups,
zero-width and fullwidth digits, combining marks), where a backtracking pattern would go quadratic. CPU,
one process; prints a table and writes the raw seconds to benchmarks/results/pii_redaction.json.

    python benchmarks/pii_redaction.py [--size 1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from alignkit.safety.filters import PII_KINDS, redact_pii

PATTERNS = {
    "digits": "1", "digit-space": "1 ", "digit-dot": "1.", "4-groups": "1111 ", "dots": ".", "at": "@", "a": "a",
    "a@": "a@", "a.": "a.", "a@a.": "a@a.", "email-ish": "a.b-c@d-e.f", "dot-dash": ".-", "mixed-sep": "1-2 3.4/5",
    "plus-digits": "+1", "paren": "(415)", "iban-ish": "GB82 WEST ", "upper-digit": "A1", "zw-digits": "4\u200b",
    "fullwidth": "\uff14\uff11", "arabic-digits": "\u0663", "dash-u2010": "1\u2010", "ssn-ish": "123-45-",
    "phone-ish": "415 555 ", "mark-digits": "4\u0301", "accented@": "\u00e9@", "1111.": "1111.", "a-": "a-",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="characters per input (default 1 MiB)")
    size = parser.parse_args().size
    kinds = list(PII_KINDS)
    print(f"{'input':<14}" + "".join(f"{k:>12}" for k in [*kinds, "all"]))
    seconds = {}
    for name, unit in PATTERNS.items():
        text = (unit * (size // len(unit) + 1))[:size]
        row = {}
        for label, chosen in [*((k, [k]) for k in kinds), ("all", kinds)]:
            start = time.perf_counter()
            redact_pii(text, chosen)
            row[label] = round(time.perf_counter() - start, 4)
        seconds[name] = row
        print(f"{name:<14}" + "".join(f"{row[k]:>12.3f}" for k in [*kinds, "all"]), flush=True)
    worst = max(max(row.values()) for row in seconds.values())
    print(f"worst: {worst:.3f} s for {size} characters")
    out = Path(__file__).parent / "results" / "pii_redaction.json"
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "cpus": os.cpu_count(), "device": "cpu", "characters": size, "worst_s": worst,
                               "seconds": seconds}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
