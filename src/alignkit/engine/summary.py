"""A pipeline's index page: did it work? The headline numbers first, a few answers side by side, then the
stage table and the sections the layers above pass in.

Headlines come from each stage's own files, never recomputed: a command that measures something records it
in its run.json as `headline` (a list of {"label", "value", "low", "high", "percent"}: the win rate and its
interval, attack success, ...); a training run's held-out metrics (run.json `eval`) and an RL run's reward
and KL curves (metrics.jsonl) are read from there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignkit.engine.outputs import read_status
from alignkit.engine.report import (
    duration,
    esc,
    img,
    num,
    relative_href,
    sparkline,
    status_badge,
    html_page,
    read_curves,
)
from alignkit.files import write_text_atomic

EVAL_HEADLINES = (("eval/accuracy", "held-out accuracy", True),
                  ("eval/rewards/accuracies", "held-out preference accuracy", True),
                  ("eval/loss", "held-out loss", False))
"""Held-out metrics of a training run (run.json `eval`) shown as headlines, with their labels."""
RL_CURVES = (("objective/scores", "reward-model score"), ("reward", "reward"))
"""An RL run's reward curve (PPO, GRPO/RLOO): its first and last logged values are a headline."""
KL_CURVES = ("objective/kl", "kl")
CURVE_PREFERENCE = ("loss", "objective/scores", "reward")
"""The curve a stage's row shows: the loss, else the reward of an RL run."""
OUTPUTS = ("generations.jsonl", "pairs.jsonl", "preferences.jsonl", "win_rate.json", "results.json", "run.json")
"""What a finished stage without report.html links to instead."""
ANSWERS = "generations.jsonl"
MAX_ANSWERS = 3


def headline(label: str, value: float, low: float | None = None, high: float | None = None,
             percent: bool = False) -> dict:
    """One headline number for run.json (`run.complete(headline=[...])`)."""
    return {"label": label, "value": value, "low": low, "high": high, "percent": percent}


def stage_headlines(run_dir: str | os.PathLike) -> list[dict]:
    """The headline numbers of one stage, from its run.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    found = [h for h in status.get("headline") or [] if isinstance(h, dict) and "value" in h]
    evals = status.get("eval") or {}
    found += [headline(label, evals[key], percent=percent) for key, label, percent in EVAL_HEADLINES
              if isinstance(evals.get(key), (int, float))]
    curves = read_curves(run_dir / "metrics.jsonl").curves
    for key, label in RL_CURVES:
        if key in curves:
            first, last = curves[key][1][0], curves[key][1][-1]
            found.append({**headline(f"{label}, first → last logged step", last), "first": first})
            break
    for key in KL_CURVES:
        if key in curves:
            found.append(headline("KL to the reference (last step)", curves[key][1][-1]))
            break
    return found


def format_headline(h: dict) -> str:
    """"62.1% (50–73)", "−1.68 → −1.90", "0.693"."""
    def show(v: float) -> str:
        return f"{100 * v:.1f}%" if h.get("percent") else num(float(v))

    text = f"{show(h['first'])} → {show(h['value'])}" if "first" in h else show(h["value"])
    if h.get("low") is not None and h.get("high") is not None:
        low, high = (f"{100 * h['low']:.0f}", f"{100 * h['high']:.0f}") if h.get("percent") \
            else (num(h["low"]), num(h["high"]))
        text += f" <span class=hint>({low}–{high})</span>"
    return text


def _results(stages: list[dict]) -> list[str]:
    rows = [f"<tr><td>{esc(stage['name'])}</td><td>{esc(h['label'])}</td><td class=num>{format_headline(h)}</td>"
            f"</tr>" for stage in stages for h in stage_headlines(stage["run_dir"])]
    if not rows:
        return []
    return ["<h2>Results</h2>", "<table class=headlines><tr><th>stage</th><th>measure</th><th>value "
            "<span class=hint>(95% interval)</span></th></tr>", *rows, "</table>"]


def _read_answers(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / ANSWERS).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def _question(prompt: Any) -> str:
    return prompt[-1].get("content", "") if isinstance(prompt, list) and prompt else str(prompt)


def _answers(stages: list[dict]) -> list[str]:
    """The first few prompts that several generate stages answered, each stage's answer side by side."""
    groups: dict[tuple, list[tuple[str, list[dict]]]] = {}
    for stage in stages:
        rows = _read_answers(Path(stage["run_dir"]))
        if rows:
            key = tuple(_question(r.get("prompt")) for r in rows)
            groups.setdefault(key, []).append((stage["name"], rows))
    html = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in members)
        rows = [f"<tr><td>{esc(key[i])}</td>" + "".join(f"<td>{esc(rows[i].get('completion', ''))}</td>"
                                                         for _, rows in members) + "</tr>"
                for i in range(min(MAX_ANSWERS, len(key)))]
        html += [f"<h2>Answers side by side <span class=hint>(first {len(rows)} of {len(key)} prompts)</span></h2>",
                 f"<table class=answers><tr><th>prompt</th>{head}</tr>", *rows, "</table>"]
    return html


def _link(stage: dict, pipeline_dir: Path) -> tuple[Path, str]:
    """(what the stage's name links to, a hint): its report, else the output a finished stage left."""
    run_dir = Path(stage["run_dir"])
    report = run_dir / "report.html"
    if report.exists():
        return report, ""
    if stage.get("status") == "complete":
        output = next((run_dir / name for name in OUTPUTS if (run_dir / name).exists()), run_dir)
        return output, ""
    return report, ' <span class=hint>(not written yet)</span>'


def _curve(stage: dict) -> str:
    curves = read_curves(Path(stage["run_dir"]) / "metrics.jsonl").curves
    name = next((n for n in CURVE_PREFERENCE if n in curves and len(curves[n][1]) >= 2), None)
    if name is None:
        return '<span class=hint>no training curve</span>'
    steps, values = curves[name]
    return (img(sparkline(steps, values), f"{stage['name']} {name}", ' width="180" height="45"')
            + f" <span class=hint>{esc(name)} {num(values[-1])}</span>")


def write_pipeline_summary(pipeline_dir: str | os.PathLike, stages: list[dict[str, Any]],
                           sections: Sequence[Callable[[str | os.PathLike, str], list[str]]] = ()) -> Path:
    """Write `pipeline_dir/index.html` and return its path: the results (every stage's headline numbers), a
    few answers side by side, then one row per stage linking its report.html by relative path (or, for a
    finished stage that writes none, its output file; a stage not finished is marked "(not written yet)").

    Each stage is `{"name", "run_dir", "status", "seconds"}` (seconds may be None; an optional "error", the
    one-line reason of a failed or stopped stage, is shown next to its status). Each of `sections` is called
    as `section(run_dir, stage name)` for every stage and returns HTML shown under the stage table (the
    pipeline passes `alignkit.safety.report.section`: red-team results); the engine takes them as arguments
    because it sits below the packages that write them.
    """
    import matplotlib

    pipeline_dir = Path(pipeline_dir)
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0.0
    with matplotlib.rc_context({"figure.facecolor": "white"}):
        for stage in stages:
            target, hint = _link(stage, pipeline_dir)
            href = relative_href(target.resolve(), pipeline_dir.resolve())
            seconds = stage.get("seconds")
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                total += seconds
                time = duration(float(seconds))
            else:
                time = "–"
            error = f" <span class=hint>{esc(stage['error'])}</span>" if stage.get("error") else ""
            rows.append(f"<tr><td><a href=\"{esc(href)}\">{esc(stage['name'])}</a>{hint}</td>"
                        f"<td>{status_badge(str(stage.get('status', 'unknown')))}{error}</td>"
                        f"<td class=num>{time}</td><td>{_curve(stage)}</td></tr>")
    title = f"pipeline · {pipeline_dir.resolve().name}"
    meta = f"<span>{len(stages)} stage(s)</span><span>total time <b>{duration(total)}</b></span>"
    body = [f"<h1>{esc(title)}</h1>", f"<div class=meta>{meta}</div>", *_results(stages), *_answers(stages),
            "<h2>Stages</h2>", "<table><tr><th>stage</th><th>status</th><th>time</th><th>curve</th></tr>", *rows,
            "</table>"]
    for stage in stages:
        for section in sections:
            body += section(stage["run_dir"], stage["name"])
    path = pipeline_dir / "index.html"
    write_text_atomic(path, html_page(title, body))
    return path
