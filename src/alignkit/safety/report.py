"""The safety section of reports: a red-team run's heat map and rates, a safety loop's before/after bars.

`section(run_dir)` returns HTML for a run directory holding a red-team `results.json` or a safety loop's
`safety_loop.json` (an empty list for any other run); the pipeline summary puts it under its stage table, and
`write_safety_report` makes the stage's own report.html from it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from alignkit.engine.report import html_page
from alignkit.files import write_text_atomic
from alignkit.stats import format_rate


def rate_html(r: dict | None) -> str:
    return format_rate(r, html=True)


def _embedded_png(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{alt}" style="max-width:100%">'


def _redteam(run_dir: Path, results: dict, name: str) -> list[str]:
    over = (results.get("over_refusal") or {})
    rows = [f"<tr><td>attack success rate</td><td>{rate_html(results['asr']['overall'])}</td></tr>",
            f"<tr><td>replies that did not refuse</td><td>{rate_html(results.get('compliance'))}</td></tr>"]
    if over:
        rows += [f"<tr><td>over-refusal (benign look-alikes)</td><td>{rate_html(over.get('any'))}</td></tr>",
                 f"<tr><td>&nbsp;&nbsp;full refusal</td><td>{rate_html(over.get('full_refusal'))}</td></tr>",
                 f"<tr><td>&nbsp;&nbsp;partial refusal</td><td>{rate_html(over.get('partial_refusal'))}</td></tr>"]
    by_attack = "".join(f"<tr><td>{a}</td><td>{rate_html(r)}</td></tr>" for a, r in results["asr"]["by_attack"].items())
    return [f"<h2>Safety · {name}</h2>",
            f"<p class=hint>model {results.get('model', '?')}; harm judge {results.get('harm_judge', '?')}, "
            f"refusal scorer {results.get('refusal_scorer', '?')}; 95% Wilson intervals</p>",
            "<table>", *rows, "</table>", _embedded_png(run_dir / "asr_heatmap.png", "ASR by hazard and attack"),
            "<table><tr><th>attack</th><th>ASR</th></tr>", by_attack, "</table>"]


def _rm_rows(verdict: dict) -> list[str]:
    if not verdict:
        return []
    rows = "".join(f"<tr><td>{label}</td><td>{v['mean_before']:+.3f}</td><td>{v['mean_after']:+.3f}</td>"
                   f"<td>{rate_html(v['after_preferred'])}</td></tr>" for label, v in verdict.items())
    return ["<p class=hint>the loop's safety RM on the held-out replies</p>",
            "<table><tr><th></th><th>mean score before</th><th>mean score after</th>"
            "<th>prefers the after reply</th></tr>", rows, "</table>"]


def _loop(run_dir: Path, summary: dict, name: str) -> list[str]:
    b, a = summary["before"], summary["after"]

    def change(key: str) -> str:
        value = summary.get(key)
        return "–" if value is None else f"{100 * value:+.1f} points"

    return [f"<h2>Safety loop · {name}</h2>",
            f"<p class=hint>{summary.get('train_method', '?')} on data from attacks on the training split: "
            f"{summary.get('data', {}).get('sft_rows', '?')} SFT rows, "
            f"{summary.get('data', {}).get('preference_rows', '?')} preference pairs</p>",
            "<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>",
            f"<tr><td>attack success rate</td><td>{rate_html(b['asr'])}</td><td>{rate_html(a['asr'])}</td>"
            f"<td>{change('asr_change')}</td></tr>",
            f"<tr><td>attacks not refused</td><td>{rate_html(b.get('compliance'))}</td>"
            f"<td>{rate_html(a.get('compliance'))}</td>"
            f"<td>{change('compliance_change')}</td></tr>",
            f"<tr><td>over-refusal</td><td>{rate_html(b['over_refusal'])}</td><td>{rate_html(a['over_refusal'])}</td>"
            f"<td>{change('over_refusal_change')}</td></tr></table>",
            *_rm_rows(summary.get("safety_rm") or {}),
            _embedded_png(run_dir / "before_after.png", "before and after"),
            _embedded_png(run_dir / "after" / "asr_heatmap.png", "ASR after the loop")]


def section(run_dir: str | Path, name: str | None = None) -> list[str]:
    """HTML for a red-team or safety-loop run directory ([] for any other run)."""
    run_dir = Path(run_dir)
    name = name or run_dir.name
    try:
        if (run_dir / "safety_loop.json").exists():
            return _loop(run_dir, json.loads((run_dir / "safety_loop.json").read_text()), name)
        results = run_dir / "results.json"
        if results.exists():
            data = json.loads(results.read_text())
            if "asr" in data:
                return _redteam(run_dir, data, name)
    except (OSError, ValueError, KeyError):
        return [f"<p class=hint>{name}: safety results unreadable</p>"]
    return []


def write_safety_report(run_dir: str | Path, title: str) -> Path:
    path = Path(run_dir) / "report.html"
    write_text_atomic(path, html_page(title, [f"<h1>{title}</h1>", *section(run_dir)]))
    return path
