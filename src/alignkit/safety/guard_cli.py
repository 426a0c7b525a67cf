"""`alignkit guard train | classify`: the hazard guard classifier from the shell (docs/guard.md).

Guard train's options are GuardConfig's fields, built here rather than by `options.add_arguments` because two
of them take other shapes: --data takes several files, --output_dir is required."""

from __future__ import annotations

import argparse
import json
import sys

from alignkit.config import base_type, flat_fields
from alignkit.errors import AlignkitError, DataError
from alignkit.options import config_from_args, option

TEXT_FIELDS = ("text", "prompt", "response", "completion")


def cmd_train(args) -> int:
    from alignkit.safety.guard import GuardConfig, format_eval, train_guard

    config = config_from_args(GuardConfig, args)
    guard, report = train_guard(config)
    print(f"trained on {guard.info['train_rows']} rows; temperature {guard.temperature:.3f}; "
          f"held-out built-in test split ({report['rows']} rows):")
    print(format_eval(report, guard.taxonomy))
    print(f"wrote the guard and eval.json to {config.output_dir}", file=sys.stderr)
    return 0


def _row_text(row, role: str | None, where: str) -> tuple[str, str]:
    """(text, role) of an input row: `text`, or a prompt (string or conversation), or a response/completion."""
    from alignkit.safety.guard_data import ROLES, prompt_text

    if not isinstance(row, dict):
        raise DataError([f"{where}: row: expected an object with a text, prompt or response field"])
    key = next((k for k in TEXT_FIELDS if k in row), None)
    if key is None:
        raise DataError([f"{where}: text: missing (give text, prompt, response or completion)"])
    value = row[key]
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        value = prompt_text(value) if key == "prompt" else "\n".join(m["content"] for m in value)
    if not isinstance(value, str) or not value.strip():
        raise DataError([f"{where}: {key}: expected a non-empty string or a conversation"])
    row_role = role or row.get("role") or ("prompt" if key in ("text", "prompt") else "response")
    if row_role not in ROLES:
        raise DataError([f"{where}: role: expected prompt or response, got {row_role!r}"])
    return value, row_role


def _verdict_fields(verdict, taxonomy) -> dict:
    from alignkit.safety.guard import format_llama_guard

    return {"safe": verdict.safe, "categories": verdict.categories,
            "codes": [taxonomy.code(c) for c in verdict.categories],
            "scores": {k: round(v, 6) for k, v in verdict.scores.items()},
            "llama_guard": format_llama_guard(verdict, taxonomy)}


def cmd_classify(args) -> int:
    from alignkit.safety.guard import GuardClassifier, default_guard, format_llama_guard

    if (args.input is None) == (args.text is None):
        raise AlignkitError("guard classify: give exactly one of --input FILE or --text TEXT")
    if args.input is not None:  # read and check the whole file before loading anything
        from alignkit.data.io import Problem, scan

        rows, problems = [], []
        for line, row in scan(args.input):
            if isinstance(row, Problem):
                problems.append(row.format(args.input))
                continue
            try:
                rows.append((row, *_row_text(row, args.role, f"{args.input}:{line}")))
            except DataError as e:
                problems += e.problems
        if problems:
            raise DataError(problems)
        if not rows:
            raise AlignkitError(f"{args.input}: file: no rows")
    guard = default_guard() if args.guard == "default" else GuardClassifier.load(args.guard)

    if args.text is not None:
        verdict = guard.classify([args.text], args.role or "prompt")[0]
        print(format_llama_guard(verdict, guard.taxonomy))
        shown = sorted(verdict.scores.items(), key=lambda kv: -kv[1])[:4]
        print("scores: " + ", ".join(f"{k} {v:.3f}" for k, v in shown), file=sys.stderr)
        return 0

    out = []
    for role in ("prompt", "response"):
        picked = [i for i, (_, _, r) in enumerate(rows) if r == role]
        verdicts = guard.classify([rows[i][1] for i in picked], role)
        out += [(i, {**rows[i][0], "role": role, **_verdict_fields(v, guard.taxonomy)})
                for i, v in zip(picked, verdicts)]
    records = [record for _, record in sorted(out, key=lambda pair: pair[0])]
    if args.output:
        from alignkit.data.io import write_jsonl

        write_jsonl(args.output, records)
        unsafe = sum(not r["safe"] for r in records)
        print(f"wrote {len(records)} verdicts ({unsafe} unsafe) to {args.output}", file=sys.stderr)
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    return 0


def add_commands(sub) -> None:
    """Add `train` and `classify` to the `alignkit guard` group (pass the group's sub-commands object)."""
    from alignkit.safety.guard import GuardConfig
    from alignkit.safety.guard_data import ROLES

    p = sub.add_parser("train", help="train a guard on the built-in data (plus --data files) and evaluate it",
                       description="Train the guard head on the built-in train split and any extra JSONL files "
                       "of {\"text\", \"role\", \"categories\"} rows, calibrate it, save it to --output_dir and "
                       "print per-category precision/recall/F1 on the built-in held-out test split (also written "
                       "to OUTPUT_DIR/eval.json).")
    for name, (_, kind, default, doc) in flat_fields(GuardConfig).items():
        shown = "" if default in (None, "", []) else f" (default: {default})"
        kwargs = dict(default=argparse.SUPPRESS, help=(doc + shown).replace("%", "%%"))
        if name == "data":
            kwargs.update(nargs="+", action="extend", metavar="FILE")
        elif name == "output_dir":
            kwargs.update(required=True, default=None, metavar="DIR")
        else:
            kwargs.update(metavar={int: "N", float: "X"}.get(base_type(kind)[0], "VALUE"))
        option(p, f"--{name}", **kwargs)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="label prompts or responses safe / unsafe with hazard categories",
                       description="Classify --text (prints Llama-Guard-style `safe` or `unsafe` and S-codes) or "
                       "every row of an --input JSONL file (rows with text, prompt, response or completion; "
                       "writes the rows back with safe, categories, codes, scores and llama_guard fields).")
    option(p, "--guard", default="default", help="a directory written by `guard train`, or default (the built-in "
           "guard, trained once and cached)")
    option(p, "--input", help="JSONL file of rows to classify")
    option(p, "--text", help="one text to classify")
    option(p, "--role", choices=ROLES, help="classify as prompt or response (default: the row's role field, else "
           "from its field name; prompt for --text)")
    option(p, "--output", "-o", help="write the JSONL here (default: stdout)")
    p.set_defaults(func=cmd_classify)
