"""`alignkit demo` (what `make demo` runs): the packaged demo recipe, then its results in a few lines.

Each `print_*` reads what a stage wrote (run.json, results files) and prints nothing when its stage has not
run, so they also describe a partial run or a recipe that shares some of the demo's stage names.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit import __version__
from alignkit.data.io import read_jsonl_file
from alignkit.engine.outputs import read_status
from alignkit.feedback.winrate import describe
from alignkit.pipeline import run_pipeline
from alignkit.stats import format_rate, wilson_interval

INTRO = (f"alignkit {__version__} demo: SmolLM2-135M-Instruct answers, learns from the built-in SFT data (LoRA) "
         "and answers again; then it samples response pairs, a simulated annotator labels them, a reward model and "
         "a DPO policy learn those preferences, and the annotator compares DPO's answers with SFT's\n")


def run_demo(output_dir: str | None = None) -> Path:
    """Run (or finish) the demo pipeline and print what it found; returns its directory."""
    print(INTRO, flush=True)
    root = run_pipeline("demo", {"output_dir": output_dir} if output_dir else None)
    print_before_after(root)
    print_reward_model_result(root)
    print_win_rate(root)
    print_redteam(root)
    print(f"\nreports: {root / 'index.html'}")
    return root


def print_before_after(root: Path) -> None:
    """The demo's first stages: each built-in prompt answered before and after SFT."""
    before = read_jsonl_file(root / "before" / "generations.jsonl")
    after = read_jsonl_file(root / "after" / "generations.jsonl")
    for b, a in zip(before, after):
        question = b["prompt"][-1]["content"] if isinstance(b["prompt"], list) else b["prompt"]
        print(f"\nQ: {question}\n  before: {one_line(b['completion'])}\n  after:  {one_line(a['completion'])}")


def print_redteam(root: Path) -> None:
    """The demo's red-team stage: attack success and over-refusal of the final (PPO) policy."""
    path = root / "redteam" / "results.json"
    if not path.exists():
        return
    results = json.loads(path.read_text())
    worst = max(results["asr"]["by_attack"].items(), key=lambda item: item[1]["rate"] or 0.0)
    print(f"\nred team (PPO policy, {results['asr']['overall']['n']} attacked held-out requests): attack success "
          f"{format_rate(results['asr']['overall'])}, most effective attack {worst[0]} {format_rate(worst[1])}; "
          f"over-refusal on benign look-alikes {format_rate((results.get('over_refusal') or {}).get('any'))}")


def print_reward_model_result(root: Path) -> None:
    """The demo's reward model against the simulated annotator, on pairs for the held-out prompts."""
    judged = read_status(root / "judge")
    accuracy = read_status(root / "reward_model").get("eval", {}).get("eval/accuracy")
    if not judged or accuracy is None:
        return
    held_out = sum(r.get("split") == "test" for r in read_jsonl_file(root / "judge" / "preferences.jsonl"))
    low, high = wilson_interval(accuracy * held_out, held_out)
    print(f"\npreferences: the simulated annotator (rubric) judged {judged['comparisons']} response pairs: "
          f"{judged['preferences']} preferences, {judged['ties']} ties")
    print(f"reward model: held-out accuracy {accuracy:.1%} (95% interval {low:.0%}-{high:.0%}) against the "
          f"annotator's labels on {held_out} pairs for test-split prompts; 50% is chance")


def print_win_rate(root: Path) -> None:
    """The demo's DPO (and PPO) policies against their SFT starting point, on the held-out prompts."""
    summary = read_status(root / "win_rate")
    if summary.get("status") == "complete":
        print(f"\nDPO: {describe(summary, 'the DPO policy', 'the SFT policy')}, answering held-out prompts")
    print_ppo_result(root)


def print_ppo_result(root: Path) -> None:
    """The demo's PPO stage: reward-model score and KL over training, then its held-out win rate."""
    metrics = root / "ppo" / "metrics.jsonl"
    if read_status(root / "ppo").get("status") != "complete" or not metrics.exists():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    k = max(1, len(rows) // 4)
    first = sum(r["objective/scores"] for r in rows[:k]) / k
    last = sum(r["objective/scores"] for r in rows[-k:]) / k
    kl = sum(r["objective/kl"] for r in rows[-k:]) / k
    print(f"\nPPO: reward-model score {first:.2f} -> {last:.2f} (mean of the first and last {k} of {len(rows)} "
          f"updates), KL to the SFT policy {kl:.2f} nats per response at the end")
    summary = read_status(root / "ppo_win_rate")
    if summary.get("status") == "complete":
        print(f"PPO: {describe(summary, 'the PPO policy', 'the SFT policy')}, answering held-out prompts")


def one_line(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
