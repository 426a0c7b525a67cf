"""The default guard recipe on three training seeds: prompt classification on the built-in held-out split and
XSTest (never trained on), with intervals; the table docs/guard.md shows.

    python benchmarks/guard_seeds.py [--xstest ../shared/data/xstest/xstest_prompts.csv] [--encoder smollm2]
        [--seeds 0,1,2] [--output benchmarks/results/guard_seeds.json]

The seed draws the head's initialisation and the calibration folds; the features are the same for every seed,
so they are computed once. Writes the raw numbers as JSON and prints one row per seed and data set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

DEFAULT_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xstest", default=str(DEFAULT_CSV), help="XSTest's xstest_prompts.csv")
    parser.add_argument("--encoder", default="smollm2", choices=("smollm2", "minilm"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", default="benchmarks/results/guard_seeds.json")
    args = parser.parse_args()

    from alignkit.safety import policy_encoder
    from alignkit.safety.evaluate import guard_table
    from alignkit.safety.guard import (
        GuardClassifier,
        GuardConfig,
        builtin_rows,
        training_rows,
    )
    from alignkit.safety.guard_eval import xstest_rows

    sets = {"held-out prompts": [r for r in builtin_rows("test") if r["role"] == "prompt"],
            "held-out responses": [r for r in builtin_rows("test") if r["role"] == "response"]}
    if Path(args.xstest).is_file():
        sets["XSTest prompts"] = xstest_rows(args.xstest)
    else:
        print(f"guard_seeds: {args.xstest}: not found; XSTest skipped (pass --xstest)", file=sys.stderr)
    rows, results = training_rows(), []
    if args.encoder == "smollm2":  # keep every text's features, so that only the first seed computes them
        policy_encoder._POLICY_ENCODERS["smollm2"] = policy_encoder.PolicyStateEncoder(cache_size=10_000)
    print(f"{'seed':>4} {'data':<20} {'P':>6} {'R':>6} {'F1':>6} {'F1 95%':>11} {'FPR':>6} {'AUPRC':>6}")
    for seed in (int(s) for s in args.seeds.split(",")):
        guard = GuardClassifier.train(rows, GuardConfig(seed=seed, encoder=args.encoder))
        for name, data in sets.items():
            m = guard_table(guard, data, seed)
            m.pop("accuracy_by_type", None)
            results.append({"seed": seed, "data": name, "encoder": args.encoder, **m})
            low, high = m["f1_interval"]
            print(f"{seed:>4} {name:<20} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f} "
                  f"{low:>5.2f}–{high:<5.2f} {m['false_positive_rate']:>6.3f} {m['auprc']:>6.3f}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
