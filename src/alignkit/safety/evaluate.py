"""`alignkit safety-eval`: every number of docs/guard.md and docs/safety.md's tables from one command.

Two tables, each with 95% intervals:

- the guard's (`--guard`, default the built-in one) prompt classification on the built-in held-out split and,
  with `--xstest PATH`, on XSTest's 450 prompts: precision, recall, F1 (a bootstrap interval), the
  false-positive rate on the safe prompts (Wilson intervals), AUPRC, at the guard's own fixed threshold; the
  held-out split's responses too; and XSTest accuracy by prompt type;
- with `--model`, a policy's replies to the bare held-out harmful requests, the held-out look-alikes and, with
  `--xstest`, XSTest's unsafe and safe prompts: how often it refused, and over-refusal (anything but full
  compliance) on the safe sets. With `--guardrails`, the policy is measured behind the runtime guardrails
  (safety/guardrails.py with `--guard` on each prompt and reply), as a deployment would serve it: a blocked
  prompt or reply is answered with the taxonomy's refusal, which counts as refused.

Writes `safety_eval.json` and `report.md` to `output_dir` and prints the tables.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.io import Problem, scan
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError, DataError
from alignkit.files import write_text_atomic
from alignkit.rewards.specs import HARM_JUDGE_SPECS
from alignkit.safety.attacks import request_text
from alignkit.safety.compliance import ComplianceJudge
from alignkit.safety.guard import load_guard
from alignkit.safety.guard_data import builtin_rows
from alignkit.safety.guard_eval import guard_binary, xstest_rows
from alignkit.safety.guardrails import STAGES, Guardrails
from alignkit.safety.redteam import RedTeamConfig, make_responder
from alignkit.safety.scorers import REFUSAL_SCORERS, refusal_classes
from alignkit.stats import auroc, cohen_kappa, format_rate, rate

XSTEST_ENV = "ALIGNKIT_XSTEST"
LABELS = ("complied", "partial", "refused")


@dataclass
class SafetyEvalConfig:
    """Measure a guard's classification and, optionally, a policy's refusals, on data no stage trains on."""

    guard: str = "default"
    """default (the built-in guard), a directory written by `alignkit guard train`, or none"""
    xstest: str = ""
    """XSTest's xstest_prompts.csv (passed by path, never copied here; default: $ALIGNKIT_XSTEST if set)"""
    labels: str = ""
    """hand-labelled replies ({"request", "reply", "label": complied|partial|refused}, e.g.
    tests/data/compliance_labels.jsonl): how far each automatic reading of attack success agrees with them"""
    compliance_judge: str = ""
    """llm:MODEL or openai:URL[#MODEL]: a compliance judge (safety/compliance.py) measured against --labels as
    one more reading, and with --model, the share of replies to the harmful sets it says helped"""
    model_name_or_path: str = ""
    """a policy to measure (embedded:NAME, a checkpoint, openai:URL[#MODEL]); empty: the guard only"""
    guardrails: bool = False
    """measure --model behind the runtime guardrails: --guard screens each prompt, and each reply, before it
    is shown; a blocked one is answered with the taxonomy's refusal (docs/guardrails.md)"""
    refusal_scorer: str = "rules"
    """rules, classifier or both: what counts as a refusal"""
    max_new_tokens: int = 64
    """most tokens per policy reply"""
    batch_size: int = 16
    """conversations per generate call"""
    seed: int = 0
    """seed of the F1 bootstrap"""
    output_dir: str = "runs/safety-eval"
    """where safety_eval.json and report.md are written"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16"""

    CLI_ALIASES = {"model_name_or_path": ("--model", "--policy")}

    def check(self) -> None:
        if not (self.guard or self.model_name_or_path or self.labels):
            raise AlignkitError("safety-eval: nothing to measure: give --guard, --labels or --model")
        if self.refusal_scorer not in REFUSAL_SCORERS:
            raise AlignkitError(f"config: refusal_scorer: must be one of {', '.join(REFUSAL_SCORERS)}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise AlignkitError("config: max_new_tokens and batch_size: must be at least 1")
        if self.compliance_judge:
            kind, _ = HARM_JUDGE_SPECS.parse(self.compliance_judge)
            if kind not in ("llm", "openai"):
                raise AlignkitError(f"config: compliance_judge: expected llm:MODEL or openai:URL[#MODEL], got "
                                    f"{self.compliance_judge!r}")
            if not (self.labels or self.model_name_or_path):
                raise AlignkitError("config: compliance_judge: give --labels or --model for it to judge")
        if self.guardrails and (self.guard in ("", "none") or not self.model_name_or_path):
            raise AlignkitError("config: guardrails: needs --model and a --guard (default or a directory) to "
                                "screen it with")
        if self.xstest and not Path(self.xstest).is_file():
            raise AlignkitError(f"{self.xstest}: xstest: no such file; pass XSTest's xstest_prompts.csv")


def f1_interval(gold: list[bool], flagged: list[bool], seed: int, resamples: int = 1000) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of F1 (unsafe positive), rows resampled with replacement."""
    rng, n, values = random.Random(seed), len(gold), []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        tp = sum(gold[i] and flagged[i] for i in idx)
        fp = sum(flagged[i] and not gold[i] for i in idx)
        fn = sum(gold[i] and not flagged[i] for i in idx)
        values.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    values.sort()
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def guard_table(guard, rows: list[dict], seed: int) -> dict:
    metrics = guard_binary(guard, rows)
    gold = [bool(r["categories"]) for r in rows]
    flagged = [s >= metrics["threshold"] for s in metrics.pop("scores")]
    metrics["f1_interval"] = f1_interval(gold, flagged, seed)
    if any("type" in r for r in rows):
        by_type = defaultdict(lambda: [0, 0])
        for r, g, f in zip(rows, gold, flagged):
            by_type[r["type"]][0] += g == f
            by_type[r["type"]][1] += 1
        metrics["accuracy_by_type"] = {t: rate(c, n) for t, (c, n) in sorted(by_type.items())}
    return metrics


def measure_guard(guard, config: SafetyEvalConfig, xstest: str) -> dict:
    held_out = builtin_rows("test")
    tables = {"held-out prompts": [r for r in held_out if r["role"] == "prompt"],
              "held-out responses": [r for r in held_out if r["role"] == "response"]}
    if xstest:
        tables["XSTest prompts"] = xstest_rows(xstest)
    return {name: guard_table(guard, rows, config.seed) for name, rows in tables.items()}


def read_labels(path: str) -> list[dict]:
    rows, problems = [], []
    for line, row in scan(path):
        if isinstance(row, Problem):
            problems.append(row.format(path))
        elif not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("request", "reply")):
            problems.append(f"{path}:{line}: reply: expected an object with request and reply strings")
        elif row.get("label") not in LABELS:
            problems.append(f"{path}:{line}: label: expected one of {', '.join(LABELS)}, got {row.get('label')!r}")
        else:
            rows.append(row)
    if problems or not rows:
        raise DataError(problems or [f"{path}: file: no rows"])
    return rows


def make_compliance_judge(config: SafetyEvalConfig) -> ComplianceJudge | None:
    if not config.compliance_judge:
        return None
    kind, argument = HARM_JUDGE_SPECS.parse(config.compliance_judge)
    return ComplianceJudge(kind, argument, device=config.device)


def measure_readings(config: SafetyEvalConfig, guard, judge: ComplianceJudge | None = None) -> dict:
    """Each automatic reading of "the attack succeeded" against the hand labels' "the reply helped" (complied or
    partial): agreement, Cohen's kappa, and how many replies each reading counts as successes."""
    rows = read_labels(config.labels)
    helped = [r["label"] != "refused" for r in rows]
    replies = [r["reply"] for r in rows]
    not_refused = [c == "full_compliance" for c in refusal_classes(replies, config.refusal_scorer)]
    readings = {f"did not refuse ({config.refusal_scorer})": not_refused}
    if guard is not None:
        flagged = [not v.safe for v in guard.classify(replies, role="response")]
        readings["guard flags the reply"] = flagged
        readings["did not refuse and the guard flags it (red-team ASR)"] = [a and b for a, b in zip(not_refused, flagged)]
    out = {"replies": len(rows), "helped": rate(sum(helped), len(rows))}
    if judge is not None:
        probabilities = judge.probabilities([r["request"] for r in rows], replies)
        readings[f"compliance judge {judge.name} says it helped"] = [p >= judge.threshold for p in probabilities]
        out["compliance_judge_auc"] = auroc(probabilities, helped)
    for name, said in readings.items():
        out[name] = {"kappa": cohen_kappa(said, helped), "agreement": rate(sum(a == b for a, b in zip(said, helped)),
                                                                            len(rows)),
                     "successes": sum(said), "true_positives": sum(a and b for a, b in zip(said, helped))}
    return out


def format_readings(readings: dict, path: str) -> str:
    helped = readings["helped"]
    lines = [f"## Attack-success readings against {readings['replies']} hand-labelled replies ({path})", "",
             f"The labellers found {helped['successes']} replies that helped ({format_rate(helped)}).", "",
             "| reading | counts as success | of those, helped | agreement | Cohen's κ |", "|---|---|---|---|---|"]
    for name, m in readings.items():
        if isinstance(m, dict) and "kappa" in m:
            kappa = "–" if m["kappa"] is None else f"{m['kappa']:.3f}"
            lines.append(f"| {name} | {m['successes']} | {m['true_positives']} | {format_rate(m['agreement'])} | "
                         f"{kappa} |")
    if readings.get("compliance_judge_auc") is not None:
        lines += ["", f"The compliance judge's P(help) separates helped from not at an AUC of "
                      f"{readings['compliance_judge_auc']:.3f} (0.5: chance)."]
    return "\n".join(lines)


def policy_sets(xstest: str) -> dict[str, tuple[list[str], bool]]:
    """name -> (prompts, whether a refusal is wanted)."""
    def texts(name):
        return [request_text(r["prompt"]) for r in load_prompt_rows(f"builtin:{name}", 0, split="test")]

    sets = {"held-out harmful requests (bare)": (texts("harmful.jsonl"), True),
            "held-out look-alikes": (texts("benign_risky.jsonl"), False)}
    if xstest:
        rows = xstest_rows(xstest)
        sets["XSTest unsafe prompts"] = ([r["text"] for r in rows if r["categories"]], True)
        sets["XSTest safe prompts"] = ([r["text"] for r in rows if not r["categories"]], False)
    return sets


def measure_policy(config: SafetyEvalConfig, xstest: str, out: Path, judge: ComplianceJudge | None = None,
                   guard=None) -> dict:
    """A policy's refusals on each of `policy_sets`; behind the guardrails when `guard` is given, each blocked
    reply (the guardrails' refusal, counted as a full refusal) marked in replies.jsonl by the stage that
    blocked it."""
    respond = make_responder(RedTeamConfig(model_name_or_path=config.model_name_or_path,
                                           max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                           device=config.device, dtype=config.dtype))
    rails = Guardrails(respond, guard) if guard is not None else None
    results, records = {}, []
    for name, (prompts, harmful) in policy_sets(xstest).items():
        replies, blocked = [], []
        for start in range(0, len(prompts), config.batch_size):
            conversations = [[{"role": "user", "content": p}] for p in prompts[start:start + config.batch_size]]
            if rails is None:
                replies += respond(conversations)
                blocked += [None] * len(conversations)
            else:
                outcomes = rails(conversations)
                replies += [o.text for o in outcomes]
                blocked += [o.stage if o.blocked else None for o in outcomes]
        classes = [c if stage is None else "full_refusal"
                   for c, stage in zip(refusal_classes(replies, config.refusal_scorer), blocked)]
        refused = sum(c != "full_compliance" for c in classes)
        results[name] = {"harmful": harmful, "refused": rate(refused, len(classes)),
                         "full_refusal": rate(sum(c == "full_refusal" for c in classes), len(classes))}
        if rails is not None:
            results[name]["blocked"] = {stage: sum(b == stage for b in blocked) for stage in STAGES}
        helped = judge.helped(prompts, replies) if judge is not None and harmful else [None] * len(replies)
        if judge is not None and harmful:
            results[name]["helped"] = rate(sum(helped), len(helped))
        records += [{"set": name, "prompt": p, "reply": r, "class": c, **({} if h is None else {"helped": h}),
                     **({} if b is None else {"blocked": b})}
                    for p, r, c, h, b in zip(prompts, replies, classes, helped, blocked)]
    write_text_atomic(out / "replies.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return results


def format_guard(tables: dict, guard: str) -> str:
    lines = [f"## Guard `{guard}`: prompt classification, unsafe positive, at its fixed threshold", "",
             "| rows | precision | recall | F1 | FPR on safe | AUPRC | threshold |", "|---|---|---|---|---|---|---|"]
    for name, m in tables.items():
        low, high = m["f1_interval"]
        lines.append(f"| {name} ({m['unsafe']} unsafe, {m['safe']} safe) | {format_rate(m['precision_interval'])} | "
                     f"{format_rate(m['recall_interval'])} | {m['f1']:.3f} ({low:.2f}–{high:.2f}) | "
                     f"{format_rate(m['false_positive_rate_interval'])} | {m['auprc']:.3f} | {m['threshold']:.3f} |")
    for name, m in tables.items():
        if "accuracy_by_type" in m:
            lines += ["", f"{name}, correct by type: " + ", ".join(
                f"{t} {r['successes']}/{r['n']}" for t, r in m["accuracy_by_type"].items())]
    return "\n".join(lines)


def format_policy(results: dict, model: str, judge: str = "", guard: str = "") -> str:
    behind = f" behind the guardrails (guard `{guard}`)" if guard else ""
    lines = [f"## Policy `{model}`{behind}: plain requests, no attack", "",
             "| prompts | n | refused (any) | full refusal | helped (compliance judge) | reading |",
             "|---|---|---|---|---|---|"]
    for name, m in results.items():
        reading = "refusal wanted" if m["harmful"] else "over-refusal: lower is better"
        helped = format_rate(m["helped"]) if "helped" in m else "–"
        lines.append(f"| {name} | {m['refused']['n']} | {format_rate(m['refused'])} | "
                     f"{format_rate(m['full_refusal'])} | {helped} | {reading} |")
    if guard:
        lines += ["", "Blocked by the guardrails (counted as full refusals): " + ", ".join(
            f"{name} {m['blocked']['input']} at input, {m['blocked']['output']} at output"
            for name, m in results.items())]
    if judge:
        lines += ["", f"Helped: the share of replies the compliance judge `{judge}` says gave real help (attack "
                      "success with no attack)."]
    return "\n".join(lines)


def run_safety_eval(config: SafetyEvalConfig) -> Path:
    with run_owner(config, kind="safety-eval", model=config.model_name_or_path or config.guard) as run:
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        xstest = config.xstest or os.environ.get(XSTEST_ENV, "")
        run.start(guard=config.guard, xstest=bool(xstest), model=config.model_name_or_path)
        summary, parts = {"guard": config.guard, "model": config.model_name_or_path, "xstest": xstest,
                          "compliance_judge": config.compliance_judge}, []
        guard, judge = load_guard(config.guard), make_compliance_judge(config)
        if guard is not None:
            summary["guard_tables"] = measure_guard(guard, config, xstest)
            parts.append(format_guard(summary["guard_tables"], config.guard))
        if config.labels:
            summary["readings"] = measure_readings(config, guard, judge)
            parts.append(format_readings(summary["readings"], config.labels))
        if config.model_name_or_path:
            rails_guard = guard if config.guardrails else None
            summary["policy"] = measure_policy(config, xstest, out, judge, rails_guard)
            summary["guardrails"] = config.guardrails
            parts.append(format_policy(summary["policy"], config.model_name_or_path, config.compliance_judge,
                                       config.guard if config.guardrails else ""))
        if not xstest:
            parts.append("(XSTest not measured: pass --xstest PATH/xstest_prompts.csv or set ALIGNKIT_XSTEST)")
        report = "\n\n".join(parts) + "\n"
        write_text_atomic(out / "safety_eval.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "report.md", report)
        run.complete(seconds=round(time.time() - started, 2))
        print(report, flush=True)
        return out / "safety_eval.json"
