"""The tables of docs/benchmarks.md and docs/rl.md, generated from the committed raw results in
benchmarks/results/.

    python benchmarks/tables.py            # rewrite the generated blocks of docs/benchmarks.md
    python benchmarks/tables.py --check    # exit 1 when the docs differ from what the results give (a test runs it)
    python benchmarks/tables.py --doc docs/rl.md    # the asynchronous GRPO tables (benchmarks/async_grpo.py)
    python benchmarks/tables.py --doc docs/safety.md    # a policy behind the guardrails (safety-eval --guardrails)

A generated block sits between `<!-- table: NAME -->` and `<!-- /table -->` in the docs, where NAME is a
benchmark of a suite (`cpu/sft`, `cpu/dpo`, `gpu/compare`, ...). Its table comes from the newest
`benchmarks/results/<date>-<suite>.json` holding that benchmark, under a heading that names the file, the date,
the device, the dtype and the threads. `async-grpo` and `async-grpo-tiny` (docs/rl.md) list every
`<date>-async-grpo*.json` of benchmarks/async_grpo.py instead, and `guardrails` (docs/safety.md) the newest
`<date>-guardrails.json`. Every ratio is the median of paired runs with
the range over the pairs; a row whose sides did different work shows UNEQUAL and no ratio, as the benchmark
printed it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOC = os.path.join(REPO, "docs", "benchmarks.md")
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w/-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
MODELS = {"embedded:tiny": "embedded:tiny", "embedded:smollm2-135m-instruct": "SmolLM2-135M-Instruct"}
DATA = {"builtin": "built-in", "hh": "HH-RLHF harmless", "synthetic": "synthetic",
        "builtin:prompts.jsonl": "built-in prompts", "builtin:helpful.jsonl": "built-in helpful"}


def newest(suite: str, benchmark: str) -> tuple[str, dict] | None:
    """(path, record) of the newest results file of `suite` that holds `benchmark`."""
    for path in sorted(glob.glob(os.path.join(HERE, "results", f"*-{suite}.json")), reverse=True):
        with open(path) as f:
            record = json.load(f)
        if (record.get("benchmarks", {}).get(benchmark) or {}).get("result"):
            return path, record
    return None


def ratio(spread: dict | None) -> str:
    if not spread:
        return "–"
    if abs(spread["max"] - spread["min"]) < 0.005:
        return f"{spread['median']:.2f}×"
    return f"{spread['median']:.2f}× ({spread['min']:.2f}–{spread['max']:.2f})"


def heading(path: str, record: dict, result: dict) -> str:
    machine, settings = record["machine"], result.get("settings", {})
    device = machine.get("gpu") if record["suite"].startswith("gpu") and machine.get("gpu") else \
        f"CPU ({machine['cpu']}, {machine['cpu_count']} cores)"
    dtype = settings.get("dtype", "float32")
    versions = result.get("versions") or record.get("versions", {})
    trl = f", trl {versions['trl']}" if versions.get("trl") else ""
    return (f"*{record['date']}, {device}, {dtype}, {settings.get('threads', record.get('threads'))} threads, "
            f"torch {versions.get('torch')}{trl}; `{os.path.relpath(path, REPO)}`, commit "
            f"{(record.get('commit') or '?')[:12]}.*\n\n")


def side_medians(result: dict, key: tuple, field: str) -> float | None:
    import statistics

    values = [s[field] for s in result["samples"] if tuple(s["key"]) == key and s.get(field) is not None]
    return statistics.median(values) if values else None


def trainer_table(result: dict) -> str:
    """sft, reward_model, dpo, grpo: one row per (model, data[, reference])."""
    lines = ["| model | data | tokens/s ours | tokens/s TRL | speed vs TRL | peak memory vs TRL | target | result |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        model, shape = row["model"], row["shape"]
        base_shape = shape.split(",")[0]
        ours = side_medians(result, (model, base_shape, "ours"), "tokens_per_s")
        theirs = side_medians(result, (model, base_shape, "trl"), "tokens_per_s")
        if "ref" in row:
            ours = side_medians(result, (model, base_shape, row["ref"], "ours"), "tokens_per_s") or ours
            theirs = side_medians(result, (model, base_shape, row["ref"], "trl"), "tokens_per_s") or theirs
        data = DATA.get(base_shape, base_shape) + (f", reference {row['ref']}" if row.get("ref") else "")
        target = (f"≥ {row['target_speed']}×, ≤ {row['target_memory']}×" if row.get("target_speed") else "none")
        verdict = row["verdict"] if not row["problems"] else "UNEQUAL: " + "; ".join(row["problems"])
        lines.append(f"| {MODELS.get(model, model)} | {data} | {ours:,.0f} | {theirs:,.0f} | {ratio(row.get('speed'))} | "
                     f"{ratio(row.get('memory'))} | {target} | {verdict} |" if ours and theirs else
                     f"| {MODELS.get(model, model)} | {data} | – | – | – | – | {target} | {verdict} |")
    return "\n".join(lines) + "\n"


def logprobs_table(result: dict) -> str:
    titles = {"ref": "forward, no grad (reference log-probs)", "frozen": "forward + backward, frozen head (LoRA)",
              "sft": "forward + backward, trainable head, sum loss (SFT)",
              "train": "forward + backward, trainable head, per-token weights (DPO/PPO full fine-tuning)"}
    lines = ["| mode | chunk | time vs naive | peak memory vs naive | target | result |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        target = f"≤ {row['target_time']}×, ≤ {row['target_memory']:.0%}" if row.get("target_time") else "–"
        memory = row.get("memory")
        mem = (f"{memory['median']:.1%} ({memory['min']:.1%}–{memory['max']:.1%})" if memory else "–")
        lines.append(f"| {titles.get(row['mode'], row['mode'])} | {row['chunk']} | {ratio(row.get('time'))} | {mem} | "
                     f"{target} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def generic_table(result: dict) -> str:
    """Any other benchmark: its rows as they are (name, ratios, verdict)."""
    rows = result.get("rows", [])
    if not rows:
        return "(no rows)\n"
    keys = [k for k in rows[0] if k not in ("problems", "values")]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [ratio(v) if isinstance(v, dict) and "median" in v else
                 f"{v:.3g}" if isinstance(v, float) else str(v) for v in (row[k] for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ppo_table(result: dict) -> str:
    """PPO's configurations (medians), then the two effects apart: layout at equal tuning, tuning at equal layout."""
    import statistics

    lines = ["| configuration | seconds per update | peak RSS | peak over baseline | trainable parameters |",
             "|---|---|---|---|---|"]
    for config in result["configurations"]:
        runs = [r for r in result["runs"] if r["config"] == config]
        med = {k: statistics.median(r[k] for r in runs) for k in ("seconds_per_update", "abs_peak_rss_mib",
                                                                  "peak_rss_mib")}
        lines.append(f"| {config} | {med['seconds_per_update']:.2f} | {med['abs_peak_rss_mib']:,.0f} MiB | "
                     f"{med['peak_rss_mib']:,.0f} MiB | {runs[0]['trainable_parameters']:,} |")
    for config, why in result.get("not_possible", {}).items():
        lines.append(f"| {config} | not possible: {why} | | | |")
    names = {"layout_lora": "one-model / four-model, both LoRA (the layout alone)",
             "tuning_four_model": "LoRA / full, both four-model (the tuning alone)"}
    lines += ["", "| ratio | peak RSS | peak over baseline | seconds per update |", "|---|---|---|---|"]
    for name, r in result["ratios"].items():
        lines.append(f"| {names.get(name, name)} | {ratio(r.get('abs_peak_rss_mib'))} | {ratio(r.get('peak_rss_mib'))} "
                     f"| {ratio(r.get('seconds_per_update'))} |")
    target = result.get("target") or {}
    equal = result.get("equal_work", {})
    lines += ["", f"Equal work: {'PASS' if equal.get('ok') else 'FAIL: ' + '; '.join(equal.get('problems', []))}. "
                  f"Target one-model ≤ {target.get('memory')}× four-model peak, judged on {target.get('judged_on')}: "
                  f"{target.get('ratio', float('nan')):.2f}×, {target.get('verdict')}."]
    return "\n".join(lines) + "\n"


TABLES = {"sft": trainer_table, "reward_model": trainer_table, "dpo": trainer_table, "grpo": trainer_table,
          "grpo_trl_cb": trainer_table, "ppo": ppo_table,
          "logprobs": logprobs_table}


def _range(values: list[float], fmt: str = ".1f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


def _async_records(tiny: bool) -> list[tuple[str, dict]]:
    name = "async_grpo_tiny" if tiny else "async_grpo"
    found = []
    for path in sorted(glob.glob(os.path.join(HERE, "results", "*-async-grpo*.json"))):
        with open(path) as f:
            record = json.load(f)
        if record.get("benchmark") == name:
            found.append((path, record))
    return found


def async_grpo_table() -> str:
    """docs/rl.md: every committed speed comparison of benchmarks/async_grpo.py, oldest first. Seconds per update
    and mean completion length are over the timed updates (after the warm-up); ratios are the medians of the
    paired runs with their range."""
    import statistics

    lines = ["| results file | prompts × G, max tokens | timed updates × pairs | sync s/update | async s/update | "
             "mean length sync / async | completions/s async/sync | completion tokens/s async/sync | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, record in _async_records(tiny=False):
        s, row = record["settings"], record["rows"][0]
        runs = {side: [x for x in record["samples"] if x["side"] == side] for side in ("sync", "async")}
        per_update = {side: [x["time_s"] / x["timed_steps"] for x in v] for side, v in runs.items()}
        length = {side: statistics.mean(m for x in v for m in x["mean_lengths"][s["warmup"]:])
                  for side, v in runs.items()}
        verdict = row["verdict"] if not row["problems"] else "UNEQUAL: " + "; ".join(row["problems"])
        lines.append(f"| `{os.path.basename(path)}` | {s['prompts_per_step']} × {s['generations']}, "
                     f"{s['max_completion_length']} | {s['steps'] - s['warmup']} × {len(runs['async'])} | "
                     f"{_range(per_update['sync'])} | {_range(per_update['async'])} | "
                     f"{length['sync']:.1f} / {length['async']:.1f} | {ratio(row.get('speed'))} | "
                     f"{ratio(row.get('token_speed'))} | {verdict} |")
    return "\n".join(lines) + "\n"


def async_grpo_tiny_table() -> str:
    """docs/rl.md: the reward curves of benchmarks/async_grpo.py --tiny, newest file: mean reward over seeds of the
    first and last 4 updates, the gain, and the per-seed range of the last 4 updates' mean."""
    import statistics

    found = _async_records(tiny=True)
    if not found:
        return "*No results yet: run `python benchmarks/async_grpo.py --tiny`.*\n"
    path, record = found[-1]
    s, row = record["settings"], record["rows"][0]
    lines = [f"`{os.path.basename(path)}`: {MODELS.get(row['model'], row['model'])}, {s['steps']} updates, "
             f"seeds {', '.join(map(str, s['seeds']))}; verdict {row['verdict']} (async's gain ≥ "
             f"{s['tiny_gain_share']} × sync's)", "",
             "| side | mean reward, first 4 updates | last 4 updates | gain | last 4 updates, per seed |",
             "|---|---|---|---|---|"]
    for side in ("sync", "async"):
        curve = row["curves"][side]
        ends = [statistics.mean(x["rewards"][-4:]) for x in record["samples"] if x["side"] == side]
        lines.append(f"| {side} | {statistics.mean(curve[:4]):.3f} | {statistics.mean(curve[-4:]):.3f} | "
                     f"{row['gain'][side]:+.3f} | {_range(ends, '.3f')} |")
    return "\n".join(lines) + "\n"


def guardrails_table() -> str:
    """docs/safety.md: a policy behind the runtime guardrails (`alignkit safety-eval --guardrails`), one column
    per guard of the newest `<date>-guardrails.json`: refusal of each plain-request set, with the bars of issue
    22 (refusal of the harmful sets; over-refusal of the safe ones within 5 points of the base model alone)."""
    found = sorted(glob.glob(os.path.join(HERE, "results", "*-guardrails.json")))
    if not found:
        return "*No results yet: run `alignkit safety-eval --guardrails --model ...`.*\n"
    with open(found[-1]) as f:
        record = json.load(f)
    runs, alone = record["runs"], record["base_alone"]
    lines = [f"`{os.path.basename(found[-1])}`: {MODELS.get(record['model'], record['model'])}, greedy, at most "
             f"{record['max_new_tokens']} new tokens, refusals read by `{record['refusal_scorer']}`", "",
             "| prompts | n | alone | " + " | ".join(r["label"] for r in runs) + " | wanted |",
             "|---|---|---|" + "---|" * len(runs) + "---|"]

    def cell(m):
        return f"{100 * m['rate']:.1f}% ({100 * m['low']:.0f}–{100 * m['high']:.0f})"

    for name, base in alone.items():
        first = runs[0]["policy"][name]
        wanted = f"≥ {record['bars'][name]:.0%}" if first["harmful"] else f"≤ {100 * base['rate'] + 5:.1f}%"
        lines.append(f"| {name}: {'refused' if first['harmful'] else 'over-refused'} | {base['n']} | {cell(base)} | "
                     + " | ".join(cell(run["policy"][name]["refused"]) for run in runs) + f" | {wanted} |")
    lines += ["", "| guard | threshold | " + " | ".join(f"{name}: flagged" for name in record["guard_sets"]) + " |",
              "|---|---|" + "---|" * len(record["guard_sets"])]
    for run in runs:
        flagged = [f"recall {m['recall']:.3f}, FPR {m['false_positive_rate']:.3f}"
                   for m in (run["guard_tables"][name] for name in record["guard_sets"])]
        lines.append(f"| {run['label']} (`{run['guard']}`) | {run['threshold']:.3f} | " + " | ".join(flagged) + " |")
    return "\n".join(lines) + "\n"


SPECIAL = {"async-grpo": async_grpo_table, "async-grpo-tiny": async_grpo_tiny_table, "guardrails": guardrails_table}


def render(name: str) -> str:
    if name in SPECIAL:
        return SPECIAL[name]()
    suite, benchmark = name.split("/", 1)
    found = newest(suite, benchmark)
    if found is None:
        return f"*No results yet: run `python benchmarks/run.py --suite {suite} --only {benchmark}`.*\n"
    path, record = found
    result = record["benchmarks"][benchmark]["result"]
    table = TABLES.get(benchmark, generic_table)
    return heading(path, record, result) + table(result)


def generate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is not what the results give")
    p.add_argument("--doc", default=DOC)
    args = p.parse_args(argv)
    with open(args.doc) as f:
        text = f.read()
    new = generate(text)
    if args.check:
        if new != text:
            print(f"{args.doc}: the generated tables differ from benchmarks/results/: run python benchmarks/tables.py")
            return 1
        print(f"{args.doc}: tables match the results")
        return 0
    if new != text:
        with open(args.doc + ".tmp", "w") as f:
            f.write(new)
        os.replace(args.doc + ".tmp", args.doc)
    print(f"{args.doc}: {len(BLOCK.findall(new))} generated table(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
