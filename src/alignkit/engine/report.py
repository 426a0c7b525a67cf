"""HTML reports: one page per run (`write_report`); a pipeline's index page is engine/summary.py.

A report is a single self-contained file: plots are PNGs inlined as base64 data URIs, CSS is inline and
there are no scripts or external resources, so it can be attached to an issue or opened from a copied run
directory with no network. It reads only what the engine writes (`metrics.jsonl`, `config.yaml`,
`run.json`) and tolerates each being missing or half-written, because a report is most wanted for a run
that crashed or is still running.

matplotlib is imported inside the plotting helpers only (`import alignkit` stays light). We draw on
`matplotlib.figure.Figure` with the Agg canvas rather than through pyplot: the result is the same Agg
rendering, but it neither switches the backend of a notebook that calls us nor leaves figures registered
in pyplot's global state (nothing to close, nothing leaked by a long pipeline).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError
from alignkit.files import write_text_atomic

# The order curves appear in: the engine's own metrics first, each method's metrics (alphabetical, so
# TRL's "rewards/…", "logps/…" families sit together) after them, bookkeeping last.
FIRST_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb")
LAST_METRICS = ("step_time", "num_tokens", "skipped_steps")
# Logged on every line but not a curve worth a plot: it is another x axis. Shown in the header instead.
NOT_PLOTTED = ("epoch",)
EVAL_PREFIX = "eval/"
# engine.runlog writes NaN/inf as these strings (JSON has neither); Python's json also reads bare NaN.
NONFINITE_STRINGS = {"nan", "-nan", "inf", "-inf", "infinity", "-infinity"}
# Deterministic curves: an EMA would only bend them (a warm-up ramp would look slower than it was).
NOT_SMOOTHED = ("lr", "peak_memory_mb", "num_tokens", "skipped_steps")
# Below this many points every point is worth seeing; above it the raw curve is noise without an EMA.
SMOOTH_MIN_POINTS = 20

TRAIN_COLOR, EVAL_COLOR = "#1f77b4", "#d62728"
STATUS_CLASS = {"complete": "ok", "running": "run", "failed": "bad", "stopped": "off"}


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class MetricCurves:
    """Every numeric metric of a run as `name -> (steps ascending, values)`, plus what could not be read."""

    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    unreadable_lines: int = 0  # not a JSON object with an integer "step", e.g. a truncated last line
    nonfinite: dict[str, int] = field(default_factory=dict)  # NaN/inf values per metric, left out of curves


def read_curves(path: str | os.PathLike) -> MetricCurves:
    """Read `metrics.jsonl`; a missing file gives no curves. Strings, nulls and booleans are ignored."""
    out = MetricCurves()
    by_step: dict[str, dict[int, float]] = {}
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return out
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            out.unreadable_lines += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if not isinstance(step, int) or isinstance(step, bool):
            out.unreadable_lines += 1
            continue
        for name, value in row.items():
            if isinstance(value, str) and value.strip().lower() in NONFINITE_STRINGS:
                value = math.nan
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                out.nonfinite[name] = out.nonfinite.get(name, 0) + 1
                continue
            # Keyed by step, last write wins: a log that repeats steps (a resumed run whose log was not cut
            # back) keeps the values that led to the final weights, and the curve never doubles back.
            by_step.setdefault(name, {})[step] = float(value)
    for name, points in by_step.items():
        steps = sorted(points)
        out.curves[name] = (steps, [points[s] for s in steps])
    return out


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(mapping, None), or (None, why not) for a missing or unreadable file."""
    if not path.exists():
        return None, f"{path.name} not found"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__}); it may be mid-write"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.exists():
        return None, f"{path.name} not found"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__})"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"{path.name} is not a mapping"
    return data, None


# --------------------------------------------------------------------------------------------- plotting


@dataclass
class _Group:
    """One plot: a training curve, its eval counterpart on the same axes, or either alone."""

    title: str
    train: str | None
    eval: str | None


def _groups(curves: dict[str, Any]) -> list[_Group]:
    train = [n for n in curves if not n.startswith(EVAL_PREFIX) and n not in NOT_PLOTTED]
    evals = [n for n in curves if n.startswith(EVAL_PREFIX)]
    paired = {e for e in evals if e[len(EVAL_PREFIX):] in train}
    groups = [_Group(n, n, EVAL_PREFIX + n if EVAL_PREFIX + n in paired else None) for n in train]
    groups += [_Group(e, None, e) for e in evals if e not in paired]

    def order(g: _Group) -> tuple:
        key = g.title.removeprefix(EVAL_PREFIX)
        if key in FIRST_METRICS:
            return (0, FIRST_METRICS.index(key), "")
        if key in LAST_METRICS:
            return (2, LAST_METRICS.index(key), "")
        return (1, 0, key)

    return sorted(groups, key=order)


def _ema(values: list[float]) -> list[float]:
    """Exponential moving average whose span grows with the run (about 1/20 of the points, 5 to 100)."""
    span = min(100, max(5, len(values) // 20))
    alpha = 2.0 / (span + 1)
    out, s = [], values[0]
    for v in values:
        s += alpha * (v - s)
        out.append(s)
    return out


def _png(fig) -> str:
    """Render a Figure with Agg and return it base64-encoded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No "Software" text chunk: it carries a URL, and the bytes then depend only on the data.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style_axes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.grid(True, alpha=0.3, linewidth=0.6)
    # An offset ("+2.3" above the axis) makes slowly changing values like a plateaued loss unreadable.
    ax.ticklabel_format(axis="y", useOffset=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _plot_group(group: _Group, curves: dict[str, tuple[list[int], list[float]]], wide: bool) -> str:
    from matplotlib.figure import Figure

    width, height = (9.0, 3.4) if wide else (4.6, 2.9)
    fig = Figure(figsize=(width, height), dpi=100)
    # Fixed margins in inches instead of constrained layout, which costs a second draw and half the time.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.35 / height)
    ax = fig.add_subplot()
    ax.set_title(group.title, fontsize=11)
    if group.train:
        steps, values = curves[group.train]
        if group.train in NOT_SMOOTHED:
            ax.plot(steps, values, color=TRAIN_COLOR, linewidth=1.4, label="train")
        elif len(values) > SMOOTH_MIN_POINTS:
            ax.plot(steps, values, color=TRAIN_COLOR, alpha=0.25, linewidth=0.9)
            ax.plot(steps, _ema(values), color=TRAIN_COLOR, linewidth=1.6, label="train (EMA)")
        else:
            ax.plot(steps, values, color=TRAIN_COLOR, linewidth=1.4, marker="o", markersize=3, label="train")
    if group.eval:
        steps, values = curves[group.eval]
        ax.plot(steps, values, color=EVAL_COLOR, linestyle=":", linewidth=1.0, marker="o", markersize=4.5,
                label="eval")
    if group.train and group.eval:
        ax.legend(fontsize=8, frameon=False)
    _style_axes(ax)
    return _png(fig)


def sparkline(steps: list[int], values: list[float]) -> str:
    from matplotlib.figure import Figure

    # Twice the pixels it is shown at, so it stays sharp on high-density screens.
    fig = Figure(figsize=(1.8, 0.45), dpi=200)
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.84))
    ax.plot(steps, values, color=TRAIN_COLOR, alpha=0.35 if len(values) > SMOOTH_MIN_POINTS else 1.0,
            linewidth=0.8)
    if len(values) > SMOOTH_MIN_POINTS:
        ax.plot(steps, _ema(values), color=TRAIN_COLOR, linewidth=1.3)
    ax.plot(steps[-1:], values[-1:], "o", color=TRAIN_COLOR, markersize=2.5)
    ax.set_axis_off()
    return _png(fig)


# ------------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:24px auto;
max-width:1240px;padding:0 16px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.meta span{margin-right:18px}
.badge{padding:1px 8px;border-radius:9px;color:#fff;background:#888}
.ok{background:#2e7d32}.run{background:#1565c0}.bad{background:#c62828}.off{background:#6d6d6d}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{border-bottom:1px solid #eee;padding:3px 12px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}td.num{text-align:right}
.notes{background:#fff8e1;border-left:3px solid #f9a825;padding:6px 12px;margin:12px 0}
.wide img{width:100%;max-width:900px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:10px}
.grid img{width:100%}
.config td:last-child{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-all}
.hint{color:#777;font-size:12px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    if abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def img(b64: str, alt: str, extra: str = "") -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{esc(alt)}"{extra}>'


def status_badge(status: str) -> str:
    return f'<span class="badge {STATUS_CLASS.get(status, "")}">{esc(status)}</span>'


def _config_value(value: Any) -> str:
    # JSON spelling for everything but strings, so null/true and lists read the same as in the YAML.
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _summary_rows(curves: dict[str, tuple[list[int], list[float]]]) -> list[str]:
    names = (["loss"] if "loss" in curves else []) + sorted(n for n in curves if n.startswith(EVAL_PREFIX))
    rows = []
    for name in names:
        steps, values = curves[name]
        i_min = min(range(len(values)), key=values.__getitem__)
        rows.append(
            f"<tr><td>{esc(name)}</td><td class=num>{num(values[0])}</td><td class=num>{num(values[-1])}</td>"
            f"<td class=num>{num(values[i_min])}</td><td class=num>{steps[i_min]}</td>"
            f"<td class=num>{num(max(values))}</td>"
            f"<td class=num>{steps[-1]}</td><td class=num>{len(values)}</td></tr>"
        )
    return rows


def html_page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------ public API


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> Path:
    """Write `run_dir/report.html` (atomically) from the run's metrics, config and run.json; return its path.

    Works on a finished, running, failed or empty run: whatever is missing is named in a note on the page.
    """
    import matplotlib

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AlignkitError(f"{run_dir}: not a run directory")
    metrics = read_curves(run_dir / "metrics.jsonl")
    curves = metrics.curves
    run, run_note = _read_json(run_dir / "run.json")
    config, config_note = _read_config(run_dir / "config.yaml")
    run = run or {}

    notes = [n for n in (run_note, config_note) if n]
    if not (run_dir / "metrics.jsonl").exists():
        notes.append("metrics.jsonl not found: nothing to plot yet")
    elif not curves:
        notes.append("metrics.jsonl has no numeric metrics yet")
    if metrics.unreadable_lines:
        notes.append(f"{metrics.unreadable_lines} line(s) of metrics.jsonl skipped as unreadable "
                     "(a truncated last line is expected from a run stopped mid-write)")
    for name, count in sorted(metrics.nonfinite.items()):
        notes.append(f"{name}: {count} non-finite value(s) (NaN/inf) left out of the plot")

    method = run.get("method") or (config or {}).get("method")
    title = title or (f"{method} · {run_dir.resolve().name}" if method else run_dir.resolve().name)
    status = str(run.get("status", "unknown"))
    last_step = max((s[-1] for s, _ in curves.values()), default=None)
    meta = [f"<span>status {status_badge(status)}</span>"]
    steps = run.get("steps", last_step)
    if steps is not None:
        meta.append(f"<span>steps <b>{esc(steps)}</b></span>")
    if isinstance(run.get("seconds"), (int, float)) and not isinstance(run.get("seconds"), bool):
        meta.append(f"<span>wall time <b>{duration(float(run['seconds']))}</b></span>")
    if "epoch" in curves:
        meta.append(f"<span>epoch <b>{num(curves['epoch'][1][-1])}</b></span>")
    # Anything else the engine put in run.json (an error message, the output directory) is shown as is.
    extra = {k: v for k, v in run.items() if k not in ("status", "method", "steps", "seconds")}
    meta += [f"<span>{esc(k)} <b>{esc(_config_value(v))}</b></span>" for k, v in extra.items()]

    body = [f"<h1>{esc(title)}</h1>", f"<div class=meta>{''.join(meta)}</div>"]
    if notes:
        body.append("<div class=notes>" + "<br>".join(esc(n) for n in notes) + "</div>")

    summary = _summary_rows(curves)
    if summary:
        body += ["<h2>Summary</h2>",
                 "<table><tr><th>metric</th><th>first</th><th>last</th><th>min</th><th>min at step</th>"
                 "<th>max</th><th>last step</th><th>points</th></tr>", *summary, "</table>"]

    groups = _groups(curves)
    if groups:
        with matplotlib.rc_context({"font.size": 9, "axes.titlesize": 11, "figure.facecolor": "white"}):
            images = [(g, _plot_group(g, curves, wide=(g.title == "loss"))) for g in groups]
        body.append("<h2>Metrics</h2>")
        body.append(f"<p class=hint>x axis: optimizer step. Above {SMOOTH_MIN_POINTS} points the raw curve is "
                    "drawn light and an exponential moving average dark; eval points are red markers.</p>")
        wide = [img(b64, g.title) for g, b64 in images if g.title == "loss"]
        if wide:
            body.append(f"<div class=wide>{wide[0]}</div>")
        body.append("<div class=grid>" + "".join(img(b64, g.title) for g, b64 in images if g.title != "loss")
                    + "</div>")

    if config:
        body.append("<h2>Config</h2><table class=config>")
        body += [f"<tr><td>{esc(k)}</td><td>{esc(_config_value(v))}</td></tr>" for k, v in config.items()]
        body.append("</table>")

    path = run_dir / "report.html"
    write_text_atomic(path, html_page(title, body))
    return path


def relative_href(target: Path, start: Path) -> str:
    try:
        rel = os.path.relpath(target, start)
    except ValueError:  # different drives on Windows: no relative path exists
        return target.as_uri()
    return urllib.parse.quote(Path(rel).as_posix())
