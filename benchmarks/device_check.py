"""Checks that need a GPU: device/dtype auto-selection, log-prob equivalence and memory on CUDA, generation.

Run on a machine with a GPU: `python benchmarks/device_check.py`. Prints one line per check and exits 1
if any fails. Not part of `make test` (CI has no GPU).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402

from alignkit.data.collate import collate  # noqa: E402
from alignkit.data.tokenize import tokenize_example  # noqa: E402
from alignkit.models.load import load_policy, load_tokenizer, resolve_device, resolve_dtype  # noqa: E402
from alignkit.ops.logprobs import linear_log_probs, sequence_logps, sequence_logps_naive  # noqa: E402
from alignkit.rollout.generate import SamplingSettings, generate  # noqa: E402

failures = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)
    if not ok:
        failures.append(name)


def main() -> int:
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    device = resolve_device("auto")
    check("auto device is cuda", device.type == "cuda", str(device))
    check("auto dtype is bfloat16 on cuda", resolve_dtype("auto", device) == torch.bfloat16)

    tokenizer = load_tokenizer("embedded:tiny")
    rows = [("Hello there", "General Kenobi"), ("What is 2+2?", "4, of course."),
            ([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello, friend"}])]
    batch = collate([tokenize_example(tokenizer, p, c) for p, c in rows], tokenizer.pad_token_id)
    batch = {k: v.cuda() for k, v in batch.items()}
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        model = load_policy("embedded:tiny", dtype=dtype, device="cuda")
        fast, naive = sequence_logps(model, batch), sequence_logps_naive(model, batch)
        err = (fast.token_logps - naive.token_logps).abs().max().item()
        check(f"sequence_logps == naive on cuda {dtype}", err < tol, f"max abs err {err:.2e}")
        fast.sum.sum().backward()
        g_fast = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        naive.sum.sum().backward()
        rel = max(((a - p.grad).norm() / p.grad.norm().clamp(min=1e-12)).item()
                  for a, p in zip(g_fast, model.parameters()))
        check(f"gradients match naive on cuda {dtype}", rel < (1e-4 if dtype == torch.float32 else 5e-2),
              f"max rel err {rel:.2e}")

    # memory at SmolLM2's shapes, forward + backward, trainable head
    n, h, v = 8 * 1024, 576, 49152
    for name, fn in (("naive", None), ("chunked", linear_log_probs)):
        torch.cuda.empty_cache()
        hidden = torch.randn(n, h, device="cuda", requires_grad=True)
        weight = (torch.randn(v, h, device="cuda") * 0.02).requires_grad_()
        labels = torch.randint(0, v, (n,), device="cuda")
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if fn is None:
                out = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, labels[:, None]).squeeze(-1)
            else:
                out = fn(hidden, weight, None, labels)
            out.sum().backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            hidden.grad = weight.grad = None
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(f"      {name:8s} fwd+bwd N={n} V={v}: peak extra {peak:8.1f} MiB, "
              f"median step {sorted(times[1:])[1] * 1e3:.1f} ms")
        if fn is None:
            naive_peak, naive_time = peak, sorted(times[1:])[1]
        else:
            check("chunked peak <= 25% of naive on cuda", peak <= 0.25 * naive_peak,
                  f"{peak / naive_peak:.1%} of naive")
            check("chunked time <= 1.2x naive on cuda", sorted(times[1:])[1] <= 1.2 * naive_time,
                  f"{sorted(times[1:])[1] / naive_time:.2f}x naive")
        del hidden, weight, labels

    model = load_policy("embedded:tiny", device="auto")
    gens = generate(model, load_tokenizer("embedded:tiny", padding_side="left"), [r[0] for r in rows],
                    SamplingSettings(max_new_tokens=8, temperature=0), progress=False)
    check("generate on cuda returns one response per prompt", all(len(g) == 1 for g in gens),
          repr([g[0].completion[:20] for g in gens]))
    # SFT end to end on the GPU (bfloat16 by auto), padding-free batches through CUDA attention kernels
    import tempfile

    from alignkit.config import build_config
    from alignkit.data.collate import collate_masked, collate_padding_free
    from alignkit.methods.sft import SFTConfig, sft_loss, tokenize_sft, train_sft

    examples, _ = tokenize_sft(tokenizer, [{"prompt": p, "completion": c} for p, c in rows[:2]], 64)
    for dtype in (torch.float32, torch.bfloat16):
        model = load_policy("embedded:tiny", dtype=dtype, device="cuda")
        padded = {k: v.cuda() for k, v in collate_masked(examples, tokenizer.pad_token_id).items()}
        flat = {k: v.cuda() for k, v in collate_padding_free(examples, tokenizer.pad_token_id).items()}
        a, b = sft_loss(model, padded)[0].item(), sft_loss(model, flat)[0].item()
        check(f"padding-free loss == padded loss on cuda {dtype}", abs(a - b) <= 2e-2 * abs(a), f"{a:.4f} vs {b:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(SFTConfig, {"model_name_or_path": "embedded:tiny", "dataset_name": "builtin:sft.jsonl",
                                          "eval_dataset_name": "builtin:sft_eval.jsonl", "output_dir": tmp,
                                          "max_steps": 40, "learning_rate": 3e-3, "progress": False,
                                          "per_device_train_batch_size": 8, "max_length": 256})
        t = time.perf_counter()
        result = train_sft(config)
        check("sft on cuda finishes and learns", result.steps == 40 and result.eval_metrics["eval/loss"] < 5.5,
              f"eval/loss {result.eval_metrics['eval/loss']:.3f} in {time.perf_counter() - t:.1f} s, "
              f"{result.last_metrics['tokens_per_s']:.0f} tok/s")
    print("FAILED:", failures if failures else "none")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
