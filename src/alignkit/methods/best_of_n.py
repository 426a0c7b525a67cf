"""Best-of-n (rejection) sampling: n responses per prompt, scored by any reward source, the best kept.

Writes best.jsonl: one SFT row per prompt, {"prompt", "completion": the best response, "score", "scores":
all n, extra columns}; with `min_score`, prompts whose best falls below it are left out (rejection
sampling). Also pairs.jsonl-style preferences (best over worst) in preferences.jsonl, for reward-model or
DPO training. Reward sources are the online-RL trainers' (`rewards.sources`: rm:PATH, rules, a Python
function, ...), combined with weights. It lives with the methods, not in rollout/, because it uses both
rollout (sampling) and rewards (scoring), which sit below it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.data.formats import preference_row
from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rewards.sources import reward_mix
from alignkit.rollout.generate import SamplingSettings, generate


@dataclass
class BestOfNConfig:
    """Sample n responses per prompt, score them, keep the best."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to sample from."""
    dataset_name: str = ""
    """Prompt rows; several files separated by commas."""
    dataset_split: str | None = None
    """Only the rows whose "split" column has this value."""
    reward_funcs: str = "rules"
    """Reward sources separated by spaces: rm:PATH, rules, llm:MODEL, openai:URL#MODEL, module:function,
    file.py:function, contains:TEXT, max_words:N (docs/rl.md); several run concurrently."""
    reward_weights: str | None = None
    """One weight per reward source, separated by spaces (default: all 1)."""
    min_score: float | None = None
    """Leave out prompts whose best response scores below this (rejection sampling)."""
    output_dir: str = "runs/best_of_n"
    """Directory for best.jsonl, preferences.jsonl and run.json."""
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(num_return_sequences=4,
                                                                                 temperature=1.0))
    """How to sample (flat keys: num_return_sequences (n), temperature, top_p, top_k, max_new_tokens,
    batch_size, seed)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "reward_funcs": ("--reward",), "num_return_sequences": ("--n",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the prompts (--prompts FILE)")
        self.sampling.check()
        if self.sampling.num_return_sequences < 2:
            raise AlignkitError("config: num_return_sequences: best-of-n needs n >= 2")


def run_best_of_n(config: BestOfNConfig) -> Path:
    """Sample, score, keep the best; returns best.jsonl."""
    with run_owner(config, kind="best_of_n", model=config.model_name_or_path) as run:
        run.start()
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = load_prompt_rows(config.dataset_name, split=config.dataset_split)
        rewards = reward_mix(config.reward_funcs, config.reward_weights, device=config.device,
                             max_new_tokens=config.sampling.max_new_tokens)
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        outputs = generate(model, tokenizer, [r["prompt"] for r in rows], config.sampling)
        flat = [(row, g) for row, gens in zip(rows, outputs) for g in gens]
        scores, _ = rewards([row["prompt"] for row, _ in flat], [g.completion for _, g in flat],
                            [g.finish_reason for _, g in flat], [len(g.completion_ids) for _, g in flat],
                            [row for row, _ in flat])
        n = config.sampling.num_return_sequences
        best_rows, preferences, rejected = [], [], 0
        for k, row in enumerate(rows):
            group = [(scores[k * n + j], outputs[k][j].completion) for j in range(n)]
            ranked = sorted(group, key=lambda item: -item[0])
            (best_score, best), (worst_score, worst) = ranked[0], ranked[-1]
            if config.min_score is not None and best_score < config.min_score:
                rejected += 1
                continue
            extra = {k2: v for k2, v in row.items() if k2 != "prompt"}
            prompt = row["prompt"]
            completion = [{"role": "assistant", "content": best}] if isinstance(prompt, list) else best
            best_rows.append({"prompt": prompt, "completion": completion, "score": round(best_score, 4),
                              "scores": [round(s, 4) for s, _ in group], **extra})
            if best.strip() and worst.strip() and best != worst and best_score > worst_score:
                preferences.append(preference_row(prompt, best, worst, None, f"best_of_{n}", {
                    **extra, "score_chosen": round(best_score, 4), "score_rejected": round(worst_score, 4)}))
        write_jsonl(out / "best.jsonl", best_rows)
        write_jsonl(out / "preferences.jsonl", preferences)
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        summary = {"prompts": len(rows), "kept": len(best_rows), "rejected": rejected, "n": n,
                   "mean_score_all": round(mean(scores), 4),
                   "mean_score_best": round(mean([r["score"] for r in best_rows]), 4)}
        run.complete(**summary, seconds=round(time.time() - started, 1))
        print(f"best-of-{n}: {len(rows)} prompts, mean score {summary['mean_score_all']} over all samples, "
              f"{summary['mean_score_best']} over the kept best; {rejected} rejected; wrote {out / 'best.jsonl'}",
              flush=True)
        return out / "best.jsonl"
