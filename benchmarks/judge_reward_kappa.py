"""How far the `llm:MODEL` reward agrees with the written rubric (the `rules` reward, the simulated annotator):
Cohen's κ between the two, each binarised, with a bootstrap interval. Not a test: it samples real responses.

    python benchmarks/judge_reward_kappa.py [--judge llm:embedded:smollm2-135m-instruct] [--per_set 16]
        [--samples 2] [--max_new_tokens 96] [--output benchmarks/results/judge_reward_kappa.json]

Items: `--per_set` prompts from each of the built-in helpful, harmful and benign-but-risky-looking sets
(their test split first), `--samples` SmolLM2 responses each (temperature 0.8), so the set holds refusals and
compliance, finished and cut-off answers. Both rewards score every (prompt, response) with the rows' tags
and finish reasons, exactly as in an RL run. Binarised two ways:

- fixed: rubric total > 0 ("more good than bad"), judge P(Yes) share > 0.5;
- median: each above its own median (balanced classes, whatever the judge's offset).

κ = (p_o − p_e)/(1 − p_e) (`alignkit.stats.cohen_kappa`); the 95% interval is the percentile bootstrap over
items (2,000 resamples). AUROC (the judge's score ranking rubric-good above rubric-bad items) needs no
threshold. Writes the figures, settings, machine and every item as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SETS = ("helpful.jsonl", "harmful.jsonl", "benign_risky.jsonl")
TAGS = ("hazard", "looks_like", "category")


def pick_rows(per_set: int, seed: int) -> list[dict]:
    """`per_set` rows of each built-in set, test split first, then a seeded draw from the rest."""
    from alignkit.data.builtin import builtin_path
    from alignkit.data.io import load_rows

    rng, picked = random.Random(seed), []
    for name in SETS:
        rows = load_rows(builtin_path(name))
        test = [r for r in rows if r.get("split") == "test"]
        rest = [r for r in rows if r.get("split") != "test"]
        rng.shuffle(test)
        rng.shuffle(rest)
        picked += [{**r, "set": name.removesuffix(".jsonl")} for r in (test + rest)[:per_set]]
    return picked


def binarise(values: list[float], threshold: float) -> list[bool]:
    return [v > threshold for v in values]


def bootstrap_kappa(first: list[bool], second: list[bool], resamples: int, seed: int) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of κ over resampled items (resamples where κ is undefined dropped)."""
    from alignkit.stats import cohen_kappa

    rng, n, values = random.Random(seed), len(first), []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        k = cohen_kappa([first[i] for i in idx], [second[i] for i in idx])
        if k is not None:
            values.append(k)
    values.sort()
    return values[int(0.025 * len(values))], values[min(len(values) - 1, int(0.975 * len(values)))]


def agreement(rubric: list[float], judge: list[float], rubric_cut: float, judge_cut: float, seed: int) -> dict:
    from alignkit.stats import cohen_kappa

    a, b = binarise(rubric, rubric_cut), binarise(judge, judge_cut)
    low, high = bootstrap_kappa(a, b, 2000, seed)
    return {"rubric_threshold": rubric_cut, "judge_threshold": judge_cut, "kappa": cohen_kappa(a, b),
            "kappa_95": [low, high], "agreement": sum(x == y for x, y in zip(a, b)) / len(a),
            "rubric_positive": sum(a) / len(a), "judge_positive": sum(b) / len(b)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge", default="llm:embedded:smollm2-135m-instruct")
    parser.add_argument("--policy", default="embedded:smollm2-135m-instruct", help="the model that answers")
    parser.add_argument("--per_set", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/judge_reward_kappa.json")
    args = parser.parse_args()

    import torch
    import transformers

    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rewards.sources import load_reward, rubric_reward
    from alignkit.rollout.generate import SamplingSettings, generate
    from alignkit.stats import auroc

    torch.set_num_threads(args.threads)
    rows = pick_rows(args.per_set, args.seed)
    started = time.perf_counter()
    tokenizer = load_tokenizer(args.policy, padding_side="left")
    policy = load_policy(args.policy, device="cpu").eval()
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0.8,
                                num_return_sequences=args.samples, batch_size=16, seed=args.seed)
    outputs = generate(policy, tokenizer, [r["prompt"] for r in rows], settings)
    del policy
    items = [{**row, "completion": g.completion, "finish_reason": g.finish_reason}
             for row, gens in zip(rows, outputs) for g in gens]
    generated = time.perf_counter()

    prompts, completions = [i["prompt"] for i in items], [i["completion"] for i in items]
    columns = {k: [i.get(k) for i in items] for k in TAGS}
    rubric = rubric_reward(prompts, completions, finish_reason=[i["finish_reason"] for i in items], **columns)
    judge = load_reward(args.judge, device="cpu")(prompts, completions)
    judged = time.perf_counter()

    good = binarise(rubric, 0.0)
    result = {
        "judge": args.judge, "policy": args.policy, "n": len(items), "per_set": args.per_set,
        "samples": args.samples, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "fixed": agreement(rubric, judge, 0.0, 0.5, args.seed),
        "median": agreement(rubric, judge, statistics.median(rubric), statistics.median(judge), args.seed),
        "auroc_judge_vs_rubric_good": auroc(judge, good),
        "by_set": {s: {"n": sum(i["set"] == s for i in items),
                       "rubric_mean": statistics.fmean(r for r, i in zip(rubric, items) if i["set"] == s),
                       "judge_mean": statistics.fmean(j for j, i in zip(judge, items) if i["set"] == s)}
                   for s in dict.fromkeys(i["set"] for i in items)},
        "seconds": {"generate": generated - started, "judge_and_rubric": judged - generated},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "threads": args.threads, "device": "cpu",
                    "dtype": "float32"},
        "items": [{"set": i["set"], "prompt": i["prompt"], "completion": i["completion"],
                   "finish_reason": i["finish_reason"], "rubric": r, "judge": j}
                  for i, r, j in zip(items, rubric, judge)],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("fixed", "median"):
        r = result[name]
        print(f"{name:>6}: kappa {r['kappa']:.3f} (95% {r['kappa_95'][0]:.3f} to {r['kappa_95'][1]:.3f}), "
              f"agreement {r['agreement']:.1%}, rubric-good {r['rubric_positive']:.1%}, "
              f"judge-good {r['judge_positive']:.1%}, n={len(items)}")
    print(f"AUROC (judge score, rubric-good) {result['auroc_judge_vs_rubric_good']:.3f}; "
          f"by set: {json.dumps(result['by_set'])}")
    print(f"generate {result['seconds']['generate']:.0f} s, score {result['seconds']['judge_and_rubric']:.0f} s; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
