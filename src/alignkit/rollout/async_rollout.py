"""Asynchronous group rollouts, the trainer's side: what is submitted to the generator process
(`rollout.async_gen.AsyncGenerator`), under which staleness bound, and the Rollout each job becomes.

The engine shows every micro-batch the examples of the next K steps (`engine.loop`, lookahead = K =
max_staleness). At the start of step k the trainer publishes its weights as version k (k updates done),
submits every micro-batch it has not yet submitted with the bound min_version = its step − K, and waits for
its own. So while the trainer updates on step k's samples, the generator is already sampling step k + 1's
with version k: generation and training overlap, and no sample is ever more than K updates behind the
weights that train on it. A result that is (it cannot be, with the bound; checked anyway) is dropped and
sampled again with fresh weights. The trainer corrects for the lag with truncated importance weights
min(π_trainer / π_generator, cap) from the generator's own log-probs (`rollout.rl.importance_weights`).

Logged per step: `async/staleness` (trainer version − sampling version), `async/dropped`, and the
importance-weight statistics under `async/`.
"""

from __future__ import annotations

from alignkit.data.tokenize import encode_prompt
from alignkit.errors import AlignkitError
from alignkit.rollout.async_gen import AsyncGenerator
from alignkit.rollout.episodes import episodes_rollout
from alignkit.rollout.rl import Rollout, rollout_from_rows


class AsyncRollouts:
    """Submits micro-batches to an asynchronous generator ahead of time and turns its results into Rollouts."""

    def __init__(self, generator, tokenizer, group_size: int, stop: list[int], max_staleness: int,
                 episodes: bool = False):
        self.generator, self.tokenizer, self.episodes = generator, tokenizer, episodes
        self.group_size, self.stop, self.max_staleness = group_size, stop, max_staleness
        self.version = 0
        self.rows: dict = {}  # key -> the prompt rows of a submitted job not yet collected
        self.prompt_ids: dict = {}  # key -> the prompt ids it was submitted with (not for episodes)
        self.extra_jobs = 0

    def publish(self, policy, version: int) -> None:
        """The trainer's weights after `version` updates, for every job that starts from now on."""
        self.generator.push(policy, version)
        self.version = version

    def _submit(self, key, rows: list[dict], min_version: int) -> None:
        if self.episodes:
            self.generator.submit(key, [], min_version, rows=rows)
        else:
            if key not in self.prompt_ids:  # a resubmitted job keeps the ids it was first encoded to
                self.prompt_ids[key] = [encode_prompt(self.tokenizer, r["prompt"]) for r in rows]
            self.generator.submit(key, self.prompt_ids[key], min_version)
        self.rows[key] = rows

    def rollout(self, rows: list[dict], step: int, micro: int, upcoming=()) -> tuple[Rollout, dict]:
        """The rollout of micro-batch (step, micro), whose prompt rows are `rows`; `upcoming`: the engine's
        (step, micro, rows) of the micro-batches after it, submitted now so they are sampled meanwhile."""
        key = (step, micro)
        for k_step, k_micro, k_rows in [(step, micro, rows), *upcoming]:
            if (k_step, k_micro) not in self.rows:
                self._submit((k_step, k_micro), k_rows, max(0, k_step - self.max_staleness))
        return self._collect(key)

    def fresh_rollout(self, rows: list[dict]) -> tuple[Rollout, dict]:
        """A rollout sampled with the current weights (no lag), e.g. DAPO's extra sampling rounds."""
        self.extra_jobs += 1
        key = ("extra", self.extra_jobs)
        self._submit(key, rows, self.version)
        return self._collect(key)

    def _collect(self, key) -> tuple[Rollout, dict]:
        dropped = 0
        while True:
            result = self.generator.result(key)
            if self.version - result.version <= self.max_staleness:
                break
            dropped += 1
            if dropped > 3:
                raise AlignkitError(f"async_generation: job {key} came back {self.version - result.version} updates "
                                    f"stale {dropped} times (max_staleness {self.max_staleness})")
            self._submit(key, self.rows[key], self.version - self.max_staleness)
        rows, prompt_ids = self.rows.pop(key), self.prompt_ids.pop(key, None)
        if result.episodes is not None:
            rollout = episodes_rollout(result.episodes, self.group_size)
        else:
            rollout = rollout_from_rows(self.tokenizer, rows, prompt_ids, result.token_rows, self.group_size,
                                        self.stop, behaviour_logps=list(result.token_logps))
        staleness = self.version - result.version
        assert 0 <= staleness <= self.max_staleness, (key, staleness)
        return rollout, {"async/staleness": float(staleness), "async/dropped": float(dropped),
                         "async/generate_seconds": float(result.seconds)}

    def close(self) -> None:
        self.generator.close()


def start_async_rollouts(model, tokenizer, *, model_name_or_path: str, dtype: str, lora, settings, group: int,
                         seed: int, asynchronous, env, stop: list[int]) -> AsyncRollouts:
    """The generator process with a copy of `model` (`asynchronous`: `rollout.settings.AsyncSettings`; env:
    `EnvSettings`, its episodes sampled there too when it names an environment), and the trainer's side of it.
    On the CPU the trainer keeps torch's threads minus the generator's (at least one), so the two processes
    share the cores."""
    import torch

    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() - asynchronous.async_generation_threads))
    episodes = bool(env is not None and env.environment)
    generator = AsyncGenerator(model_name_or_path, model, dtype=dtype, lora=lora, settings=settings, group=group,
                               stop_ids=stop, pad_id=tokenizer.pad_token_id, seed=seed,
                               max_staleness=asynchronous.max_staleness,
                               threads=asynchronous.async_generation_threads, env=env if episodes else None)
    return AsyncRollouts(generator, tokenizer, group, stop, asynchronous.max_staleness, episodes=episodes)
