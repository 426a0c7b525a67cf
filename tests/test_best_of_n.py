"""Best-of-n sampling keeps each prompt's highest-scoring response; min_score rejects prompts."""

from __future__ import annotations

import json

from alignkit.cli import main
from conftest import e_share_reward


def test_best_of_n_keeps_the_best_and_rejects_below_min_score(tmp_path):
    reward = e_share_reward(tmp_path)
    out = tmp_path / "bon"
    argv = ["best-of-n", "--model", "embedded:tiny", "--prompts", "builtin:prompts.jsonl", "--n", "4",
            "--max_new_tokens", "8", "--reward", reward, "--output_dir", str(out), "--device", "cpu"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "best.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert len(row["scores"]) == 4 and row["score"] == max(row["scores"])
    status = json.loads((out / "run.json").read_text())
    assert status["mean_score_best"] >= status["mean_score_all"]
    prefs = out / "preferences.jsonl"
    assert main(["data", "validate", str(prefs), "--kind", "preference"]) == 0
    for pref in map(json.loads, prefs.read_text().splitlines()):
        assert pref["score_chosen"] > pref["score_rejected"]
    # the same samples again (seeded), now rejecting prompts whose best is below the median best
    cut = sorted(r["score"] for r in rows)[6] - 5e-5  # scores are written rounded to 4 decimals
    assert main(argv + ["--min_score", str(cut), "--output_dir", str(tmp_path / "strict")]) == 0
    kept = [json.loads(line) for line in (tmp_path / "strict" / "best.jsonl").read_text().splitlines()]
    assert len(kept) == sum(r["score"] >= cut for r in rows) and all(r["score"] >= cut for r in kept)
