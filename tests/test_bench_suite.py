"""The benchmarks cannot flatter us: a comparison of different work prints FAIL and exits non-zero, never a ratio;
the suite runner writes every raw figure; the doc tables are what the committed results give."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import harness  # noqa: E402
import tables  # noqa: E402


def _run(side: str, **over) -> dict:
    run = {"side": side, "optimizer": "AdamW(fused)", "dtype": "float32", "threads": 2, "trainable_params": 100,
           "checkpointing": False, "real_tokens": 500, "rows_kept": 16, "tokens_seen": 600, "first_loss": 0.6931,
           "first_grad_norm": 2.0, "tokens_per_s": 200.0 if side == "ours" else 100.0, "peak_bytes": 50,
           "abs_peak_bytes": 500, "cpu_step_s": 1.0 if side == "ours" else 2.0}
    return {**run, **over}


def _samples(ours: list[dict], trl: list[dict]) -> dict:
    return {("m", "d", "ours"): ours, ("m", "d", "trl"): trl}


def test_equal_work_gives_paired_ratios():
    """Three repeats: the ratio is the median of the per-pair ratios (2.0, 4.0, 1.0 -> 2.0), not a ratio of
    medians (200/100 would also be 2.0 here, so the range shows it is paired: 1.0-4.0)."""
    ours = [_run("ours", tokens_per_s=t) for t in (200.0, 400.0, 100.0)]
    trl = [_run("trl") for _ in range(3)]
    samples = _samples(ours, trl)
    assert harness.same_work(samples, "m", "d", loss_rel=1e-4, loss_abs=1e-4) == []
    row = harness.print_ratio_row(samples, "m", "d", 1.5, 1.0, [])
    assert row["verdict"] == "PASS"
    assert row["speed"]["values"] == [2.0, 4.0, 1.0] and row["speed"]["median"] == 2.0
    assert (row["speed"]["min"], row["speed"]["max"]) == (1.0, 4.0)
    row = harness.print_ratio_row(samples, "m", "d", 2.5, 1.0, [])
    assert row["verdict"] == "MISS (speed)"


@pytest.mark.parametrize("field,value,why", [
    ("optimizer", "AdamW(unfused)", "optimizer"),
    ("dtype", "bfloat16", "dtype differs"),
    ("threads", 1, "threads differs"),
    ("trainable_params", 90, "trainable_params differs"),
    ("checkpointing", True, "checkpointing differs"),
    ("rows_kept", 15, "rows_kept differs"),
    ("tokens_seen", 599, "tokens_seen differs"),
    ("first_loss", 0.70, "first-step loss"),
    ("first_grad_norm", 2.5, "gradient norm"),
])
def test_any_difference_in_the_work_is_a_failure_without_a_ratio(field, value, why, capsys):
    samples = _samples([_run("ours")], [_run("trl", **{field: value})])
    problems = harness.same_work(samples, "m", "d", loss_rel=1e-4, loss_abs=1e-4)
    assert any(why in p for p in problems), problems
    row = harness.print_ratio_row(samples, "m", "d", 1.5, 1.0, problems)
    line = capsys.readouterr().out
    assert row["verdict"] == "UNEQUAL" and "speed" not in row
    assert "FAIL" in line and "x " not in line.split("FAIL")[1].split(":")[0]  # no ratio printed


def test_unfused_on_both_sides_is_still_a_failure():
    """Equal but not the stated optimizer: the method says fused AdamW on both sides."""
    samples = _samples([_run("ours", optimizer="AdamW(unfused)")], [_run("trl", optimizer="AdamW(unfused)")])
    assert any("not fused" in p for p in harness.same_work(samples, "m", "d", loss_rel=1e-4, loss_abs=1e-4))


def test_a_count_only_one_side_reports_is_not_compared():
    samples = _samples([_run("ours", tokens_seen=None)], [_run("trl")])
    assert harness.same_work(samples, "m", "d", loss_rel=1e-4, loss_abs=1e-4) == []


def test_finish_exits_non_zero_on_unequal_work_and_writes_everything(tmp_path, capsys):
    class Args:
        json = str(tmp_path / "r.json")
        worker = False

    samples = _samples([_run("ours")], [_run("trl")])
    rows = [{"model": "m", "shape": "d", "verdict": "UNEQUAL", "problems": ["dtype differs"]}]
    assert harness.finish(Args(), "sft", samples, rows, {"torch": "x"}, "targets") == 1
    assert "OVERALL: FAIL" in capsys.readouterr().out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["benchmark"] == "sft" and record["rows"] == rows and len(record["samples"]) == 2
    assert record["samples"][0]["key"] == ["m", "d", "ours"] and record["machine"]["cpu_count"] >= 1
    rows = [{"model": "m", "shape": "d", "verdict": "MISS (speed)", "problems": []}]
    assert harness.finish(Args(), "sft", samples, rows, {}, "targets") == 0  # a missed target is a result


def test_the_doc_tables_are_generated_from_the_committed_results():
    """docs/benchmarks.md's, docs/rl.md's and docs/safety.md's tables are exactly what benchmarks/tables.py makes
    of benchmarks/results/."""
    rl, safety = (os.path.join(tables.REPO, "docs", name) for name in ("rl.md", "safety.md"))
    for doc, least in ((tables.DOC, 5), (rl, 2), (safety, 1)):
        proc = subprocess.run([sys.executable, os.path.join(BENCH, "tables.py"), "--check", "--doc", doc],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(doc) as f:
            assert len(tables.BLOCK.findall(f.read())) >= least, doc


def test_the_smoke_suite_runs_the_comparisons_on_equal_work(tmp_path):
    """The TRL comparisons whose checks go beyond the shared ones (the reward model's pad, DPO's log-probs and
    step-2 loss, GRPO's objective) on the tiny model, once, through the suite runner: each exits 0, its sides
    did the same work (no UNEQUAL row), and the results file holds every raw sample with what was checked.
    (sft.py uses only the shared checks, unit-tested above; `--suite smoke` runs it too, not here, to keep the
    test suite short.)"""
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--suite", "smoke", "--only",
                           "reward_model", "dpo", "grpo", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["benchmarks"]) == {"reward_model", "dpo", "grpo"}
    for name, entry in record["benchmarks"].items():
        result = entry["result"]
        assert entry["exit_code"] == 0 and result["rows"], name
        assert all(r["verdict"] != "UNEQUAL" for r in result["rows"]), (name, result["rows"])
        assert {s["optimizer"] for s in result["samples"]} == {"AdamW(fused)"}, name
        assert {s["side"] for s in result["samples"]} == {"ours", "trl"}, name
    grpo = [s for s in record["benchmarks"]["grpo"]["result"]["samples"] if s["side"] == "trl"][0]["objective"]
    assert grpo["advantages_diff"] <= 1e-5 and abs(grpo["loss_ours"] - grpo["loss_trl"]) <= 1e-5


def test_the_demo_tools_table_is_generated_from_the_committed_results():
    """docs/agents.md's demo-tools table is exactly what benchmarks/demo_tools.py makes of the newest
    benchmarks/results/*-demo-tools.json (three seeds)."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "demo_tools.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = sorted(glob.glob(os.path.join(BENCH, "results", "*-demo-tools.json")))[-1]
    with open(path) as f:
        assert sorted(run["seed"] for run in json.load(f)["runs"]) == [0, 1, 2]
