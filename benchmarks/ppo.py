"""PPO memory by layout: the four-model layout (full policy, frozen reference copy, separate value model, reward
model) against the one-model layout (LoRA policy, the reference is the adapter switched off, the value head
shares the policy's trunk; plus the same reward model), on the same model, prompts, reward and settings.

Each layout runs `alignkit.methods.ppo.train_ppo` for --updates updates in a fresh subprocess (this script
re-invoked with --worker) and reports its peak RSS (VmHWM: weights, gradients, AdamW state and activations
of everything loaded, up to the end of the last update: the final save, which merges a LoRA policy into a
copy, is not counted) and its seconds per update. Target: one-model ≤ 0.5× the four-model peak memory.

There is no TRL side: TRL 1.16 (the release measured against) ships no PPO trainer, in `trl` or in
`trl.experimental`, so the issue's "TRL's PPO where present" does not apply; GRPO is compared with TRL's
GRPOTrainer in benchmarks/grpo.py.

    python benchmarks/ppo.py                                   # SmolLM2, the demo's reward model if present
    python benchmarks/ppo.py --model embedded:tiny --reward rules
    python benchmarks/ppo.py --reward rm:runs/demo/reward_model/model --updates 2 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RM = os.path.join(REPO, "runs", "demo", "reward_model", "model")
LAYOUTS = ("four_model", "one_model")
TARGET_MEMORY = 0.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--reward", default=None,
                   help="reward spec (default: rm:runs/demo/reward_model/model when the demo has run, else rules)")
    p.add_argument("--prompts", default="builtin:helpful.jsonl")
    p.add_argument("--batch", type=int, default=8, help="prompts per rollout")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--updates", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from alignkit.config import build_config
    from alignkit.methods.ppo import PPOConfig, train_ppo
    from alignkit.models.embedded import ensure

    values = {"model_name_or_path": args.model, "dataset_name": args.prompts, "reward_funcs": args.reward,
              "per_device_train_batch_size": args.batch, "max_completion_length": args.max_completion_length,
              "max_steps": args.updates, "num_ppo_epochs": 1, "num_mini_batches": 1, "output_dir": args.out,
              "progress": False, "device": "cpu", "dtype": "float32", "save_steps": 0}
    if args.worker == "four_model":
        value_path = args.reward[3:] if args.reward.startswith("rm:") and "," not in args.reward else (
            str(ensure(args.model)) if args.model.startswith("embedded:") else args.model)
        values.update(ref="copy", value_model=value_path)
    else:
        values.update(use_peft=True, lora_dropout=0.0, ref="adapter", value_model="shared")
    import alignkit.engine.outputs as outputs

    peaks = {}
    real_save = outputs.save_final_model

    def save_final_model(*a, **k):  # the peak of training, before the final save (LoRA merges a copy there)
        peaks["training"] = peak_rss_mib()
        return real_save(*a, **k)

    outputs.save_final_model = save_final_model
    started = time.perf_counter()
    result = train_ppo(build_config(PPOConfig, values))
    return {"layout": args.worker, "peak_rss_mib": peaks["training"],
            "seconds_per_update": (time.perf_counter() - started) / max(result.steps, 1),
            "score": result.last_metrics.get("objective/scores")}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reward is None:
        args.reward = f"rm:{DEMO_RM}" if os.path.isdir(DEMO_RM) else "rules"
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = {}
    for layout in LAYOUTS:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, os.path.abspath(__file__), "--worker", layout, "--out", out,
                       "--model", args.model, "--reward", args.reward, "--prompts", args.prompts,
                       "--batch", str(args.batch), "--max-completion-length", str(args.max_completion_length),
                       "--updates", str(args.updates), "--threads", str(args.threads)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.path.join(REPO, "src")}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(f"{layout}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows[layout] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"PPO layouts: {args.model}, reward {args.reward}, {args.batch} prompts x {args.max_completion_length} "
          f"tokens, {args.updates} update(s), {args.threads} threads")
    print(f"{'layout':<12}{'peak RSS MiB':>14}{'s/update':>10}")
    for layout, row in rows.items():
        print(f"{layout:<12}{row['peak_rss_mib']:>14.0f}{row['seconds_per_update']:>10.1f}")
    ratio = rows["one_model"]["peak_rss_mib"] / rows["four_model"]["peak_rss_mib"]
    verdict = "PASS" if ratio <= TARGET_MEMORY else "FAIL"
    print(f"one-model / four-model peak memory: {ratio:.2f}x (target <= {TARGET_MEMORY}x) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
