"""Reward sources for online RL, named by a spec string, and their weighted combination.

Every source is a callable `f(prompts, completions, **columns) -> list[float]`; columns are the prompt
rows' extra fields (e.g. `answer` for a maths task, `hazard` for the rubric) plus `finish_reason`.

| spec | source |
|---|---|
| `rm:PATH` | a reward model saved by `alignkit rm`: its run directory or `model/` in it (`rm:A,B` is the ensemble mean) |
| `rules` | the simulated annotator's rubric total (`alignkit.rewards.rubric`) for each response |
| `llm:MODEL` | a local LM judges each response alone: P(Yes) / (P(Yes) + P(No)) for a written rubric (`rewards.llm`) |
| `openai:URL#MODEL` | that judge on an OpenAI-compatible server (Yes/No log-probs, else a 1–10 score) |
| `module:function` or `path/to/file.py:function` | any Python function with the signature above (verifiable rewards) |
| `contains:TEXT` | 1 when the completion contains TEXT, else 0 (a known target, for tests and smoke runs) |
| `max_words:N` | 1 up to N words, falling linearly to 0 at 2N (a short-answer target) |

`RewardMix` adds weighted sources and two optional penalties: one for a response cut at the length limit
(no EOS), and DAPO's soft over-length penalty, which ramps from 0 to −1 over the last `overlong_buffer`
tokens before max_new_tokens. With more than one source, `RewardMix` runs them at the same time (one thread
each; a model judge and a reward model overlap, as do requests to a server), keeping the results in source
order. A source may be `async def` (or return an awaitable): it is awaited in its own event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError
from alignkit.imports import load_object
from alignkit.rewards.combine import Ensemble
from alignkit.rewards.llm import LocalLLMReward, openai_reward
from alignkit.rewards.model import RewardModel
from alignkit.rewards.rubric import RubricContext, is_harmful_prompt, score_response
from alignkit.rewards.specs import REWARD_SPECS

RewardFn = Callable[..., list]


def contains(text: str) -> RewardFn:
    def reward(prompts, completions, **columns) -> list[float]:
        return [1.0 if text in c else 0.0 for c in completions]

    reward.__name__ = f"contains:{text}"
    return reward


def max_words(limit: int) -> RewardFn:
    def reward(prompts, completions, **columns) -> list[float]:
        return [min(1.0, max(0.0, 2.0 - len(c.split()) / limit)) for c in completions]

    reward.__name__ = f"max_words:{limit}"
    return reward


def rubric_reward(prompts, completions, **columns) -> list[float]:
    """The rubric's weighted total for each response (harmfulness from the row's tags)."""
    rows = [{**{k: v[i] for k, v in columns.items()}, "prompt": p} for i, p in enumerate(prompts)]
    return [score_response(row["prompt"], c, RubricContext(is_harmful_prompt(row), row.get("finish_reason"))).total
            for c, row in zip(completions, rows)]


def _python_function(spec: str) -> RewardFn:
    fn = load_object(spec, "reward")
    if not callable(fn):
        raise AlignkitError(f"reward: {spec!r} is not a function")
    return fn


def reward_model(paths: str, device: str = "auto"):
    """The reward model at PATH, or the ensemble mean of PATH,PATH,... (the argument of an `rm:` spec)."""
    models = [RewardModel(p.strip(), device=device) for p in paths.split(",") if p.strip()]
    if not models:
        raise AlignkitError(f"rm: no reward model path in {paths!r}")
    if len(models) == 1:
        return models[0]
    return Ensemble(models)


def load_reward(spec: str, device: str = "auto") -> RewardFn:
    """A reward source from its spec (see the module docstring)."""
    kind, arg = REWARD_SPECS.parse(spec)
    if kind == "rm":
        return reward_model(arg, device)
    if kind == "rules":
        return rubric_reward
    if kind == "llm":
        return LocalLLMReward(arg, device=device)
    if kind == "openai":
        return openai_reward(arg)
    if kind == "contains":
        return contains(arg)
    if kind == "max_words":
        try:
            return max_words(int(arg))
        except ValueError:
            raise AlignkitError(f"reward: max_words needs a whole number, got {arg!r}") from None
    return _python_function(arg)


def source_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


async def _awaited(awaitable):
    return await awaitable


def call_source(source: RewardFn, prompts: list, completions: list[str], columns: dict) -> list:
    """One source's scores; an async source (a coroutine function, or any callable returning an awaitable)
    is awaited in an event loop of its own (in a helper thread when this thread already runs one)."""
    result = source(prompts, completions, **columns)
    if not inspect.isawaitable(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(result))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _awaited(result)).result()


def call_sources(sources: Sequence[RewardFn], prompts: list, completions: list[str], columns: dict) -> list:
    """Every source's result, in source order: one source runs in this thread, several at the same time in
    a thread each (on copies of the lists, so a source that edits its arguments cannot disturb another).
    A source's error is raised as it was raised, the first in source order first."""
    if len(sources) == 1:
        return [call_source(sources[0], prompts, completions, columns)]
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = [pool.submit(call_source, s, list(prompts), list(completions),
                               {k: list(v) for k, v in columns.items()}) for s in sources]
        return [f.result() for f in futures]


@dataclass
class RewardMix:
    """Σ weight·source + penalties. `__call__` returns (total per sample, {source name: per-sample scores})."""

    sources: Sequence[RewardFn]
    weights: Sequence[float] | None = None
    missing_eos_penalty: float | None = None
    """Added (use a negative number) to responses cut at the length limit."""
    overlong_buffer: int = 0
    """DAPO's soft over-length penalty: from 0 to −overlong_penalty over the last this-many tokens."""
    overlong_penalty: float = 1.0
    max_new_tokens: int | None = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.weights = list(self.weights) if self.weights is not None else [1.0] * len(self.sources)
        if len(self.weights) != len(self.sources):
            raise AlignkitError(f"reward_weights: {len(self.weights)} weights for {len(self.sources)} reward sources")
        if not self.sources:
            raise AlignkitError("reward: give at least one reward source")
        self.names = self.names or [source_name(s) for s in self.sources]

    def __call__(self, prompts: list, completions: list[str], finish_reasons: list[str] | None = None,
                 lengths: list[int] | None = None, rows: list[dict] | None = None) -> tuple[list[float], dict]:
        rows = rows or [{} for _ in prompts]
        keys = {k for row in rows for k in row if k != "prompt"}
        columns = {k: [row.get(k) for row in rows] for k in keys}
        columns["finish_reason"] = finish_reasons or [None] * len(prompts)
        total = [0.0] * len(prompts)
        parts = {}
        results = call_sources(self.sources, prompts, completions, columns)
        for name, result, weight in zip(self.names, results, self.weights):
            scores = [float(s) for s in result]
            if len(scores) != len(prompts):
                raise AlignkitError(f"reward {name}: returned {len(scores)} scores for {len(prompts)} completions")
            if not all(math.isfinite(s) for s in scores):
                raise AlignkitError(f"reward {name}: returned a non-finite score")
            parts[name] = scores
            total = [t + weight * s for t, s in zip(total, scores)]
        if self.missing_eos_penalty is not None and finish_reasons is not None:
            total = [t + (self.missing_eos_penalty if f == "length" else 0.0) for t, f in zip(total, finish_reasons)]
        if self.overlong_buffer and lengths is not None and self.max_new_tokens:
            start = self.max_new_tokens - self.overlong_buffer
            total = [t - self.overlong_penalty * min(1.0, max(0, n - start) / self.overlong_buffer)
                     for t, n in zip(total, lengths)]
        return total, parts


def reward_mix(funcs, weights=None, device: str = "auto", **penalties) -> RewardMix:
    """A `RewardMix` from the trainers' options: `funcs` is specs separated by spaces (or a list, from YAML),
    `weights` numbers separated by spaces (or a list); `penalties` go to RewardMix."""
    specs = funcs if isinstance(funcs, list) else str(funcs).split()
    if not specs:
        raise AlignkitError("config: reward_funcs: give at least one reward source")
    values = None
    if weights is not None:
        try:
            values = [float(v) for v in (weights if isinstance(weights, list) else str(weights).split())]
        except ValueError:
            raise AlignkitError(f"config: reward_weights: expected numbers, got {weights!r}") from None
    return RewardMix([load_reward(spec, device=device) for spec in specs], values, **penalties)
