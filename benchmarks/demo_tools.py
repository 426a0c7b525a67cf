"""The `demo-tools` recipe measured on three seeds: held-out pass@1 before anything, after the SFT warm-up and after
GRPO in the calculator environment, each later one paired against the earlier ones (95% bootstrap intervals over
the 120 held-out problems), and the wall time of the whole recipe.

    alignkit pipeline demo-tools-seed0.yaml ...       # one recipe per seed: `extends: demo-tools`, defaults: seed N
    python benchmarks/demo_tools.py collect runs/demo-tools-seed0 runs/demo-tools-seed1 runs/demo-tools-seed2
    python benchmarks/demo_tools.py table            # rewrite the generated table of docs/agents.md
    python benchmarks/demo_tools.py --check          # exit 1 when docs/agents.md differs from the results

`collect` reads each run's eval.json files and run.json timings into benchmarks/results/<date>-demo-tools.json
(the raw figures); `table` writes the block between `<!-- table: demo-tools -->` and `<!-- /table -->` in
docs/agents.md from the newest such file.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), "docs", "agents.md")
BLOCK = re.compile(r"(<!-- table: demo-tools -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
EVALS = ("before", "sft_eval", "after")
STAGES = ("demos", "before", "sft", "sft_eval", "grpo", "after")


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def collect(run_dirs: list[str]) -> str:
    """benchmarks/results/<date>-demo-tools.json from the runs' eval.json and run.json files."""
    runs = []
    for run in run_dirs:
        evals = {name: _json(os.path.join(run, name, "eval.json")) for name in EVALS}
        seconds = {name: _json(os.path.join(run, name, "run.json")) for name in STAGES}
        seed = evals["after"]["settings"].get("seed")
        runs.append({
            "run": run, "seed": seed,
            "pass_at_1": {name: evals[name]["pass_at_k"]["1"] for name in EVALS},
            "vs": {name: {v["name"]: v["pass_at_k"]["1"] for v in evals[name].get("vs_baselines", [])}
                   for name in EVALS},
            "problems": evals["after"]["problems"],
            "stage_seconds": {name: seconds[name].get("seconds") for name in STAGES},
            "wall_seconds": _wall_seconds(run),
        })
    out = os.path.join(HERE, "results", f"{datetime.date.today():%Y-%m-%d}-demo-tools.json")
    with open(out, "w") as f:
        json.dump({"benchmark": "demo-tools", "runs": runs}, f, indent=1)
        f.write("\n")
    return out


def _wall_seconds(run: str) -> float:
    """The recipe's wall time: from the first stage's config.yaml (written as it starts) to the last run.json
    (rewritten as each stage completes), model loading and every stage included."""
    starts = [os.path.getmtime(p) for p in glob.glob(os.path.join(run, "*", "config.yaml"))]
    ends = [os.path.getmtime(p) for p in glob.glob(os.path.join(run, "*", "run.json"))]
    return round(max(ends) - min(starts), 1)


def newest() -> tuple[str, dict]:
    paths = sorted(glob.glob(os.path.join(HERE, "results", "*-demo-tools.json")))
    if not paths:
        raise SystemExit("no benchmarks/results/*-demo-tools.json; run `collect` first")
    return paths[-1], _json(paths[-1])


def percent(r: dict, sign: bool = False) -> str:
    fmt = "{:+.1f}" if sign else "{:.1f}"  # percentage points
    return f"{fmt.format(100 * r['mean'])} ({fmt.format(100 * r['low'])} to {fmt.format(100 * r['high'])})"


def table() -> str:
    path, record = newest()
    lines = [f"From `benchmarks/results/{os.path.basename(path)}` (greedy pass@1 in %, 95% bootstrap interval over "
             f"the {record['runs'][0]['problems']} held-out problems; differences are paired, in points):", "",
             "| seed | before | after SFT | after GRPO | recipe − before | GRPO − SFT | recipe minutes |",
             "|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        p, vs = run["pass_at_1"], run["vs"]["after"]
        minutes = run["wall_seconds"] / 60
        lines.append(f"| {run['seed']} | {percent(p['before'])} | {percent(p['sft_eval'])} | {percent(p['after'])} | "
                     f"{percent(vs['before'], True)} | {percent(vs['sft_eval'], True)} | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def write_or_check(check: bool) -> int:
    with open(DOC) as f:
        doc = f.read()
    match = BLOCK.search(doc)
    if match is None:
        print(f"{DOC}: no <!-- table: demo-tools --> block", file=sys.stderr)
        return 1
    new = doc[:match.start("body")] + table() + doc[match.end("body"):]
    if check:
        if new != doc:
            print(f"{DOC}: the demo-tools table differs from the results; run python benchmarks/demo_tools.py table",
                  file=sys.stderr)
            return 1
        return 0
    with open(DOC, "w") as f:
        f.write(new)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", nargs="?", choices=("collect", "table"), default="table")
    p.add_argument("runs", nargs="*", help="collect: the recipe's run directories, one per seed")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/agents.md differs from the results")
    args = p.parse_args(argv)
    if args.action == "collect":
        print(collect(args.runs))
        return 0
    return write_or_check(args.check)


if __name__ == "__main__":
    sys.exit(main())
