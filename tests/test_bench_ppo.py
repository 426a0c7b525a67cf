"""benchmarks/ppo.py: every configuration runs and reports both kinds of ratio, and a difference in the work the
configurations did prints FAIL and no ratio. No timing is asserted (the figures depend on the machine)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_ppo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_configuration_and_both_ratios(tmp_path):
    out = tmp_path / "ppo.json"
    # 1 thread: on a busy machine a 2-thread op waits for a descheduled thread at every barrier (slow, not wrong)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "embedded:tiny", "--reward", "rules", "--repeats", "1",
         "--updates", "2", "--batch", "2", "--max-completion-length", "8", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    bench = load_script()
    assert sorted(r["config"] for r in result["runs"]) == sorted(bench.CONFIGS)
    for run in result["runs"]:
        assert len(run["update_times_s"]) == 1 and run["update_times_s"][0] > 0  # update 2; update 1 is warm-up
        assert run["seconds_per_update"] > 0 and run["abs_peak_rss_mib"] >= run["peak_rss_mib"] >= 0
        assert len(run["work"]) == 2 and all(u["prompts"] == u["completions"] == 2 for u in run["work"])
    assert result["equal_work"] == {"ok": True, "problems": []}
    assert result["machine"]["cpu_count"] and result["machine"]["torch"]
    assert result["settings"]["batch"] == 2 and result["settings"]["updates"] == 2
    assert set(result["ratios"]) == {"layout_lora", "tuning_four_model"}
    assert result["target"]["judged_on"].startswith("layout_lora")
    lines = done.stdout.splitlines()
    assert "equal work: PASS" in done.stdout
    assert any(line.startswith("(a) layout at equal tuning, LoRA") and "peak" in line and "x [" in line
               for line in lines)
    assert any(line.startswith("(b) tuning at equal layout, four-model") and "x [" in line for line in lines)
    assert "one_model/full" in done.stdout and "not possible" in done.stdout


def fake_run(config: str, repeat: int = 1) -> dict:
    update = {"prompts": 2, "completions": 2, "prompt_rows_sha256": "ab", "sample_seeds": [7], "generated_tokens": 16,
              "tokens": 124, "score": 2.5}
    return {"config": config, "repeat": repeat, "updates": 2, "update_times_s": [0.1], "seconds_per_update": 0.1,
            "peak_rss_mib": 100.0, "abs_peak_rss_mib": 500.0, "other_load": 0.0, "trainable_parameters": 10,
            "work": [dict(update), dict(update, prompt_rows_sha256="cd", sample_seeds=[8])],
            "settings": {"temperature": 0.7, "max_completion_length": 8}}


def test_different_work_fails_without_a_ratio(tmp_path, capsys):
    bench = load_script()
    args = Namespace(configs=list(bench.CONFIGS), batch=2, updates=2, repeats=1, threads=1, model="embedded:tiny",
                     json=str(tmp_path / "ppo.json"))
    runs = [fake_run(c) for c in bench.CONFIGS]
    assert bench.check_equal_work(args, runs) == []

    mismatches = {"generated_tokens": lambda r: r["work"][0].update(generated_tokens=15),
                  "prompts": lambda r: r["work"][1].update(prompts=1),
                  "completions": lambda r: r["work"][0].update(completions=3),
                  "prompt_rows": lambda r: r["work"][1].update(prompt_rows_sha256="ef"),
                  "settings": lambda r: r["settings"].update(temperature=1.0),
                  "updates": lambda r: r["work"].pop()}
    for name, change in mismatches.items():
        changed = copy.deepcopy(runs)
        change(changed[2])
        assert bench.check_equal_work(args, changed), name
        assert bench.report(args, changed) == 1, name
        printed = capsys.readouterr().out
        assert "FAIL" in printed and "x [" not in printed and "(a)" not in printed, name
        written = json.loads((tmp_path / "ppo.json").read_text())
        assert written["equal_work"]["ok"] is False and "ratios" not in written, name


def test_ratios_pair_runs_of_the_same_repeat(tmp_path, capsys):
    bench = load_script()
    args = Namespace(configs=list(bench.CONFIGS), batch=2, updates=2, repeats=2, threads=1, model="embedded:x",
                     json=str(tmp_path / "ppo.json"))
    runs = [fake_run(c, r) for r in (1, 2) for c in bench.CONFIGS]
    for run, peak in zip(runs, (1000.0, 800.0, 400.0, 1000.0, 900.0, 360.0)):
        run["abs_peak_rss_mib"] = peak
    assert bench.report(args, runs) == 0
    printed = capsys.readouterr().out
    ratios = json.loads((tmp_path / "ppo.json").read_text())["ratios"]
    assert ratios["layout_lora"]["abs_peak_rss_mib"] == pytest.approx({"median": 0.45, "min": 0.4, "max": 0.5, "n": 2})
    assert ratios["tuning_four_model"]["abs_peak_rss_mib"]["median"] == pytest.approx(0.85)
    assert "one_model/lora / four_model/lora 0.45x (target <= 0.5x) PASS" in printed
