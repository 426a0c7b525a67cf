"""benchmarks/gpu_compare.sh / gpu_compare.py: the CUDA gate, a whole --tiny --allow-cpu run on CPU (both sides of all
four methods doing the same work), and a FAIL with no ratio when the sides differ. No timing is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_compare  # noqa: E402


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHON=sys.executable,
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda():
    for cmd in (["bash", "benchmarks/gpu_compare.sh"], [sys.executable, "benchmarks/gpu_compare.py"]):
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--allow-cpu" in lines[0]
        assert proc.stdout == ""


def test_tiny_cpu_run_compares_equal_work(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_compare.sh", "--tiny", "--allow-cpu", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "targets apply on GPU only" in proc.stdout and "FAIL" not in proc.stdout
    doc = json.loads(out.read_text())
    for key in ("device", "torch", "transformers", "trl", "cuda"):
        assert key in doc["machine"]
    assert doc["settings"]["tiny"] and doc["settings"]["dtype"] == "float32" and not doc["errors"]
    assert {(r["method"], r["side"]) for r in doc["runs"]} == {(m, s) for m in gpu_compare.METHODS
                                                              for s in gpu_compare.SIDES}
    assert [r["method"] for r in doc["rows"]] == list(gpu_compare.METHODS)
    for row in doc["rows"]:
        ours, trl = row["ours"], row["trl"]
        assert row["problems"] == [] and row["ratio"] > 0 and row["target"] is None
        assert ours["mfu"] is None and trl["mfu"] is None  # no MFU on CPU
        for key in gpu_compare.FIRST_KEYS[row["method"]]:
            assert ours["first"][key] == pytest.approx(trl["first"][key], rel=2e-3, abs=1e-3)
        if row["method"] == "grpo":  # prompt tokens exactly; completions are sampled
            assert (ours["real_tokens_all"] - ours["trained_tokens_all"]
                    == trl["real_tokens_all"] - trl["trained_tokens_all"])
        else:
            assert ours["real_tokens_all"] == trl["real_tokens_all"] > 0
            assert ours["trained_tokens_all"] == trl["trained_tokens_all"] > 0
    sft = next(r for r in doc["runs"] if r["method"] == "sft" and r["side"] == "trl")
    assert sft["trl_padding_free"] is True


def _run(side: str, first: dict, real: int = 100, trained: int = 50, tokens_per_s: float = 1000.0) -> dict:
    return {"side": side, "first": first, "real_tokens_all": real, "trained_tokens_all": trained,
            "tokens_per_s": tokens_per_s, "time_s": 1.0, "ref_tokens": 0, "params": 10, "peak_bytes": 2**20}


def test_unequal_work_prints_fail_without_ratio(capsys):
    runs = {"ours": [_run("ours", {"loss": 2.50}, trained=49)], "trl": [_run("trl", {"loss": 2.00})]}
    row = gpu_compare.summarize("sft", runs, "float32", on_gpu=False, peak=None, memory=None)
    assert row["ratio"] is None and len(row["problems"]) == 2
    assert gpu_compare.report([row], on_gpu=False) == 1
    printed = capsys.readouterr().out
    assert "FAIL: first-step loss differs: ours 2.5, TRL 2" in printed
    assert "trained tokens differ: ours 49, TRL 50" in printed
    assert "ours/TRL" not in printed


def test_equal_work_gets_ratio_and_gpu_target(capsys):
    runs = {"ours": [_run("ours", {"loss": 2.0001}, tokens_per_s=1400.0)], "trl": [_run("trl", {"loss": 2.0})]}
    row = gpu_compare.summarize("sft", runs, "bfloat16", on_gpu=True, peak=1e4, memory=2**30)
    assert row["problems"] == [] and row["ratio"] == pytest.approx(1.4)
    assert row["ours"]["mfu"] == pytest.approx(100 * 1400 * 6 * 10 / 1e4)
    assert row["target"] == {"speed": 1.2, "mfu": 30.0, "pass": True}
    assert gpu_compare.report([row], on_gpu=True) == 0
    assert "ours/TRL 1.40x" in capsys.readouterr().out


def test_grpo_checks_prompt_tokens_exactly_and_completions_loosely():
    ours, trl = _run("ours", {"loss": 0.0}, real=1000, trained=500), _run("trl", {"loss": 0.0}, real=1005, trained=505)
    assert gpu_compare.check("grpo", ours, trl, "float32") == []  # 1% more completion tokens: sampled
    trl["real_tokens_all"] += 1
    assert gpu_compare.check("grpo", ours, trl, "float32") == ["prompt tokens differ: ours 500, TRL 501"]


def test_missing_trl_dependencies_named_with_the_wheels_recipe(monkeypatch):
    import importlib.metadata as md

    real = md.requires

    def requires(name):
        if name in ("datasets", "xxhash"):
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "requires", requires)
    missing = gpu_compare.missing_for_trl()
    assert missing == ["datasets"]  # xxhash is only reached through datasets
    hint = gpu_compare.wheels_hint(["trl", "datasets"])
    assert "missing: trl, datasets" in hint
    assert "pip download --no-deps trl==1.16.0 datasets -d wheels/" in hint
    assert "pip install --no-index --find-links wheels/ trl==1.16.0 datasets" in hint
