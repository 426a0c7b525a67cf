"""One launch for a suite of benchmarks: every script run with the method the docs state, its raw results in one file.

    python benchmarks/run.py --suite cpu              # the CPU suite: about an hour on 2 quiet cores
    python benchmarks/run.py --suite cpu --only sft dpo
    python benchmarks/run.py --suite smoke            # every script on the tiny model, 1 repeat: checks the wiring

Each benchmark runs as its own process (`benchmarks/<name>.py ... --json FILE`) on 2 torch threads, with 3
repeats per side in fresh subprocesses, sides alternated, warm-up steps excluded and ratios taken over paired
runs (the scripts' docstrings say how). A benchmark whose two sides did different work exits 1 and prints FAIL
instead of a ratio; this runner then exits 1 too, after writing what it has.

The results go to `benchmarks/results/<YYYY-MM-DD>-<suite>.json`: the suite, the date, the git commit, the
machine (CPU model and count), the versions, and for every benchmark its command line, exit status, wall
seconds and the script's own results (settings, every row's verdict and paired ratios, every raw sample).
`python benchmarks/tables.py` turns these files into the tables of docs/benchmarks.md; nobody types those
numbers.

Run it on a quiet machine: with 2 threads, other work on the cores slows small ops unevenly and the scripts
warn. `--wait-quiet SECONDS` is passed to the scripts that support it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import harness  # noqa: E402

SMOL = "embedded:smollm2-135m-instruct"
TINY = "embedded:tiny"

# name -> (script, arguments): what each suite measures
SUITES = {
    "cpu": {
        "logprobs": ("logprobs.py", []),
        "sft": ("sft.py", ["--models", TINY, SMOL, "--data", "builtin", "hh"]),
        "reward_model": ("reward_model.py", ["--models", TINY, SMOL, "--data", "builtin", "hh"]),
        # SmolLM2 on HH pairs is left out: TRL's worker needed 18.6 GB RSS at batch 8 there (docs/benchmarks.md)
        "dpo": ("dpo.py", ["--models", TINY, SMOL, "--data", "builtin", "--refs", "precomputed"]),
        "grpo": ("grpo.py", ["--models", TINY, SMOL, "--steps", "2"]),
        # TRL's other generation path: transformers' continuous batching instead of generate
        # tiny only: on CPU its paged cache took 10 GB for the tiny model (docs/benchmarks.md)
        "grpo_trl_cb": ("grpo.py", ["--models", TINY, "--steps", "2", "--trl-continuous-batching"]),
        "ppo": ("ppo.py", ["--model", SMOL, "--reward", "rules"]),
    },
    "smoke": {
        "logprobs": ("logprobs.py", ["--batch", "2", "--seq", "64", "--vocab", "512", "--hidden", "32",
                                     "--repeats", "1"]),
        "sft": ("sft.py", ["--models", TINY, "--data", "builtin", "--quick"]),
        "reward_model": ("reward_model.py", ["--models", TINY, "--data", "builtin", "--quick"]),
        "dpo": ("dpo.py", ["--models", TINY, "--data", "builtin", "--refs", "precomputed", "--quick"]),
        "grpo": ("grpo.py", ["--models", TINY, "--repeats", "1", "--steps", "1", "--prompts-per-step", "2",
                             "--generations", "2", "--max-completion-length", "8"]),
        "ppo": ("ppo.py", ["--model", TINY, "--reward", "rules", "--repeats", "1"]),
    },
}
COMMON = ["--threads", "2"]
WAIT_QUIET = ("sft", "reward_model", "dpo", "ppo")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--only", nargs="+", help="run only these benchmarks of the suite")
    p.add_argument("--out", help="results file (default benchmarks/results/<date>-<suite>.json)")
    p.add_argument("--wait-quiet", type=float, default=0, help="passed to the scripts that support it")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(SUITES[args.suite]))
    if unknown:
        p.error(f"--only: not in suite {args.suite}: {', '.join(unknown)} (it has {', '.join(SUITES[args.suite])})")
    return args


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def run_one(name: str, script: str, extra: list[str], wait_quiet: float) -> dict:
    """One benchmark in its own process, its output shown as it comes; its --json file read back."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.join(HERE, script), *extra, *COMMON, "--json", path]
        if wait_quiet and name in WAIT_QUIET:
            cmd += ["--wait-quiet", str(wait_quiet)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.time()
        code = subprocess.run(cmd, cwd=REPO).returncode
        result = json.load(open(path)) if os.path.exists(path) else None
        shown = [a if not a.startswith(tmp) else "RESULT.json" for a in cmd[1:]]
        return {"command": ["python", *(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in shown)],
                "exit_code": code, "seconds": round(time.time() - started, 1), "result": result}


def main(argv=None) -> int:
    args = parse_args(argv)
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", f"{today}-{args.suite}.json")
    record = {"suite": args.suite, "date": today, "commit": git_commit(), "machine": harness.machine(),
              "versions": versions(), "threads": 2, "benchmarks": {}}
    failed = []
    for name, (script, extra) in SUITES[args.suite].items():
        if args.only and name not in args.only:
            continue
        entry = run_one(name, script, extra, args.wait_quiet)
        record["benchmarks"][name] = entry
        if entry["exit_code"] != 0 or entry["result"] is None:
            failed.append(name)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w") as f:  # after every benchmark, so a cut-off suite keeps what it measured
            json.dump(record, f, indent=1)
        os.replace(tmp, out)
    print(f"\nwrote {os.path.relpath(out, REPO) if out.startswith(REPO) else out}")
    for name, entry in record["benchmarks"].items():
        result = entry["result"] or {}
        verdicts = ", ".join(sorted({r["verdict"] for r in result.get("rows", [])})) or \
            (result.get("target") or {}).get("verdict") or "no result"
        print(f"  {name:13s} exit {entry['exit_code']}  {entry['seconds']:7.0f} s  {verdicts}")
    if failed:
        print(f"FAIL: {', '.join(failed)} did not finish cleanly (a benchmark whose sides did different work exits 1)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
