"""SFT warm-up data from an environment's own solved episodes (`demonstration(row)`), checked by replay.

Before RL in a tool environment, a small model rarely writes a well-formed tool call by chance; a short SFT
on demonstrations teaches the format. For each prompt row, a fresh environment instance writes a solved
conversation (opening, then assistant and tool turns); every demonstration is then replayed through another
fresh instance (`reset(row)`, `step` on each assistant turn) and kept only when the replay ends the episode
with a reward of at least 1 and the environment's replies are the demonstration's tool messages word for
word. The others are dropped, counted and warned about: a demonstration the environment itself would not
accept would teach the wrong thing.

Output rows (`per_turn`, the default): one per assistant turn, {"prompt": the conversation before the turn,
"completion": [the turn]}, so SFT's loss covers exactly that turn (a {"messages"} row trains every assistant
turn in it). With per_turn false: one {"messages": the whole conversation} row per demonstration, every
assistant turn trained once. The row's "split" is passed through. Tool turns use the "tool" role.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.envs.base import (
    check_step,
    environment_class,
    make_environment,
    opening_messages,
)
from alignkit.errors import AlignkitError

DEMOS_FILE = "demos.jsonl"


@dataclass
class EnvDemosConfig:
    """Write an environment's demonstrations as SFT rows, each replayed and checked first."""

    environment: str = ""
    """The environment whose demonstration(row) solves a row: calculator, retrieval, module:Class or
    file.py:Class (docs/agents.md)."""
    dataset_name: str = ""
    """Prompt rows the environment can play (e.g. builtin:calculator.jsonl); several files separated by commas."""
    dataset_split: str | None = "train"
    """Only the rows whose "split" column has this value (none: every row)."""
    max_problems: int = 0
    """Use only the first this many rows of each file (0: all)."""
    per_turn: bool = True
    """One {prompt, completion} row per assistant turn (SFT trains that turn); false: one {messages} row per
    demonstration (SFT trains each of its assistant turns)."""
    output_dir: str = "runs/env_demos"
    """Directory for demos.jsonl and run.json."""

    CLI_ALIASES = {"dataset_name": ("--prompts", "--data")}

    def check(self) -> None:
        if not self.environment:
            raise AlignkitError("config: environment: give the environment (--environment calculator, "
                                "module:Class or file.py:Class)")
        cls = environment_class(self.environment)
        if not callable(getattr(cls, "demonstration", None)):
            raise AlignkitError(f"config: environment: {self.environment!r} has no demonstration(row) method")
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the prompt rows (--dataset_name / --prompts FILE)")
        if self.max_problems < 0:
            raise AlignkitError(f"config: max_problems: must be >= 0, got {self.max_problems}")


def run_env_demos(config: EnvDemosConfig, output: str | Path | None = None) -> Path:
    """Write the checked demonstrations to output_dir/demos.jsonl (or `output`, with no run directory);
    returns the file."""
    with run_owner(config, kind="env_demos", record=output is None) as run:
        run.start()
        started = time.time()
        rows = load_prompt_rows(config.dataset_name, config.max_problems, split=config.dataset_split)
        if not rows:
            raise AlignkitError(f"{config.dataset_name}: no rows")
        records, dropped = [], Counter()
        for row in rows:
            conversation = demonstration(config.environment, row)
            why = replay_problem(config.environment, row, conversation)
            if why is not None:
                dropped[why] += 1
                continue
            records += sft_rows(conversation, row, config.per_turn)
        if dropped:
            reasons = "; ".join(f"{count} {why}" for why, count in dropped.most_common())
            warnings.warn(f"env-demos: dropped {sum(dropped.values())} of {len(rows)} demonstrations that do not "
                          f"replay: {reasons}", stacklevel=2)
        if not records:
            raise AlignkitError(f"env-demos: no demonstration of {config.environment!r} replays ({len(rows)} tried)")
        path = Path(output) if output is not None else Path(config.output_dir) / DEMOS_FILE
        write_jsonl(path, records)
        kept = len(rows) - sum(dropped.values())
        if output is None:
            run.complete(environment=config.environment, demonstrations=kept, dropped=sum(dropped.values()),
                         rows=len(records), seconds=round(time.time() - started, 2))
        print(f"env-demos: {kept} of {len(rows)} demonstrations replayed; wrote {len(records)} SFT rows to {path}",
              flush=True)
        return path


def demonstration(spec: str, row: dict) -> list[dict]:
    """A fresh instance's demonstration of `row`, checked to be a list of {role, content} messages."""
    try:
        conversation = make_environment(spec).demonstration(row)
    except NotImplementedError:
        raise AlignkitError(f"environment {spec!r}: has no demonstrations (demonstration(row) is not "
                            "implemented)") from None
    if not (isinstance(conversation, list) and conversation and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in conversation)):
        raise AlignkitError(f"environment {spec!r}: demonstration must return a list of {{role, content}} messages, "
                            f"got {type(conversation).__name__}")
    return conversation


def replay_problem(spec: str, row: dict, conversation: list[dict]) -> str | None:
    """Why `conversation` does not replay in a fresh instance of `spec` on `row` (None when it does: the
    opening is the environment's, each tool message is the environment's reply to the assistant turn before
    it, and the episode ends there with a reward of at least 1)."""
    env = make_environment(spec)
    opening = opening_messages(env, row)
    if isinstance(opening, str):
        opening = [{"role": "user", "content": opening}]
    if conversation[:len(opening)] != opening:
        return "with an opening other than the environment's"
    reward, done, expected = 0.0, False, None
    for message in conversation[len(opening):]:
        role = message["role"]
        if role == "tool":
            if expected is None or message["content"] != expected:
                return "with tool replies other than the environment's"
            expected = None
        elif role != "assistant":
            return f"with a {role} turn after the opening"
        elif done:
            return "going on after the episode ended"
        elif expected is not None:
            return "with tool replies other than the environment's"
        else:
            observation, turn_reward, done = check_step(env.step(message["content"]))
            reward += turn_reward
            expected = None if done else (observation or "")
    if not done:
        return "that do not end the episode"
    if reward < 1:
        return "with a final reward below 1"
    return None


def sft_rows(conversation: list[dict], row: dict, per_turn: bool) -> list[dict]:
    """The SFT rows of a checked demonstration (see the module docstring), the row's split passed through."""
    extra = {"split": row["split"]} if "split" in row else {}
    if not per_turn:
        return [{"messages": conversation, **extra}]
    return [{"prompt": conversation[:i], "completion": [message], **extra}
            for i, message in enumerate(conversation) if message["role"] == "assistant"]
