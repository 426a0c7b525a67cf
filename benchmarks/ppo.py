"""PPO by layout and by tuning, each effect on its own: the four-model layout (policy, frozen reference copy,
separate value model, reward model) against the one-model layout (LoRA policy, the reference is the adapter
switched off, the value head reads the policy's hidden states; plus the same reward model), and full
fine-tuning against LoRA, on the same model, prompts, reward, seed, batch and generation settings.

Configurations (layout/tuning), each `alignkit.methods.ppo.train_ppo` with these settings:

- four_model/full: ref: copy, value_model: the reward model (or the policy's checkpoint with a rules reward);
- four_model/lora: the same with use_peft (lora_dropout 0); the separate value model is still trained in full
  (our PPO trains a separate value model in full whatever the policy does);
- one_model/lora: use_peft, ref: adapter, value_model: shared.
- one_model/full is not possible: without LoRA there is no adapter to switch off, so the reference has to be a
  copy of the starting weights (PPOConfig refuses ref: adapter without use_peft). It is not measured.

Printed ratios, each of paired runs (repeat k of one configuration against repeat k of the other), median
[min, max]:

(a) layout at equal tuning: one_model/lora ÷ four_model/lora (at full: not possible, see above);
(b) tuning at equal layout: four_model/lora ÷ four_model/full (in the one-model layout: not possible).

The memory target, one-model ≤ 0.5× the four-model peak, is judged on (a), LoRA in both, on the absolute
peak (what the machine must hold). Missing it prints FAIL on the target line; the exit status stays 0.

Method: each configuration runs in a fresh subprocess (this script re-invoked with --worker), offline, on
--threads torch threads (2 by default), float32 on the CPU; --repeats (default 3) runs per configuration, the
order of the configurations reversed every other repeat; --updates (default 3) updates per run. The first
update is a warm-up: the clock starts at its end (after model loading and the first update's one-off
allocations) and stops at the end of the last update, before the checkpoint and the final save (which merges a
LoRA policy into a copy). The engine's on_log hook marks each update's end; `train_ppo` takes no hook, so the
worker wraps `engine.run.train` (in the worker process only) to pass one.

Reported per configuration: seconds per update (median over repeats of each run's mean over its timed
updates), peak RSS over the post-setup baseline (VmHWM reset when the engine loop starts, every model loaded
and its memory-mapped weights read once so they are resident: what training adds, i.e. gradients, AdamW
state, activations, generation caches) and the absolute peak (the same VmHWM: the weights of every model plus
all of that), read at the end of the last update; and the share of the machine's CPUs other processes used
while the updates were timed (--wait-quiet S waits for a quiet machine before each run). On embedded:tiny the
interpreter and libraries (~400 MiB) make up the peak, so only a real model's memory ratios mean anything.

Equal work is checked before any ratio is printed; a difference prints FAIL and exits 1. Checked: every run
did --updates updates of --batch prompts and as many completions, with the same prompt rows and the same
sampling seeds at every update and the same settings apart from the layout and tuning; and, at the first
update only, the same number of generated and of prompt + response tokens and the same mean score (within
1e-5). Only the first update's samples are compared: there every configuration samples from the same starting
weights (a fresh LoRA adds exactly zero) with the same seed; after one update the policies differ (different
training, a different value baseline), so what they sample, and how long it is, differs legitimately.

There is no TRL side: TRL 1.16 (the release measured against) ships no PPO trainer, in `trl` or in
`trl.experimental`; GRPO is compared with TRL's GRPOTrainer in benchmarks/grpo.py. --json PATH writes every
raw figure (per run: configuration, update times, peaks, the work checked) with the machine and settings.

    python benchmarks/ppo.py                                   # SmolLM2, the demo's reward model if present
    python benchmarks/ppo.py --model embedded:tiny --reward rules
    python benchmarks/ppo.py --reward rm:runs/demo/reward_model/model --updates 2 --batch 8 --json ppo.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REPO = harness.REPO
DEMO_RM = os.path.join(REPO, "runs", "demo", "reward_model", "model")
CONFIGS = ("four_model/full", "four_model/lora", "one_model/lora")
IMPOSSIBLE = {"one_model/full": "the one-model layout needs LoRA: without an adapter to switch off, the reference "
                                "must be a copy of the starting weights (ref: adapter needs use_peft)"}
TARGET_MEMORY = 0.5
SCORE_TOLERANCE = 1e-5
# settings that differ between configurations by design; every other PPOConfig field must match
LAYOUT_FIELDS = ("use_peft", "lora_dropout", "ref", "value_model", "output_dir")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--reward", default=None,
                   help="reward spec (default: rm:runs/demo/reward_model/model when the demo has run, else rules)")
    p.add_argument("--prompts", default="builtin:helpful.jsonl")
    p.add_argument("--batch", type=int, default=8, help="prompts per rollout (one update)")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--updates", type=int, default=3,
                   help="updates per run, the first a warm-up (untimed); at least 2")
    p.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per configuration (median)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                   help="configurations to run (layout/tuning)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each run, wait up to this many seconds for the rest of the machine to go quiet")
    p.add_argument("--json", help="write every raw figure, the machine and the settings here")
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.updates < 2:
        p.error("--updates must be at least 2 (the first update is an untimed warm-up)")
    if args.repeats < 1 or args.batch < 1:
        p.error("--repeats and --batch must be at least 1")
    args.configs = [c for c in CONFIGS if c in args.configs]  # one order, whatever the command line's
    return args


def value_model_path(args) -> str:
    """The four-model layout's separate value model: the reward model, else the policy's own checkpoint."""
    if args.reward.startswith("rm:") and "," not in args.reward and " " not in args.reward:
        return args.reward[3:]
    if args.model.startswith("embedded:"):
        from alignkit.models.embedded import ensure

        return str(ensure(args.model))
    return args.model


def config_values(args) -> dict:
    """PPOConfig values of the worker's configuration: the shared settings, then its layout and tuning."""
    layout, tuning = args.worker.split("/")
    values = {"model_name_or_path": args.model, "dataset_name": args.prompts, "reward_funcs": args.reward,
              "per_device_train_batch_size": args.batch, "max_completion_length": args.max_completion_length,
              "max_steps": args.updates, "num_ppo_epochs": 1, "num_mini_batches": 1, "output_dir": args.out,
              "seed": args.seed, "logging_steps": 1, "progress": False, "device": "cpu", "dtype": "float32",
              "save_steps": 0}
    if tuning == "lora":
        values.update(use_peft=True, lora_dropout=0.0)
    if layout == "four_model":
        values.update(ref="copy", value_model=value_model_path(args))
    else:
        values.update(ref="adapter", value_model="shared")
    return values


def make_resident() -> None:
    """Read every loaded weight once. Checkpoints are memory-mapped and paged in when first read, so without this
    the weights would enter the RSS during the first update and count above the post-setup baseline."""
    import gc

    import torch

    seen = set()
    with torch.no_grad():
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.nn.Module):  # type(), not isinstance: no __class__ look-ups on proxies
                for tensor in [*obj.parameters(recurse=False), *obj.buffers(recurse=False)]:
                    if id(tensor) not in seen:
                        seen.add(id(tensor))
                        tensor.sum()


class _Done(Exception):
    """Raised from the engine's on_log hook after the last update, so the run ends before its checkpoint and
    final save."""


def worker(args) -> dict:
    """One configuration: train_ppo with the engine loop wrapped to mark each update's end and read the peak
    memory after the last; returns the run's figures and the work it did (for the equality check)."""
    import torch

    torch.set_num_threads(args.threads)
    import alignkit.engine.run as engine_run
    from alignkit.config import build_config, to_flat_dict
    from alignkit.methods.ppo import PPOConfig, PPOStep, train_ppo

    memory = harness.Memory()
    marks: list[tuple[float, float, float]] = []
    work: list[dict] = []
    seen: dict = {}
    real_train, real_collect = engine_run.train, PPOStep.collect

    def timed_train(model, *a, **k):
        def on_log(record):
            marks.append(harness.mark())
            if record["step"] >= args.updates:
                seen["peak"] = memory.peak()
                raise _Done

        params = list(model.parameters())
        seen["parameters"] = sum(p.numel() for p in params)
        seen["trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)
        make_resident()
        memory.reset()  # every model is loaded and resident: the baseline
        return real_train(model, *a, on_log=on_log, **k)

    def collect(self, model, batches, sum_across):
        experience = real_collect(self, model, batches, sum_across)
        t = experience.totals
        rows = json.dumps([b["rows"] for b in batches], sort_keys=True, default=str)
        work.append({"prompts": sum(len(b["rows"]) for b in batches), "completions": int(t["rows"]),
                     "prompt_rows_sha256": hashlib.sha256(rows.encode()).hexdigest(),
                     "sample_seeds": [int(b["sample_seed"]) for b in batches],
                     "generated_tokens": int(t["length"]), "tokens": int(t["tokens"]),
                     "score": t["score"] / t["rows"]})
        return experience

    engine_run.train = timed_train
    engine_run.write_report_quietly = lambda out: None  # report.html of a stopped run: not measured, not needed
    PPOStep.collect = collect
    config = build_config(PPOConfig, config_values(args))
    try:
        train_ppo(config)
    except _Done:
        pass
    if len(marks) < args.updates:
        raise RuntimeError(f"{args.worker}: only {len(marks)} of {args.updates} updates were marked")
    first, last = marks[0], marks[args.updates - 1]  # the clock: end of the warm-up update to end of the last
    timed = args.updates - 1
    elapsed, cpu = last[0] - first[0], last[1] - first[1]
    others = max(last[2] - first[2] - cpu, 0.0) / (elapsed * (os.cpu_count() or 1))
    delta, absolute = seen["peak"]
    settings = {k: v for k, v in to_flat_dict(config).items() if k not in LAYOUT_FIELDS}
    layout, tuning = args.worker.split("/")
    return {"config": args.worker, "layout": layout, "tuning": tuning, "updates": len(marks),
            "timed_updates": timed, "update_times_s": [b[0] - a[0] for a, b in zip(marks[:-1], marks[1:])],
            "seconds_per_update": elapsed / timed, "cpu_seconds_per_update": cpu / timed, "other_load": others,
            "peak_rss_mib": delta / 2**20, "abs_peak_rss_mib": absolute / 2**20,
            "baseline_rss_mib": memory.base / 2**20, "peak_exact": memory.exact,
            "parameters": seen["parameters"], "trainable_parameters": seen["trainable_parameters"],
            "work": work, "settings": settings, "checkpointing": False, "torch": torch.__version__}


def run_all(args) -> list[dict]:
    """Every (repeat, configuration) once, each a fresh process, the order reversed every other repeat."""
    runs = []
    for r in range(args.repeats):
        for config in args.configs if r % 2 == 0 else args.configs[::-1]:
            if args.wait_quiet:
                harness.wait_quiet(args.wait_quiet)
            with tempfile.TemporaryDirectory(prefix="bench-ppo-") as out:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--out", out,
                       "--model", args.model, "--reward", args.reward, "--prompts", args.prompts,
                       "--batch", str(args.batch), "--max-completion-length", str(args.max_completion_length),
                       "--updates", str(args.updates), "--threads", str(args.threads), "--seed", str(args.seed)]
                run = harness.run_worker(cmd, config, args.threads, args.timeout, checkpointing=False)
            run["repeat"] = r + 1
            runs.append(run)
            print(f"  {config:16s} repeat {r + 1}: {run['seconds_per_update']:8.3f} s/update  "
                  f"{run['peak_rss_mib']:8.1f} MiB over baseline  {run['abs_peak_rss_mib']:8.1f} MiB peak  "
                  f"others {run['other_load']:.0%}", flush=True)
    return runs


def check_equal_work(args, runs: list[dict]) -> list[str]:
    """What differs between the runs' work (empty: the same work everywhere); see the module docstring."""
    problems = []
    if not runs:
        return ["no runs"]
    ref = runs[0]
    for run in runs:
        name = f"{run['config']} repeat {run.get('repeat', '?')}"
        work = run["work"]
        if run["updates"] != args.updates or len(work) != args.updates:
            problems.append(f"{name}: {len(work)} updates done, {run['updates']} marked, asked for {args.updates}")
        for u, update in enumerate(work, 1):
            for key in ("prompts", "completions"):
                if update[key] != args.batch:
                    problems.append(f"{name}: update {u}: {update[key]} {key}, asked for {args.batch}")
        for u, (update, first) in enumerate(zip(work, ref["work"]), 1):
            for key in ("prompt_rows_sha256", "sample_seeds"):
                if update[key] != first[key]:
                    problems.append(f"{name}: update {u}: other {key} than {ref['config']}")
        if work and ref["work"]:
            a, b = work[0], ref["work"][0]
            for key in ("generated_tokens", "tokens"):
                if a[key] != b[key]:
                    problems.append(f"{name}: update 1: {a[key]} {key}, {ref['config']} {b[key]}")
            if not math.isclose(a["score"], b["score"], rel_tol=SCORE_TOLERANCE, abs_tol=SCORE_TOLERANCE):
                problems.append(f"{name}: update 1: mean score {a['score']:.6g}, {ref['config']} {b['score']:.6g}")
        differing = sorted(k for k in set(run["settings"]) | set(ref["settings"])
                           if run["settings"].get(k) != ref["settings"].get(k))
        if differing:
            problems.append(f"{name}: settings differ from {ref['config']}: {', '.join(differing)}")
    return problems


def paired_ratios(runs: list[dict], num: str, den: str, key: str) -> list[float]:
    """num ÷ den of the runs of the same repeat."""
    by = {(r["config"], r["repeat"]): r[key] for r in runs}
    return [by[(num, k)] / by[(den, k)] for (c, k) in sorted(by) if c == num and (den, k) in by and by[(den, k)]]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


RATIOS = (  # (name, label, numerator, denominator)
    ("layout_lora", "(a) layout at equal tuning, LoRA: one_model/lora / four_model/lora", "one_model/lora",
     "four_model/lora"),
    ("layout_full", "(a) layout at equal tuning, full: one_model/full / four_model/full", "one_model/full",
     "four_model/full"),
    ("tuning_four_model", "(b) tuning at equal layout, four-model: four_model/lora / four_model/full",
     "four_model/lora", "four_model/full"),
    ("tuning_one_model", "(b) tuning at equal layout, one-model: one_model/lora / one_model/full", "one_model/lora",
     "one_model/full"),
)
FIGURES = (("abs_peak_rss_mib", "peak"), ("peak_rss_mib", "over baseline"), ("seconds_per_update", "s/update"))


def report(args, runs: list[dict]) -> int:
    """Print the equality check, then (only when it passes) the table, the ratios and the target; write --json.
    Returns the exit status: 1 when the configurations did different work."""
    problems = check_equal_work(args, runs)
    result = {"benchmark": "ppo", "device": "cpu", "dtype": "float32",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "torch": _version("torch"),
                          "transformers": _version("transformers")},
              "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out", "json")},
              "configurations": args.configs, "not_possible": IMPOSSIBLE,
              "equal_work": {"ok": not problems, "problems": problems}, "runs": runs}
    if problems:
        print("equal work: FAIL (the configurations did different work; no ratio is printed)")
        for line in problems:
            print(f"  {line}")
        _write_json(args, result)
        return 1
    first = runs[0]["work"][0]
    print(f"equal work: PASS ({args.batch} prompts and the same prompt rows and sampling seeds at each of "
          f"{args.updates} updates in every run; update 1: {first['generated_tokens']} generated tokens, "
          f"{first['tokens']} tokens, mean score {first['score']:.4g} everywhere)\n")

    by_config = {c: [r for r in runs if r["config"] == c] for c in args.configs}
    medians = {c: {key: statistics.median(r[key] for r in rs) for key, _ in FIGURES}
               for c, rs in by_config.items()}
    print(f"{'configuration':<18}{'s/update':>10}{'MiB over baseline':>19}{'MiB peak':>10}"
          f"{'trainable params':>18}   (medians of {args.repeats} run(s); cpu, float32)")
    for c, m in medians.items():
        print(f"{c:<18}{m['seconds_per_update']:>10.3f}{m['peak_rss_mib']:>19.1f}{m['abs_peak_rss_mib']:>10.1f}"
              f"{by_config[c][0]['trainable_parameters']:>18,}")
    for c, why in IMPOSSIBLE.items():
        print(f"{c:<18}   not possible: {why}")
    print()

    ratios = {}
    for name, label, num, den in RATIOS:
        if num in IMPOSSIBLE or den in IMPOSSIBLE:
            print(f"{label}: not possible ({(IMPOSSIBLE.get(num) or IMPOSSIBLE[den]).split(':')[0]})")
            continue
        if num not in by_config or den not in by_config:
            print(f"{label}: not measured (--configs)")
            continue
        ratios[name] = {key: summary(paired_ratios(runs, num, den, key)) for key, _ in FIGURES}
        print(f"{label}: " + ", ".join(f"{what} {ratios[name][key]['median']:.2f}x "
                                        f"[{ratios[name][key]['min']:.2f}, {ratios[name][key]['max']:.2f}]"
                                        for key, what in FIGURES))
    result["ratios"] = ratios
    if "layout_lora" in ratios:
        ratio = ratios["layout_lora"]["abs_peak_rss_mib"]["median"]
        verdict = "PASS" if ratio <= TARGET_MEMORY else "FAIL"
        result["target"] = {"memory": TARGET_MEMORY, "judged_on": "layout_lora abs_peak_rss_mib median",
                            "ratio": ratio, "verdict": verdict}
        print(f"\nmemory target, judged at equal tuning (LoRA in both) on the absolute peak: one_model/lora / "
              f"four_model/lora {ratio:.2f}x (target <= {TARGET_MEMORY}x) {verdict}")
        if args.model.startswith("embedded:tiny"):
            print("(embedded:tiny's weights are under 1 MB: the interpreter and libraries make up its peak, so "
                  "this ratio says nothing about the layouts; the target is meant for a real model such as SmolLM2)")
    else:
        print("\nmemory target not judged: it needs four_model/lora and one_model/lora")
    print()
    harness.print_contention(by_config, args.threads)
    _write_json(args, result)
    return 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _write_json(args, result: dict) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reward is None:
        args.reward = f"rm:{DEMO_RM}" if os.path.isdir(DEMO_RM) else "rules"
    if args.worker:
        print(json.dumps(worker(args), default=str))
        return 0
    print(f"PPO by layout and tuning: {args.model}, reward {args.reward}, {args.batch} prompts x "
          f"{args.max_completion_length} tokens, {args.updates} updates (1 warm-up + {args.updates - 1} timed), "
          f"seed {args.seed}, {args.threads} threads, cpu, float32")
    print(f"configurations: {', '.join(args.configs)}; " +
          "; ".join(f"{c} not possible: {why}" for c, why in IMPOSSIBLE.items()))
    print(f"{args.repeats} repeat(s) per configuration, each a fresh process, order reversed every other repeat\n",
          flush=True)
    runs = run_all(args)
    print()
    return report(args, runs)


if __name__ == "__main__":
    sys.exit(main())
