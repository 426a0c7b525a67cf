"""Over-refusal on XSTest (Röttger et al. 2024): the 250 safe prompts that look unsafe, and the 200 unsafe
contrasts beside them, asked plainly (no attack) through `alignkit redteam`.

    python benchmarks/xstest.py --model embedded:smollm2-135m-instruct [--model runs/x/model ...]

The CSV is passed by path (default ../shared/data/xstest/xstest_prompts.csv) and never copied into the
repository; cite the XSTest paper when reporting its numbers. For each model it prints, with 95% Wilson
intervals: over-refusal on the safe prompts (full and partial refusal, XSTest's three classes, by prompt
type) and the refusal rate on the unsafe contrasts (a model should refuse those). A model that refuses
everything scores 100% on both; one that refuses nothing, 0% on both: read them together.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

DEFAULT_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"


def convert(csv_path: Path, out: Path) -> tuple[Path, Path, dict[str, str]]:
    """XSTest rows as alignkit prompt files: unsafe contrasts as requests (hazard = their type), safe prompts as
    benign look-alikes (looks_like = their type). Returns both paths and request text → type."""
    safe, unsafe, kinds = [], [], {}
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            prompt = [{"role": "user", "content": row["prompt"]}]
            kinds[row["prompt"]] = row["type"]
            if row["label"] == "safe":
                safe.append({"prompt": prompt, "looks_like": row["type"]})
            else:
                unsafe.append({"prompt": prompt, "hazard": row["type"]})
    paths = out / "xstest_unsafe.jsonl", out / "xstest_safe.jsonl"
    for path, rows in zip(paths, (unsafe, safe)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths[0], paths[1], kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="model(s) to measure (repeatable)")
    parser.add_argument("--data", default=str(DEFAULT_CSV), help="xstest_prompts.csv")
    parser.add_argument("--refusal_scorer", default="both", choices=("rules", "classifier", "both"))
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--output_dir", default="runs/xstest")
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"xstest: {args.data}: not found; pass --data PATH/xstest_prompts.csv", file=sys.stderr)
        return 2

    from alignkit.stats import wilson_interval
    from alignkit.safety.redteam import RedTeamConfig, run_redteam

    def pct(k: int, n: int) -> str:
        low, high = wilson_interval(k, n)
        return f"{100 * k / n:5.1f}% ({100 * low:.0f}–{100 * high:.0f})"

    work = Path(tempfile.mkdtemp(prefix="xstest-"))
    unsafe, safe, kinds = convert(Path(args.data), work)
    summary = {}
    for index, model in enumerate(args.model or ["embedded:smollm2-135m-instruct"]):
        out = Path(args.output_dir) / f"model{index}"
        run_redteam(RedTeamConfig(model_name_or_path=model, dataset_name=str(unsafe), benign_dataset_name=str(safe),
                                  dataset_split="", attacks="none", harm_judge="none",
                                  refusal_scorer=args.refusal_scorer, max_new_tokens=args.max_new_tokens,
                                  output_dir=str(out)))
        benign = [json.loads(line) for line in (out / "benign.jsonl").read_text().splitlines()]
        attacked = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
        by_type = defaultdict(list)
        for b in benign:
            by_type[b["looks_like"]].append(b["class"] != "full_compliance")
        n = len(benign)
        full = sum(b["class"] == "full_refusal" for b in benign)
        partial = sum(b["class"] == "partial_refusal" for b in benign)
        refused_unsafe = sum(t["refused"] for t in attacked)
        print(f"\n{model}")
        print(f"  over-refusal, {n} safe prompts:   {pct(full + partial, n)}  (full {pct(full, n)}, "
              f"partial {pct(partial, n)})")
        print(f"  refusal, {len(attacked)} unsafe contrasts: {pct(refused_unsafe, len(attacked))}")
        for kind, flags in sorted(by_type.items()):
            print(f"    {kind:<24} over-refusal {pct(sum(flags), len(flags))}")
        summary[model] = {"safe_n": n, "over_refusal": (full + partial) / n, "full_refusal": full / n,
                          "partial_refusal": partial / n, "unsafe_n": len(attacked),
                          "unsafe_refusal": refused_unsafe / len(attacked),
                          "by_type": {k: sum(v) / len(v) for k, v in by_type.items()}}
    (Path(args.output_dir) / "xstest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
