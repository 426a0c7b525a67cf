"""HTML run reports and the pipeline index: self-contained, tolerant of half-written runs, escaped."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time

import pytest

from alignkit.engine.report import read_curves, write_report
from alignkit.engine.summary import write_pipeline_summary
from alignkit.errors import AlignkitError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


def fake_run(path, steps=60, method="dpo", config=True, run_json=True, truncated=True, extra_metrics=0):
    """A run directory as the engine writes it, with the awkward parts a real one can have."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 0.7 * math.exp(-s / 30) + 0.05 * math.sin(s), "lr": 1e-5 * min(1, s / 10),
               "grad_norm": 1 + 0.1 * (s % 7), "tokens_per_s": 2000.0 + s, "step_time": 0.25,
               "peak_memory_mb": 900 + s, "skipped_steps": 0, "epoch": s / steps,
               "rewards/margins": 0.01 * s, "logps/chosen": -50.0 - s / 10,
               "phase": "train", "note": None}  # non-numeric values are ignored
        row.update({f"extra/m{i}": s * i / 100 for i in range(extra_metrics)})
        lines.append(json.dumps(row))
        if s % 20 == 0:
            lines.append(json.dumps({"step": s, "eval/loss": 0.8 * math.exp(-s / 30), "eval/rewards/margins": 0.01 * s,
                                     "eval/win_rate": 0.5 + s / 1000, "eval/split": "test"}))
    text = "\n".join(lines) + "\n"
    if truncated:
        text += '{"step": %d, "loss": 0.1' % (steps + 1)  # killed mid-write
    (path / "metrics.jsonl").write_text(text)
    if config:
        (path / "config.yaml").write_text(
            f"method: {method}\nlearning_rate: 1.0e-5\nsystem_prompt: \"<script>alert('x')</script>\"\n"
        )
    if run_json:
        (path / "run.json").write_text(json.dumps({"status": "complete", "method": method, "steps": steps,
                                                   "seconds": 125.0, "output_dir": str(path)}))
    return path


def images(html):
    return {alt: b64 for b64, alt in IMG.findall(html)}


def test_report_has_a_plot_per_metric_group_and_is_self_contained(tmp_path):
    run = fake_run(tmp_path / "dpo-run")
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text(encoding="utf-8")

    plots = images(html)
    for group in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb", "rewards/margins", "logps/chosen",
                  "step_time", "eval/win_rate"):
        assert group in plots, group
    # eval/loss is drawn on the loss axes, not on its own; epoch is an x axis, not a curve.
    assert "eval/loss" not in plots and "eval/rewards/margins" not in plots and "epoch" not in plots
    assert not re.search(r"https?://", html)
    assert not re.search(r"""\s(src|href)\s*=\s*(?!"data:image/png;base64,)""", html)
    assert "<script" not in html

    assert "dpo · dpo-run" in html and "complete" in html and "2 min 05 s" in html
    assert "1 line(s) of metrics.jsonl skipped" in html
    assert "eval/win_rate" in html.split("<h2>Summary</h2>")[1].split("</table>")[0]


def test_config_values_are_escaped(tmp_path):
    html = write_report(fake_run(tmp_path / "run")).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<script>" not in html


def test_embedded_images_are_valid_png(tmp_path):
    html = write_report(fake_run(tmp_path / "run")).read_text(encoding="utf-8")
    png = base64.b64decode(images(html)["loss"], validate=True)
    assert png.startswith(PNG_MAGIC)
    assert png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 300 and height > 150
    assert png.endswith(b"IEND\xaeB`\x82")


def test_missing_config_and_run_json_are_noted_not_fatal(tmp_path):
    run = fake_run(tmp_path / "run", config=False, run_json=False, truncated=False)
    html = write_report(run, title="my <run>").read_text(encoding="utf-8")
    assert "<h1>my &lt;run&gt;</h1>" in html
    assert "config.yaml not found" in html and "run.json not found" in html
    assert "unknown" in html and "<h2>Config</h2>" not in html
    assert "loss" in images(html)


@pytest.mark.parametrize("content", [None, "", "{not json\n", '{"step": 1, "loss": "nan?"}\n'])
def test_empty_or_missing_metrics_still_give_a_page(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    html = write_report(run).read_text(encoding="utf-8")
    assert "<h1>run</h1>" in html and "<img" not in html
    assert "nothing to plot" in html or "no numeric metrics" in html


def test_read_curves_keeps_last_value_per_step_and_skips_non_finite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        '{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}',
        '{"step": 2, "loss": 1.4, "flag": true}',  # a resumed run logs step 2 again
        '{"step": 3, "loss": NaN}', '{"step": 3, "loss": "inf"}', '{"loss": 9.0}', '[1, 2]', '{"step": 4, "loss": 1.0',
    ]))
    m = read_curves(path)
    assert m.curves == {"loss": ([1, 2], [2.0, 1.4])}
    assert m.nonfinite == {"loss": 2} and m.unreadable_lines == 3


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "report.html").write_text("old")
    write_report(run)
    assert (run / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "report.html", "run.json"]


def test_not_a_directory_is_one_clear_error(tmp_path):
    with pytest.raises(AlignkitError, match="not a run directory"):
        write_report(tmp_path / "nope")


def test_pipeline_summary_links_each_report_by_relative_path(tmp_path):
    sft = fake_run(tmp_path / "runs" / "sft", method="sft")
    dpo = fake_run(tmp_path / "runs" / "dpo stage")
    write_report(sft)
    write_report(dpo)
    stages = [
        {"name": "sft", "run_dir": str(sft), "status": "complete", "seconds": 61.0},
        {"name": "dpo", "run_dir": str(dpo), "status": "running", "seconds": None},
        {"name": "<eval>", "run_dir": str(tmp_path / "runs" / "eval"), "status": "pending", "seconds": None},
    ]
    path = write_pipeline_summary(tmp_path / "pipeline", stages)
    assert path == tmp_path / "pipeline" / "index.html"
    html = path.read_text(encoding="utf-8")

    hrefs = re.findall(r'<a href="([^"]+)"', html)
    assert hrefs == ["../runs/sft/report.html", "../runs/dpo%20stage/report.html", "../runs/eval/report.html"]
    for href in hrefs[:2]:  # the links resolve from the index's own folder
        assert (path.parent / href.replace("%20", " ")).resolve().is_file()
    assert "&lt;eval&gt;" in html and "(not written yet)" in html
    assert "complete" in html and "running" in html and "1 min 01 s" in html
    sparks = images(html)
    assert set(sparks) == {"sft loss", "dpo loss"}
    assert base64.b64decode(sparks["sft loss"]).startswith(PNG_MAGIC)
    assert not re.search(r"https?://", html)


def test_report_is_fast_for_a_long_run(tmp_path):
    run = fake_run(tmp_path / "run", steps=1000, extra_metrics=5)  # 15 plotted metrics
    write_report(run)  # first call pays matplotlib's import
    seconds = []
    for _ in range(2):  # best of two, so a busy test machine does not fail it
        start = time.perf_counter()
        write_report(run)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 2.0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert len(images(html)) >= 15


def test_importing_the_report_module_does_not_import_matplotlib():
    code = "import sys, alignkit.engine.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
