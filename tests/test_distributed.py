"""Training on several processes: 2 CPU processes over gloo, launched the way users launch them
(`alignkit <method> --num_processes 2 --accelerate_config NAME`, which re-runs the command under
`accelerate launch`).

A 2-process run with per_device_train_batch_size 2 sees exactly the global batches of a 1-process run with
per_device_train_batch_size 4 (the engine reads one seeded stream and gives each rank its slice), and the
loss is normalised over the global batch, so both runs follow the same trajectory. They differ only in
float32 rounding: the gradient is summed in two halves and all-reduced instead of in one pass. Tolerance:
weights within 2e-4 after 4 AdamW steps at lr 1e-3. Measured: 5.0e-5 (SFT) and 1.8e-5 (DPO) for 1 vs 2
processes, and FSDP equal to DDP to 1e-7; AdamW divides by the root of the squared-gradient average, which
magnifies rounding on near-zero gradients, while a wrong split, a per-rank normalisation or a missed reduction
moves weights by about 1e-3, the size of one step. Losses and metrics within 1e-4 relative (measured 1e-6).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alignkit
from alignkit.config import build_config
from alignkit.engine.runlog import read_metrics

SRC = str(Path(alignkit.__file__).resolve().parents[1])
COMMON = ["--model", "embedded:tiny", "--max_steps", "4", "--learning_rate", "1e-3", "--progress", "false",
          "--seed", "5"]
METRIC_KEYS = {"sft": ("loss", "mean_token_logp"),
               "dpo": ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen")}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", *args], capture_output=True, text=True,
                          env=env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_marker_pairs):
    root = tmp_path_factory.mktemp("data")
    rows = make_marker_pairs(40)
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                                            for r in rows if r["split"] == "train"))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """Each method once on 1 process (in this process) and on 2 (DDP and FSDP); DDP DPO keeps a checkpoint at
    step 2 for the resume test."""
    from alignkit.methods.dpo import DPOConfig, train_dpo
    from alignkit.methods.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method, cls, train, file in (("sft", SFTConfig, train_sft, "sft.jsonl"),
                                     ("dpo", DPOConfig, train_dpo, "pairs.jsonl")):
        single = root / f"{method}-single"
        train(build_config(cls, {"model_name_or_path": "embedded:tiny", "dataset_name": str(data / file),
                                 "output_dir": str(single), "max_steps": 4, "learning_rate": 1e-3, "seed": 5,
                                 "progress": False, "per_device_train_batch_size": 4, "device": "cpu"}))
        out[method, "single"] = single
        for strategy in ("ddp", "fsdp"):
            path = root / f"{method}-{strategy}"
            extra = ["--save_steps", "2", "--save_total_limit", "0"] if (method, strategy) == ("dpo", "ddp") else []
            run_cli([method, *COMMON, "--data", str(data / file), "--output_dir", str(path),
                     "--per_device_train_batch_size", "2", "--num_processes", "2", "--accelerate_config", strategy,
                     *extra])
            out[method, strategy] = path
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


@pytest.mark.parametrize("method", ["sft", "dpo"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_weights(runs, method, strategy):
    single, multi = weights(runs[method, "single"]), weights(runs[method, strategy])
    start = weights_of_start()
    assert set(multi) >= set(single) - {"lm_head.weight"}
    moved = max((single[k] - start[k]).abs().max().item() for k in single if k in start)
    assert moved > 1e-3  # training moved the weights well beyond the tolerance
    for name, value in single.items():
        if name in multi:
            torch.testing.assert_close(multi[name], value, atol=2e-4, rtol=0)


def weights_of_start() -> dict[str, torch.Tensor]:
    from alignkit.models.load import load_policy

    return {k: v.detach() for k, v in load_policy("embedded:tiny", device="cpu").state_dict().items()}


@pytest.mark.parametrize("method", ["sft", "dpo"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_metrics_are_reduced_over_ranks_and_written_once(runs, method, strategy):
    single = [r for r in read_metrics(runs[method, "single"] / "metrics.jsonl") if "loss" in r]
    multi = [r for r in read_metrics(runs[method, strategy] / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in multi] == [1, 2, 3, 4]  # one writer: no step twice
    for a, b in zip(single, multi):
        for key in METRIC_KEYS[method]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
        assert b["num_tokens"] == a["num_tokens"]  # both ranks' tokens counted


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_files_are_written_once_and_complete(runs, strategy):
    run = runs["dpo", strategy]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert (run / "config.yaml").exists() and (run / "report.html").exists()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in names if n.startswith(".tmp")]  # no half-written (or second writer's) checkpoint
    assert not [p for p in run.rglob(".*tmp*")]


def test_resume_under_ddp_is_bit_identical(runs, data, tmp_path):
    """Cut the uninterrupted 2-process run back to its step-2 checkpoint, resume on 2 processes: the final
    weights are bit-identical (same batches, same reduction order, optimizer and RNG states restored)."""
    straight = runs["dpo", "ddp"]
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    shutil.rmtree(cut / "model")
    (cut / "checkpoints" / "latest").write_text("step-000002\n")
    run_cli(["dpo", *COMMON, "--data", str(data / "pairs.jsonl"), "--output_dir", str(cut),
             "--per_device_train_batch_size", "2", "--save_steps", "2", "--save_total_limit", "0", "--resume",
             "--num_processes", "2"])
    resumed, original = weights(cut), weights(straight)
    assert resumed.keys() == original.keys()
    assert all(torch.equal(resumed[k], original[k]) for k in original)
    assert [r["loss"] for r in read_metrics(cut / "metrics.jsonl") if "loss" in r] == \
        [r["loss"] for r in read_metrics(straight / "metrics.jsonl") if "loss" in r]


def test_a_two_process_checkpoint_resumes_in_one_process(runs, data, tmp_path):
    """Checkpoints hold full weights and a name-keyed optimizer state, so another world size can continue
    them (with its own global batch from the saved data position: not the 2-process trajectory)."""
    from alignkit.engine import checkpoint as ckpt
    from alignkit.methods.dpo import DPOConfig, train_dpo

    cut = tmp_path / "cut"
    shutil.copytree(runs["dpo", "ddp"], cut)
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    (cut / "checkpoints" / "latest").write_text("step-000002\n")
    state = ckpt.load_state(cut / "checkpoints" / "step-000002")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])  # keyed by parameter name
    result = train_dpo(build_config(DPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": str(data / "pairs.jsonl"), "output_dir": str(cut),
        "max_steps": 4, "learning_rate": 1e-3, "seed": 5, "progress": False, "per_device_train_batch_size": 2,
        "device": "cpu", "resume": True}))
    assert result.steps == 4
    assert [r["step"] for r in read_metrics(cut / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_gradients_are_equal_on_every_rank(tmp_path):
    from alignkit.engine.launch import config_path, free_port

    out = tmp_path / "grads.json"
    worker = Path(__file__).with_name("dist_grad_worker.py")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(config_path("ddp")), "--num_processes", "2", "--main_process_port", str(free_port()),
                           str(worker), str(out), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = json.loads(out.read_text())
    assert len(rank0) == len(rank1) == 2  # two optimizer steps on each rank
    for g0, g1 in zip(rank0, rank1):
        assert any(abs(v) > 0 for v in g0)
        assert g0 == g1  # after the all-reduce every rank applies the same update, bit for bit


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install 'alignkit[deepspeed]')")


@needs_deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_runs_dpo_on_two_cpu_processes(tmp_path, data, runs, stage):
    """ZeRO-2/3 on 2 CPU processes with DeepSpeed's compiled ops off: the run finishes, writes one metrics row
    per step, and its numbers follow the DDP run (same batches, same loss) within float32 rounding."""
    out = tmp_path / stage
    run_cli(["dpo", *COMMON, "--data", str(data / "pairs.jsonl"), "--output_dir", str(out),
             "--per_device_train_batch_size", "2", "--num_processes", "2", "--accelerate_config", stage])
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ddp = [r for r in read_metrics(runs["dpo", "ddp"] / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ddp], rel=1e-4)
    for name, value in weights(runs["dpo", "ddp"]).items():
        torch.testing.assert_close(weights(out)[name], value, atol=2e-4, rtol=0)


def test_rank_gated_writers_write_nothing_on_other_ranks(tmp_path, monkeypatch, tiny_model, tiny_tokenizer):
    from alignkit.engine.outputs import save_final_model, write_report_quietly, write_status
    from alignkit.engine.runlog import MetricsLog

    monkeypatch.setenv("RANK", "1")
    write_status(tmp_path, "running", "sft")
    assert save_final_model(tiny_model, tiny_tokenizer, tmp_path / "model") is None
    assert write_report_quietly(tmp_path) is None
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_launch_command_strips_its_options_and_finds_packaged_configs():
    from alignkit.engine.launch import config_names, launch_command, strip_options

    assert config_names() == ["ddp", "fsdp", "fsdp_offload", "zero2", "zero3"]
    assert strip_options(["dpo", "--num-processes", "2", "--accelerate_config=fsdp", "--beta", "0.2"]) == \
        ["dpo", "--beta", "0.2"]
    command = launch_command(["sft", "--num_processes", "3", "--data", "x"], 3, "zero3")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "3"
    assert command[command.index("--config_file") + 1].endswith("zero3.yaml")
    assert command[-5:] == ["-m", "alignkit.cli", "sft", "--data", "x"]


def test_unknown_accelerate_config_is_one_line(capsys, tmp_path):
    from alignkit.cli import main

    assert main(["sft", "--data", "x.jsonl", "--num_processes", "2", "--accelerate_config", "nope"]) == 2
    err = capsys.readouterr().err
    assert "accelerate_config: nope: neither a file nor one of ddp, fsdp" in err and "Traceback" not in err
