"""Asynchronous GRPO against synchronous GRPO: `alignkit grpo` with and without `--async_generation true`, on the
same model, prompts, reward, seed and steps, with the same two CPU cores.

- sync: `alignkit grpo` on --threads torch threads (2): each step samples, then updates, one after the other;
- async: the same command with `--async_generation true --max_staleness K --async_generation_threads 1`: a
  generator process (its own model copy, 1 thread) samples step k + 1's completions while the trainer (the
  remaining 1 thread: `rollout.async_rollout.start_async_rollouts` gives it torch's threads minus the generator's)
  updates on step k's; weights are pushed after every update, and truncated importance sampling corrects the lag.

Method: every run is `python -m alignkit.cli grpo ...` in a fresh subprocess with OMP_NUM_THREADS /
MKL_NUM_THREADS = --threads, offline, pinned (sched_setaffinity, inherited by the generator process) to the same
--threads CPUs, so both sides get exactly the same cores; the sides alternate which goes first, --repeats of
each. Each run logs every step to its metrics.jsonl (`engine.loop._row`): `step_time` (wall seconds of the step,
sampling included; the async side's includes waiting for its samples) and `completions/mean_length`. Measured
per run, over the steps after the first --warmup (the first step loads the generator and has nothing to
overlap with):

- completions/s = timed steps x completions per step / their summed step_time;
- completion tokens/s = sum of (mean length x completions) / the same time: the two sides draw from different
  random streams, so lengths differ by chance, and a side that happened to sample shorter answers would look
  faster in completions/s. The verdict needs both ratios at the target;
- the mean reward and, for async, `async/staleness` (updates between sampling and training weights);
- the run's CPU seconds (it and its generator process) and the share of the machine other processes used
  meanwhile, with a warning above 10%: 2-thread ops on busy cores stall at every barrier, single-thread
  processes do not, so contention favours the async side.

Same work, checked: both sides logged every step with the same completions per step; the async side logged
`async/staleness` on every step, never above K, and the sync side never did (else the async path did not
run). A failed check prints FAIL and exits 1, never a ratio. The ratios are async/sync completions and
completion tokens per second, the medians of the paired runs (repeat r of each side), against the issue's
target of 1.3x.

--tiny instead compares learning: reward curves (mean reward per step over --seeds) of both sides on
embedded:tiny with a verifiable reward (`e_share`: the share of the letter e, which the tiny model learns,
as in tests/test_grpo.py), to show that one update of staleness with importance sampling does not hurt what
is learned. Verdict: the async side's reward gain (mean of the last 4 steps minus the first 4) is at least
--tiny-gain-share (0.8) of the sync side's.

Raw figures (settings, machine, versions, every run's per-step rows) go to
benchmarks/results/<YYYY-MM-DD>-async-grpo[-tiny].json (or --json).

    python benchmarks/async_grpo.py                  # SmolLM2-135M, rules reward, 3 repeats per side
    python benchmarks/async_grpo.py --tiny           # reward curves on embedded:tiny, 3 seeds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REPO = harness.REPO
SMOL = "embedded:smollm2-135m-instruct"
TINY = "embedded:tiny"
SIDES = ("sync", "async")
TARGET_SPEED = 1.3
E_SHARE = '''
def e_share(prompts, completions, **columns):
    """The share of the letter e in the response: a target the random tiny model can move towards."""
    return [c.count("e") / max(len(c), 1) for c in completions]
'''


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=f"default {SMOL} ({TINY} with --tiny)")
    p.add_argument("--prompts", default="builtin:prompts.jsonl", help="the prompt rows (--dataset_name)")
    p.add_argument("--reward", default=None, help="--reward_funcs (default rules; with --tiny a file.py:e_share "
                                                  "written to a temporary directory)")
    p.add_argument("--prompts-per-step", type=int, default=None, help="prompts per step (default 8; --tiny 2)")
    p.add_argument("--generations", type=int, default=8, help="num_generations (group size)")
    p.add_argument("--max-completion-length", type=int, default=None, help="default 32; --tiny 8")
    p.add_argument("--steps", type=int, default=None, help="update steps per run, warm-up included (default 6; "
                                                           "--tiny 24)")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    p.add_argument("--learning-rate", type=float, default=None, help="default 1e-6; --tiny 1e-2")
    p.add_argument("--max-staleness", type=int, default=1, help="K of the async side")
    p.add_argument("--threads", type=int, default=2,
                   help="the cores each run gets: sync trains and samples on this many torch threads; async's "
                        "trainer keeps this many minus --generator-threads")
    p.add_argument("--generator-threads", type=int, default=1, help="--async_generation_threads of the async side")
    p.add_argument("--no-pin", action="store_true", help="do not pin each run to the same --threads CPUs")
    p.add_argument("--repeats", type=int, default=3, help="runs per side (the speed comparison)")
    p.add_argument("--seed", type=int, default=0, help="the speed comparison's first --seed (repeat r uses seed + r on both sides)")
    p.add_argument("--tiny", action="store_true", help="compare reward curves on embedded:tiny instead of speed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--tiny: one run per side and seed")
    p.add_argument("--tiny-gain-share", type=float, default=0.8,
                   help="--tiny: the async side's reward gain must reach this share of the sync side's")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--wait-quiet", type=float, default=0, help="wait up to this many seconds for an idle machine "
                                                               "before each run")
    p.add_argument("--json", help="results file (default benchmarks/results/<date>-async-grpo[-tiny].json)")
    args = p.parse_args(argv)
    tiny = args.tiny
    for name, normal, small in (("model", SMOL, TINY), ("prompts_per_step", 8, 2), ("max_completion_length", 32, 8),
                                ("steps", 6, 24), ("learning_rate", 1e-6, 1e-2)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else normal)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    if args.generator_threads >= args.threads:
        p.error("--generator-threads must leave the trainer at least one of --threads")
    if args.json is None:
        date = datetime.date.today().isoformat()
        args.json = os.path.join(REPO, "benchmarks", "results", f"{date}-async-grpo{'-tiny' if tiny else ''}.json")
    return args


def cpus(args) -> list[int] | None:
    """The CPUs every run is pinned to: the first --threads this process may use (None: not pinned)."""
    if args.no_pin or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < args.threads:
        raise SystemExit(f"only {len(allowed)} CPUs available, --threads is {args.threads}")
    return allowed[:args.threads]


def command(args, side: str, seed: int, out_dir: str, reward: str) -> list[str]:
    """The `alignkit grpo` command line of one run; the sides differ only in the async options."""
    cmd = [sys.executable, "-m", "alignkit.cli", "grpo", "--model", args.model, "--prompts", args.prompts,
           "--reward", reward, "--num_generations", str(args.generations),
           "--per_device_train_batch_size", str(args.prompts_per_step * args.generations),
           "--max_completion_length", str(args.max_completion_length), "--learning_rate", str(args.learning_rate),
           "--max_steps", str(args.steps), "--logging_steps", "1", "--save_steps", "0", "--seed", str(seed),
           "--dtype", "float32", "--device", "cpu", "--progress", "false", "--output_dir", out_dir]
    if side == "async":
        cmd += ["--async_generation", "true", "--max_staleness", str(args.max_staleness),
                "--async_generation_threads", str(args.generator_threads)]
    return cmd


def run_one(args, side: str, seed: int, reward: str) -> dict:
    """One run in a fresh subprocess; returns its per-step rows (from metrics.jsonl) and what is measured."""
    if args.wait_quiet:
        harness.wait_quiet(args.wait_quiet)
    threads = str(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")])))
    pinned = cpus(args)
    with tempfile.TemporaryDirectory(prefix=f"bench-async-grpo-{side}-") as out_dir:
        started, busy, used = time.perf_counter(), harness._cpu_busy_s(), _children_cpu_s()
        try:
            proc = subprocess.run(command(args, side, seed, out_dir, reward), capture_output=True, text=True,
                                  env=env, timeout=args.timeout, cwd=REPO,
                                  preexec_fn=(lambda: os.sched_setaffinity(0, pinned)) if pinned else None)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{side} seed {seed}: took longer than --timeout {args.timeout} s") from None
        wall = time.perf_counter() - started
        cpu = _children_cpu_s() - used  # the run and its generator process (waited for, so counted)
        other_load = max(harness._cpu_busy_s() - busy - cpu, 0.0) / (wall * (os.cpu_count() or 1))
        if proc.returncode != 0:
            raise SystemExit(f"{side} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            rows = [r for r in map(json.loads, f) if "step_time" in r]
    return {"side": side, "seed": seed, "wall_s": wall, "cpu_s": cpu, "other_load": other_load, "cpus": pinned,
            **measure(args, rows)}


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args, rows: list[dict]) -> dict:
    """Completions/s and completion tokens/s over the steps after the warm-up, the rewards and staleness."""
    per_step = args.prompts_per_step * args.generations
    timed = rows[args.warmup:]
    seconds = sum(r["step_time"] for r in timed)
    staleness = [r.get("async/staleness") for r in rows]
    return {"steps": len(rows), "completions_per_step": per_step, "timed_steps": len(timed), "time_s": seconds,
            "completions_per_s": len(timed) * per_step / seconds if seconds else 0.0,
            "completion_tokens_per_s": sum(r.get("completions/mean_length", 0.0) * per_step for r in timed) / seconds
            if seconds else 0.0,
            "step_times": [r["step_time"] for r in rows], "rewards": [r.get("reward") for r in rows],
            "mean_lengths": [r.get("completions/mean_length") for r in rows], "staleness": staleness,
            "rows": rows}


def problems_of(args, runs: list[dict]) -> list[str]:
    """Why the runs did not do the work they should (empty: they did)."""
    problems = []
    for r in runs:
        label = f"{r['side']} seed {r['seed']}"
        if r["steps"] != args.steps:
            problems.append(f"{label}: logged {r['steps']} of {args.steps} steps")
        seen = [s for s in r["staleness"] if s is not None]
        if r["side"] == "sync" and seen:
            problems.append(f"{label}: logged async/staleness, so it did not run synchronously")
        if r["side"] == "async" and len(seen) != r["steps"]:
            problems.append(f"{label}: async/staleness missing on {r['steps'] - len(seen)} steps: was "
                            "--async_generation applied?")
        if r["side"] == "async" and seen and max(seen) > args.max_staleness:
            problems.append(f"{label}: staleness {max(seen)} above --max-staleness {args.max_staleness}")
    return problems


def warn_contention(runs: list[dict]) -> None:
    """Other processes' share of the machine during the runs, and a warning when it spoils the comparison: on
    busy cores the sync side's 2-thread parallel ops wait for a descheduled thread at every barrier, while the
    async side's two 1-thread processes do not, which inflates the ratio."""
    loads = [r["other_load"] for r in runs]
    print(f"other processes used {statistics.median(loads):.0%} (median; max {max(loads):.0%}) of the machine's "
          f"{os.cpu_count()} CPUs during the runs")
    if max(loads) > 0.1:
        print("WARNING: other work competed for the CPUs, so the times are not clean; rerun on a quiet machine "
              "(--wait-quiet helps on a shared one)")


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def speed(args) -> int:
    """The speed comparison: --repeats paired runs, sides alternated; verdict on the median paired ratio."""
    reward = args.reward or "rules"
    print(f"async vs sync GRPO: {args.model}, reward {reward}, {args.prompts_per_step} prompts x "
          f"{args.generations} generations, {args.max_completion_length} tokens, {args.steps} steps "
          f"({args.warmup} untimed), {args.threads} CPUs {cpus(args) or '(not pinned)'}; async: "
          f"K={args.max_staleness}, generator {args.generator_threads} thread(s)\n", flush=True)
    samples: dict[tuple[str, str, str], list[dict]] = {}
    for r in range(args.repeats):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            res = run_one(args, side, args.seed + r, reward)  # one seed per pair: lengths vary across pairs, not sides
            samples.setdefault((args.model, "builtin", side), []).append(res)
            stale = [s for s in res["staleness"][args.warmup:] if s is not None]
            print(f"  {side:5s} repeat {r + 1}: {res['completions_per_s']:7.2f} completions/s  "
                  f"{res['completion_tokens_per_s']:8.1f} tok/s  {res['time_s'] / res['timed_steps']:6.2f} s/step  "
                  f"wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s  others {res['other_load']:.0%}"
                  + (f"  staleness {statistics.mean(stale):.2f}" if stale else ""), flush=True)
    runs = [s for v in samples.values() for s in v]
    warn_contention(runs)
    problems = problems_of(args, runs)
    record = {"model": args.model, "shape": "builtin", "problems": problems}
    if problems:
        print("FAIL: the runs did not do the same work, so no ratio: " + "; ".join(problems))
        row = {**record, "verdict": "UNEQUAL"}
    else:
        pairs = list(zip(samples[(args.model, "builtin", "async")], samples[(args.model, "builtin", "sync")]))
        ratio = harness.spread([a["completions_per_s"] / s["completions_per_s"] for a, s in pairs])
        tokens = harness.spread([a["completion_tokens_per_s"] / s["completion_tokens_per_s"] for a, s in pairs])
        # the two sides sample different tokens, so their lengths differ by chance: both ratios must pass
        verdict = "PASS" if min(ratio["median"], tokens["median"]) >= TARGET_SPEED else "MISS (speed)"
        print(f"\nasync/sync completions/s: {ratio['median']:.2f}x (paired runs {ratio['min']:.2f}-"
              f"{ratio['max']:.2f}x; completion tokens/s {tokens['median']:.2f}x)  {verdict}")
        row = {**record, "verdict": verdict, "speed": ratio, "token_speed": tokens, "target_speed": TARGET_SPEED}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    return harness.finish(args, "async_grpo", samples, [row], versions(),
                          f"target: async >= {TARGET_SPEED}x sync completions/s and completion tokens/s on the same "
                          f"{args.threads} CPUs")


def tiny(args) -> int:
    """The learning comparison: one run per side and seed on embedded:tiny; mean reward per step over seeds."""
    with tempfile.TemporaryDirectory(prefix="bench-async-grpo-reward-") as where:
        reward = args.reward
        if reward is None:
            path = os.path.join(where, "e_share_reward.py")
            with open(path, "w") as f:
                f.write(E_SHARE)
            reward = f"{path}:e_share"
        print(f"reward curves, async vs sync: {args.model}, {args.steps} steps, seeds {args.seeds}\n", flush=True)
        samples: dict[tuple[str, str, str], list[dict]] = {}
        for k, seed in enumerate(args.seeds):
            for side in (SIDES if k % 2 == 0 else SIDES[::-1]):
                res = run_one(args, side, seed, reward)
                samples.setdefault((args.model, "tiny", side), []).append(res)
                print(f"  {side:5s} seed {seed}: reward {res['rewards'][0]:.3f} -> {res['rewards'][-1]:.3f}",
                      flush=True)
    runs = [s for v in samples.values() for s in v]
    warn_contention(runs)
    problems = problems_of(args, runs)
    curves = {side: [statistics.mean(r["rewards"][i] for r in samples[(args.model, "tiny", side)])
                     for i in range(args.steps)] for side in SIDES}
    print("\nstep  " + "  ".join(f"{s:>6s}" for s in SIDES))
    for i in range(args.steps):
        print(f"{i + 1:4d}  " + "  ".join(f"{curves[s][i]:6.3f}" for s in SIDES))
    window = min(4, args.steps // 2)
    gain = {s: statistics.mean(curves[s][-window:]) - statistics.mean(curves[s][:window]) for s in SIDES}
    record = {"model": args.model, "shape": "tiny", "problems": problems, "curves": curves, "gain": gain}
    if problems:
        print("FAIL: " + "; ".join(problems))
        row = {**record, "verdict": "UNEQUAL"}
    else:
        ok = gain["sync"] > 0 and gain["async"] >= args.tiny_gain_share * gain["sync"]
        verdict = "PASS" if ok else "MISS (learning)"
        print(f"\nreward gain (last {window} steps - first {window}): sync {gain['sync']:.3f}, async "
              f"{gain['async']:.3f}  {verdict}")
        row = {**record, "verdict": verdict}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    return harness.finish(args, "async_grpo_tiny", samples, [row], versions(),
                          f"target: async's reward gain >= {args.tiny_gain_share}x sync's (a sanity check, not speed)")


def main(argv=None) -> int:
    args = parse_args(argv)
    return tiny(args) if args.tiny else speed(args)


if __name__ == "__main__":
    sys.exit(main())
