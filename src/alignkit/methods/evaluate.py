"""Evaluate a policy on held-out problems: pass@k and mean reward, each with a 95% interval.

Each problem (a prompt row of the held-out split) gets n samples: episodes in an environment (`environment`:
calculator, retrieval, module:Class, file.py:Class; the episode's reward is the sum of its turn rewards, plus
`reward_funcs` on the last turn's text when both are given, as GRPO scores episodes), or single responses
scored by `reward_funcs` (a verifiable module:function, rm:PATH, ...). A sample passes when its reward is at
least `success_threshold`.

pass@k is the unbiased estimator of Chen et al. 2021 (eq. 1), 1 − C(n−c, k)/C(n, k) for a problem with c of
n samples passing, averaged over problems; the mean reward averages each problem's mean. Both intervals are
95% percentile-bootstrap intervals over problems (`stats.bootstrap_mean`, 2000 resamples, seeded): problems,
not samples, are the independent units. With temperature 0 (greedy) n must be 1, since greedy decoding gives
n identical samples.

Writes eval.json (settings, counts, pass@k and mean reward with intervals, finish reasons) and samples.jsonl
(one row per sample: the problem row's columns, the completion or the episode's transcript, reward, passed,
finish_reason). It lives with the methods because it samples (rollout) and scores (rewards).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.config import to_flat_dict
from alignkit.data.io import read_jsonl_file, write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.files import write_text_atomic
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rewards.sources import reward_mix
from alignkit.rollout.episodes import episodes_rollout, model_sampler, run_episodes
from alignkit.rollout.generate import SamplingSettings, generate, stop_ids
from alignkit.rollout.settings import EnvSettings
from alignkit.stats import bootstrap_mean, pass_at_k

RESAMPLES = 2000
"""Bootstrap resamples of the problems for each interval."""


@dataclass
class EvalConfig:
    """Evaluate a policy on held-out problems: pass@k and mean reward with 95% intervals."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to evaluate: embedded:NAME, a local checkpoint, a run directory, a hub id, or stage:NAME."""
    dataset_name: str = ""
    """Prompt rows (the problems; extra columns such as the answer go to the environment and the reward
    functions); several files separated by commas."""
    dataset_split: str | None = "test"
    """Only the rows whose "split" column has this value (none: every row)."""
    max_problems: int = 0
    """Use only the first this many problems of each file (0: all)."""
    reward_funcs: str | None = None
    """Reward sources separated by spaces (module:function, file.py:function, rm:PATH, rules, contains:TEXT,
    ...; docs/rl.md). Needed without an environment; with one, added to the episode's reward on its last turn."""
    reward_weights: str | None = None
    """One weight per reward source, separated by spaces (default: all 1)."""
    success_threshold: float = 1.0
    """A sample passes when its reward is at least this."""
    baseline: str | None = None
    """Other evaluations on the same problems, separated by commas (each an eval.json or its run directory;
    stage:NAME in a recipe): report the paired difference of pass@k and mean reward against each, with 95%
    intervals over problems."""
    k: list[int] = field(default_factory=lambda: [1])
    """The k of each pass@k to report (each at most num_return_sequences)."""
    output_dir: str = "runs/eval"
    """Directory for eval.json, samples.jsonl and run.json."""
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=0.0))
    """How to sample (flat keys: num_return_sequences (n, samples per problem; alias --num_samples),
    temperature (0: greedy, n must be 1), top_p, top_k, max_new_tokens (per turn), batch_size (problems per
    batch), seed)."""
    env: EnvSettings = field(default_factory=EnvSettings)
    """Episodes in an environment (flat keys: environment, max_turns, max_episode_tokens); none: single
    responses scored by reward_funcs."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "reward_funcs": ("--reward",), "num_return_sequences": ("--num_samples", "--n")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the problems (--dataset_name / --prompts FILE)")
        self.sampling.check()
        self.env.check()
        n = self.sampling.num_return_sequences
        if n > 1 and self.sampling.temperature == 0:
            raise AlignkitError(f"config: temperature: {n} samples per problem need temperature > 0 (greedy "
                                "decoding gives identical samples)")
        if not self.k:
            raise AlignkitError("config: k: give at least one k")
        bad = [k for k in self.k if not 1 <= k <= n]
        if bad:
            raise AlignkitError(f"config: k: each k must be between 1 and num_return_sequences ({n}), got {bad[0]}")
        if not self.env.environment and not self.reward_funcs:
            raise AlignkitError("config: reward_funcs: without an environment, give reward sources to score the "
                                "responses (--reward SPEC)")
        if self.max_problems < 0:
            raise AlignkitError(f"config: max_problems: must be >= 0, got {self.max_problems}")


def run_eval(config: EvalConfig) -> Path:
    """Sample, score and summarise; returns eval.json."""
    import torch

    with run_owner(config, kind="eval", model=config.model_name_or_path) as run:
        run.start()
        started = time.time()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = load_prompt_rows(config.dataset_name, config.max_problems, split=config.dataset_split)
        if not rows:
            raise AlignkitError(f"{config.dataset_name}: no problems to evaluate")
        rewards = None
        if config.reward_funcs:
            rewards = reward_mix(config.reward_funcs, config.reward_weights, device=config.device,
                                 max_new_tokens=config.sampling.max_new_tokens)
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        torch.manual_seed(config.sampling.seed)
        sample = sample_episodes if config.env.environment else sample_responses
        samples = sample(model, tokenizer, rows, config, rewards)
        for s in samples:
            s["passed"] = s["reward"] >= config.success_threshold
        summary = summarize(rows, samples, config)
        if config.baseline:
            summary["vs_baselines"] = [compare(b.strip(), rows, samples, config)
                                       for b in config.baseline.split(",") if b.strip()]
        write_jsonl(out / "samples.jsonl", samples)
        write_text_atomic(out / "eval.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        headline = {f"pass@{k}": round(v["mean"], 4) for k, v in summary["pass_at_k"].items()}
        run.complete(problems=len(rows), samples=len(samples), **headline,
                     mean_reward=round(summary["mean_reward"]["mean"], 4), seconds=round(time.time() - started, 1))
        print(summary_line(summary), flush=True)
        return out / "eval.json"


def sample_responses(model, tokenizer, rows: list[dict], config: EvalConfig, rewards) -> list[dict]:
    """n single responses per problem, scored by the reward sources; one sample row each, problem-major."""
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], config.sampling)
    flat = [(row, j, g) for row, gens in zip(rows, outputs) for j, g in enumerate(gens)]
    scores, parts = rewards([row["prompt"] for row, _, _ in flat], [g.completion for _, _, g in flat],
                            [g.finish_reason for _, _, g in flat], [len(g.completion_ids) for _, _, g in flat],
                            [row for row, _, _ in flat])
    return [{**row, "sample": j, "completion": g.completion, "reward": score, "finish_reason": g.finish_reason,
             **_parts(parts, i)} for i, ((row, j, g), score) in enumerate(zip(flat, scores))]


def sample_episodes(model, tokenizer, rows: list[dict], config: EvalConfig, rewards) -> list[dict]:
    """n episodes per problem in the environment, batch_size problems at a time (in lockstep); the episode's
    reward, plus the reward sources' score of its last turn when there are any."""
    from tqdm.auto import tqdm

    n = config.sampling.num_return_sequences
    stop = stop_ids(model, tokenizer)
    sample_fn = model_sampler(model, config.sampling, stop, tokenizer.pad_token_id)
    samples = []
    for start in tqdm(range(0, len(rows), config.sampling.batch_size), desc="episodes", unit="batch", leave=False):
        chunk = rows[start:start + config.sampling.batch_size]
        episodes = run_episodes(sample_fn, tokenizer, chunk, config.env.environment, n,
                                config.sampling.max_new_tokens, config.env, stop)
        rollout = episodes_rollout(episodes, n)
        extra, parts = [0.0] * len(episodes), {}
        if rewards is not None:
            extra, parts = rewards(rollout.prompts, rollout.completions, rollout.finish_reasons,
                                   [len(c) for c in rollout.completion_ids], rollout.rows)
            parts["environment"] = [e.reward for e in episodes]
        for i, episode in enumerate(episodes):
            samples.append({**episode.row, "sample": i % n, "transcript": rollout.extra["transcript"][i],
                            "completion": rollout.completions[i], "turns": episode.turns,
                            "reward": episode.reward + extra[i], "finish_reason": episode.finish_reason,
                            **_parts(parts, i)})
    return samples


def _parts(parts: dict[str, list[float]], i: int) -> dict:
    """Sample i's score from each reward source, when there is more than the total to show."""
    return {"rewards": {name: round(scores[i], 4) for name, scores in parts.items()}} if parts else {}


def summarize(rows: list[dict], samples: list[dict], config: EvalConfig) -> dict:
    """eval.json: the settings, the counts, pass@k and mean reward over problems with 95% bootstrap intervals,
    and how the samples finished. `samples` are problem-major, n per problem."""
    n = config.sampling.num_return_sequences
    groups = [samples[p * n:(p + 1) * n] for p in range(len(rows))]
    passed = [sum(s["passed"] for s in group) for group in groups]
    seed = config.sampling.seed
    pass_k = {str(k): bootstrap_mean([pass_at_k(n, c, k) for c in passed], RESAMPLES, seed) for k in config.k}
    mean_reward = bootstrap_mean([sum(s["reward"] for s in group) / n for group in groups], RESAMPLES, seed)
    summary = {
        "model": config.model_name_or_path,
        "dataset_name": config.dataset_name,
        "dataset_split": config.dataset_split,
        "environment": config.env.environment or None,
        "problems": len(rows),
        "samples_per_problem": n,
        "samples": len(samples),
        "passed_samples": sum(passed),
        "problems_with_a_pass": sum(c > 0 for c in passed),
        "success_threshold": config.success_threshold,
        "pass_at_k": pass_k,
        "mean_reward": mean_reward,
        "finish_reasons": dict(Counter(s["finish_reason"] for s in samples)),
        "interval": f"95% percentile bootstrap over problems, {RESAMPLES} resamples, seed {seed}",
        "settings": to_flat_dict(config),
    }
    if config.env.environment:
        summary["mean_turns"] = sum(s["turns"] for s in samples) / len(samples)
    return summary


def compare(baseline: str, rows: list[dict], samples: list[dict], config: EvalConfig) -> dict:
    """The paired differences (this − baseline) of pass@k and the mean reward over the same problems, each with
    a 95% bootstrap interval over problems: an improvement whose interval excludes 0 is not noise."""
    path = Path(baseline)
    path = path / "eval.json" if path.is_dir() else path
    if not path.is_file() or not (path.parent / "samples.jsonl").is_file():
        raise AlignkitError(f"{baseline}: baseline: no eval.json with samples.jsonl beside it (an `alignkit eval` "
                            "output directory)")
    before = json.loads(path.read_text())
    theirs = read_jsonl_file(path.parent / "samples.jsonl")
    m, n = before["samples_per_problem"], config.sampling.num_return_sequences
    if before["problems"] != len(rows) or len(theirs) != m * len(rows) or any(
            theirs[p * m].get("prompt") != rows[p].get("prompt") for p in range(len(rows))):
        raise AlignkitError(f"{baseline}: baseline: evaluated other problems ({before['problems']} vs {len(rows)}, "
                            "or in another order); evaluate both on the same dataset, split and max_problems")
    seed = config.sampling.seed
    out = {"baseline": str(path), "name": path.parent.name, "pass_at_k": {}}
    for k in config.k:
        if k > m:
            continue
        diffs = [pass_at_k(n, sum(s["passed"] for s in samples[p * n:(p + 1) * n]), k)
                 - pass_at_k(m, sum(bool(s["passed"]) for s in theirs[p * m:(p + 1) * m]), k)
                 for p in range(len(rows))]
        out["pass_at_k"][str(k)] = bootstrap_mean(diffs, RESAMPLES, seed)
    reward_diffs = [sum(s["reward"] for s in samples[p * n:(p + 1) * n]) / n
                    - sum(s["reward"] for s in theirs[p * m:(p + 1) * m]) / m for p in range(len(rows))]
    out["mean_reward"] = bootstrap_mean(reward_diffs, RESAMPLES, seed)
    return out


def summary_line(summary: dict) -> str:
    """"pass@1 42.0% (33.1–51.2), mean reward 0.42 (0.35–0.50) on 100 problems (test split)"."""
    def percent(r: dict) -> str:
        return f"{100 * r['mean']:.1f}% ({100 * r['low']:.1f}–{100 * r['high']:.1f})"

    reward = summary["mean_reward"]
    split = summary["dataset_split"]
    where = f" ({split} split)" if split else ""
    passes = ", ".join(f"pass@{k} {percent(r)}" for k, r in summary["pass_at_k"].items())
    line = (f"{passes}, mean reward {reward['mean']:.2f} ({reward['low']:.2f}–{reward['high']:.2f}) on "
            f"{summary['problems']} problems{where}")
    for versus in summary.get("vs_baselines", []):
        diffs = ", ".join(f"pass@{k} {100 * r['mean']:+.1f} points ({100 * r['low']:+.1f} to {100 * r['high']:+.1f})"
                          for k, r in versus["pass_at_k"].items())
        line += f"; against {versus['name']}: {diffs}"
    return line
