"""GPU check: DPO and GRPO on a 0.5B-class model, and generation with HF generate, our sampler and vLLM.

Run through `benchmarks/gpu_check.sh`, which refuses to start without a CUDA GPU. The model is random-
initialised from a config (Qwen2.5-0.5B's shape with the embedded SmolLM2 tokenizer's 49,152-token
vocabulary: 0.40B parameters), so no weights need downloading: throughput and memory do not depend on
what the weights are. Prints one line per measurement and writes them all to `--out` as JSON.

MFU = model FLOPs per second / the chip's dense bf16 peak. Model FLOPs per token: 2N forward and 4N
backward for each trained token (N = parameters), 2N for each token the frozen reference scores, plus
attention (12 · layers · hidden · context per token for forward + backward), as in the PaLM appendix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

# dense bf16 peak by device name (vendor datasheets, SXM parts); the first match wins
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12))
SHAPE_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, max_position_embeddings=4096, tie_word_embeddings=True)
SHAPE_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=1024, tie_word_embeddings=True)

results: dict[str, float | str] = {}


def record(name: str, value, unit: str = "") -> None:
    results[name] = value
    shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
    print(f"{name:<44} {shown} {unit}", flush=True)


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def build_model(tokenizer_src: str, out: Path, shape: dict) -> tuple[Path, int]:
    """A random-initialised Llama-architecture checkpoint with the given tokenizer, saved as safetensors."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignkit.models.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_src) if tokenizer_src.startswith("embedded:") else \
        AutoTokenizer.from_pretrained(tokenizer_src)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         rope_theta=1e6, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def words(n: int, seed: int) -> str:
    import random

    vocab = ("the model answers each question with care and explains why a careful reply helps people "
             "learn more about safety data training").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) for _ in range(n))


def steady(path: Path, key: str, skip: int) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    values = [r[key] for r in rows if key in r]
    values = values[min(skip, len(values) // 2):]  # warm-up steps out; short runs keep their second half
    return statistics.median(values) if values else float("nan")


def run_dpo(model_dir: Path, n_params: int, cfg, work: Path, steps: int, batch: int) -> None:
    from alignkit.config import build_config
    from alignkit.data.io import write_jsonl
    from alignkit.methods.dpo import DPOConfig, train_dpo

    rows = [{"prompt": words(120, i), "chosen": words(200, 10_000 + i), "rejected": words(180, 20_000 + i)}
            for i in range(batch * (steps + 2))]
    data = work / "pairs.jsonl"
    write_jsonl(data, rows)
    out = work / "dpo"
    config = build_config(DPOConfig, {
        "model_name_or_path": str(model_dir), "dataset_name": str(data), "per_device_train_batch_size": batch,
        "max_steps": steps, "logging_steps": 1, "learning_rate": 1e-6, "output_dir": str(out),
        "progress": False, "save_steps": 0, "max_length": 1024, "ref": "copy"})
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_dpo(config)
    record("dpo: wall seconds", time.perf_counter() - started, "s")
    tokens_per_s = steady(out / "metrics.jsonl", "tokens_per_s", skip=3)
    record("dpo: tokens/s (policy, non-pad)", tokens_per_s)
    record("dpo: peak GPU memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")
    # each token: policy forward + backward (6N) and a reference forward (2N); attention at ~500-token rows
    flops = tokens_per_s * (8 * n_params + 16 * cfg.num_hidden_layers * cfg.hidden_size * 500)
    peak = peak_flops()
    if peak:
        record("dpo: MFU", 100 * flops / peak, "%")


def run_grpo(model_dir: Path, n_params: int, cfg, work: Path, steps: int, use_vllm: bool) -> None:
    from alignkit.config import build_config
    from alignkit.methods.grpo import GRPOConfig, train_grpo

    name = "grpo+vllm" if use_vllm else "grpo"
    out = work / name
    config = build_config(GRPOConfig, {
        "model_name_or_path": str(model_dir), "dataset_name": "builtin:helpful.jsonl",
        "reward_funcs": "max_words:40", "num_generations": 8, "per_device_train_batch_size": 64,
        "max_completion_length": 128, "max_steps": steps, "logging_steps": 1, "output_dir": str(out),
        "progress": False, "save_steps": 0, "temperature": 1.0, "use_vllm": use_vllm,
        "vllm_gpu_memory_utilization": 0.3})
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_grpo(config)
    seconds = time.perf_counter() - started
    record(f"{name}: wall seconds", seconds, "s")
    metrics = out / "metrics.jsonl"
    record(f"{name}: tokens/s (prompt + completion)", steady(metrics, "tokens_per_s", skip=2))
    record(f"{name}: step time", steady(metrics, "step_time", skip=2), "s")
    record(f"{name}: peak GPU memory (torch allocator)", torch.cuda.max_memory_allocated() / 2**30, "GiB")


def run_launched(model_dir: Path, work: Path, config_name: str, steps: int) -> None:
    """DPO through `alignkit dpo --num_processes 1 --accelerate_config NAME`: the accelerate-launch path
    (FSDP2 wraps the model even on one GPU), then --resume of the same run from its step-4 checkpoint."""
    import subprocess

    data, out = work / "pairs.jsonl", work / f"launch-{config_name}"
    args = [sys.executable, "-m", "alignkit.cli", "dpo", "--model", str(model_dir), "--data", str(data),
            "--per_device_train_batch_size", "8", "--max_length", "1024", "--logging_steps", "1",
            "--save_steps", "4", "--progress", "false", "--output_dir", str(out), "--num_processes", "1",
            "--accelerate_config", config_name]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    first = subprocess.run([*args, "--max_steps", str(steps)], env=env, capture_output=True, text=True)
    if first.returncode != 0:
        record(f"launch {config_name}", f"FAILED: {(first.stderr or first.stdout).strip().splitlines()[-1:]}")
        return
    record(f"launch {config_name}: dpo tokens/s", steady(out / "metrics.jsonl", "tokens_per_s", skip=2))
    # resume: drop the final checkpoint so `latest` is step 4, then continue to the same max_steps
    import shutil

    for path in sorted((out / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(path)
    (out / "checkpoints" / "latest").write_text("step-000004")
    again = subprocess.run([*args, "--max_steps", str(steps), "--resume"], env=env, capture_output=True, text=True)
    record(f"launch {config_name}: resume", "ok" if again.returncode == 0 else
           f"FAILED: {(again.stderr or again.stdout).strip().splitlines()[-1:]}")


def run_generation(model_dir: Path, n_prompts: int, new_tokens: int) -> None:
    """The same prompts, sampled at temperature 1 with the same token budget, by three engines."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.rollout.generate import SamplingSettings, generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [words(60, 50_000 + i) for i in range(n_prompts)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    for timed in (False, True):  # the first pass warms up kernels and the allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        torch.cuda.synchronize()
    made = (out.shape[1] - batch["input_ids"].shape[1]) * n_prompts
    record("generate: HF generate tokens/s", made / (time.perf_counter() - started))

    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0, batch_size=n_prompts)
    for timed in (False, True):
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            groups = generate(model, tokenizer, prompts, settings, progress=False)
        torch.cuda.synchronize()
    made = sum(len(g.completion_ids) for group in groups for g in group)
    record("generate: alignkit sampler tokens/s", made / (time.perf_counter() - started))
    del model
    torch.cuda.empty_cache()

    try:
        import vllm
    except ImportError:
        record("generate: vLLM", "not installed (pip install 'alignkit[vllm]'); skipped")
        return
    llm = vllm.LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.4, seed=0)
    params = vllm.SamplingParams(temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens)
    llm.generate(prompts[:4], params)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    made = sum(len(o.outputs[0].token_ids) for o in outputs)
    record("generate: vLLM tokens/s", made / (time.perf_counter() - started))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="embedded:smollm2-135m-instruct",
                        help="tokenizer for the random model: embedded:NAME or a local directory")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps (checks the script)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (only with --tiny)")
    parser.add_argument("--out", default="gpu_check.json", help="where to write the measurements")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not (args.allow_cpu and args.tiny):
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); this check needs one",
              file=sys.stderr)
        return 2
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # the script's own check on CPU: CUDA calls become no-ops
        torch.cuda.synchronize = torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
        torch.cuda.max_memory_allocated = lambda *a, **k: 0
    else:
        record("device", torch.cuda.get_device_name())
        record("torch", torch.__version__)
    work = Path(tempfile.mkdtemp(prefix="alignkit-gpu-check-"))
    try:
        shape = SHAPE_TINY if args.tiny else SHAPE_05B
        model_dir, n_params = build_model(args.tokenizer, work / "model", shape)
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_dir)
        record("model parameters", n_params / 1e9, "B")
        steps = 3 if args.tiny else 20
        run_dpo(model_dir, n_params, cfg, work, steps=steps, batch=2 if args.tiny else 16)
        for name in ("ddp", "fsdp"):
            run_launched(model_dir, work, name, steps=6 if args.tiny else 12)
        run_grpo(model_dir, n_params, cfg, work, steps=2 if args.tiny else 6, use_vllm=False)
        run_generation(model_dir, n_prompts=64 if on_gpu else 4, new_tokens=128 if on_gpu else 8)
        if on_gpu:
            try:
                import vllm  # noqa: F401
                run_grpo(model_dir, n_params, cfg, work, steps=6, use_vllm=True)
            except ImportError:
                record("grpo+vllm", "vLLM not installed; skipped")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
