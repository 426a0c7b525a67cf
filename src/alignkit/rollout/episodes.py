"""Multi-turn episodes, token-in/token-out: the model acts, the environment replies, over several turns.

Done carelessly, multi-turn RL breaks quietly: text decoded and re-tokenised between turns gives the trainer
other token ids than the ones sampled; tool output gets trained on as if the model wrote it; a reward lands on
the wrong turn. Here:

- the ids the model sampled are kept as sampled: the next turn's context is the prompt ids + every id so far,
  never a re-rendering of the conversation; each model turn is decoded once, for the environment only;
- an environment turn is rendered by the chat template (a "tool" message plus the assistant header, the text
  the template puts after the model's stop token first: `EnvTurns`), tokenised once and appended;
- `model_mask` marks the model-written tokens (1) against the environment's (0): the loss covers the first
  only; `token_turns` says which turn each token belongs to, and each turn's reward stays with its turn
  (`turn_rewards`; `losses.rl.turn_advantages` credits it to that turn and the ones before it);
- episodes run in lockstep: each turn, the live episodes are sampled in one batch; one that ends (the
  environment says done, no stop token, max_turns, max_episode_tokens) stops generating.

`run_episodes` takes a `sample_fn(contexts, group, max_new_tokens) -> (token rows, logps or None)`, so the
same loop runs on the trainer's model (`model_sampler`) and in the asynchronous generator's process.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from alignkit.data.tokenize import encode_prompt
from alignkit.envs.base import (
    check_step,
    make_environment,
    opening_messages,
    template_has_tools,
)
from alignkit.errors import AlignkitError
from alignkit.rollout.rl import Rollout
from alignkit.rollout.sampler import sample_groups
from alignkit.rollout.settings import EnvSettings

MARKER = "\u2063alignkit-answer\u2063"
"""Stands in for an answer while the template's rendering around it is measured (`EnvTurns`)."""


@dataclass
class Episode:
    """One episode: the prompt's ids and every token after it, in order, as the model saw them."""

    row: dict
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    """Model and environment tokens of every turn, in order (what the trainer scores)."""
    model_mask: list[int] = field(default_factory=list)
    """1 where the model wrote the token, 0 where the environment did."""
    token_turns: list[int] = field(default_factory=list)
    """The turn of each token (an environment reply belongs to the model turn it answers)."""
    turn_rewards: list[float] = field(default_factory=list)
    """The environment's reward for each model turn."""
    texts: list[str] = field(default_factory=list)
    """Each model turn, decoded once (what the environment read)."""
    observations: list[str] = field(default_factory=list)
    """Each environment reply that was appended."""
    logps: list[float] = field(default_factory=list)
    """The sampler's log-prob of each model token (when it gives them), in order."""
    finish_reason: str = ""
    """"done" (the environment ended it), "length" (a turn ran out of tokens), "max_turns", "max_tokens"."""

    @property
    def reward(self) -> float:
        return sum(self.turn_rewards)

    @property
    def turns(self) -> int:
        return len(self.texts)


class EnvTurns:
    """The token ids of an environment turn, rendered the way the tokenizer's chat template renders a "tool"
    message after an assistant turn, followed by the next assistant header.

    The model's turn ends at its stop token; the template may write more before the next message (ChatML's
    newline after <|im_end|>): that text comes first. Without a chat template the turn is
    "\\n<tool>\\n{observation}\\n</tool>\\n" (documented in docs/agents.md)."""

    def __init__(self, tokenizer, stop_texts: list[str]):
        """stop_texts: the text of each stop token; the one the template writes after an answer is the turn's
        end, and what the template writes after it is the gap."""
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.has_template:
            base = [{"role": "user", "content": "U"}, {"role": "assistant", "content": MARKER}]
            before = tokenizer.apply_chat_template(base, tokenize=False)
            tail = before[before.index(MARKER) + len(MARKER):]
            end = max((t for t in stop_texts if t and tail.startswith(t)), key=len, default="")
            self.gap = tail[len(end):]
            self.base, self.before = base, before

    def text(self, observation: str) -> str:
        """The text of the environment turn that answers with `observation`."""
        if not self.has_template:
            return f"\n<tool>\n{observation}\n</tool>\n"
        after = self.tokenizer.apply_chat_template(self.base + [{"role": "tool", "content": observation}],
                                                   tokenize=False, add_generation_prompt=True)
        if not after.startswith(self.before):
            raise AlignkitError("environment: the chat template renders earlier turns differently once a tool turn "
                                "follows; token-in/token-out needs a template that only appends")
        return self.gap + after[len(self.before):]

    def ids(self, observation: str) -> list[int]:
        return self.tokenizer(self.text(observation), add_special_tokens=False).input_ids


def opening_ids(tokenizer, env, opening) -> list[int]:
    """The prompt ids of an episode's opening (the tool schemas go to the template when it renders them)."""
    tools = getattr(env, "tools", None)
    if isinstance(opening, list) and tools and template_has_tools(tokenizer):
        text = tokenizer.apply_chat_template(opening, tools=tools, tokenize=False, add_generation_prompt=True)
        return encode_prompt(tokenizer, text)
    return encode_prompt(tokenizer, opening)


def model_sampler(model, settings, stop: list[int], pad_id: int, logps: bool = False):
    """A sample_fn over `model` with `rollout.sampler.sample_groups` (global random state; settings:
    `rollout.generate.SamplingSettings`)."""

    def sample(contexts, group, max_new_tokens):
        turn = replace(settings, max_new_tokens=max_new_tokens)
        out = sample_groups(model, contexts, group, turn, stop, pad_id, return_logps=logps)
        return out if logps else (out, None)

    return sample


def run_episodes(sample_fn, tokenizer, rows: list[dict], environment: str, group: int, max_new_tokens: int,
                 settings: EnvSettings, stop: list[int]) -> list[Episode]:
    """`group` episodes per row (episode i plays row i // group), each with a fresh `environment` instance,
    in lockstep; returns them in that order. max_new_tokens: the most tokens of one model turn."""
    settings.check()
    envs = [make_environment(environment, tokenizer) for _ in range(len(rows) * group)]
    episodes = []
    for i, env in enumerate(envs):
        row = rows[i // group]
        episodes.append(Episode(row, opening_ids(tokenizer, env, opening_messages(env, row))))
        if i % group and episodes[-1].prompt_ids != episodes[-2].prompt_ids:
            raise AlignkitError(f"environment {environment!r}: reset gave two openings for one row; the episodes of "
                                "a group must start alike (reset must depend on the row only)")
    env_turns = EnvTurns(tokenizer, [tokenizer.decode([t]) for t in stop])
    live = list(range(len(episodes)))
    for turn in range(settings.max_turns):
        if not live:
            break
        budget = max(settings.max_episode_tokens - len(episodes[i].completion_ids) for i in live)
        width = min(max_new_tokens, budget)
        if turn == 0:  # every episode of a row has the same prompt: one prefill per row
            token_rows, logps = sample_fn([episodes[i].prompt_ids for i in live[::group]], group, width)
        else:
            token_rows, logps = sample_fn([episodes[i].prompt_ids + episodes[i].completion_ids for i in live], 1,
                                          width)
        still = []
        for k, i in enumerate(live):
            if _play_turn(episodes[i], envs[i], token_rows[k], None if logps is None else logps[k], turn, stop,
                          tokenizer, env_turns, settings):
                still.append(i)
        live = still
    return episodes


def _play_turn(episode: Episode, env, tokens: list[int], logps, turn: int, stop: list[int], tokenizer,
               env_turns: EnvTurns, settings: EnvSettings) -> bool:
    """Append one model turn (cut at its stop token and at the episode's token budget), let the environment
    answer; True when the episode goes on."""
    stops = set(stop)
    end = next((j for j, t in enumerate(tokens) if t in stops), None)
    room = settings.max_episode_tokens - len(episode.completion_ids)
    kept = tokens[:end + 1] if end is not None else tokens
    stopped = end is not None and len(kept) <= room
    kept = kept[:room]
    episode.completion_ids += kept
    episode.model_mask += [1] * len(kept)
    episode.token_turns += [turn] * len(kept)
    if logps is not None:
        episode.logps += list(logps[:len(kept)])
    text = tokenizer.decode(kept[:-1] if stopped else kept, skip_special_tokens=True).strip()
    episode.texts.append(text)
    observation, reward, done = check_step(env.step(text))
    episode.turn_rewards.append(reward)
    if done:
        episode.finish_reason = "done"
        return False
    if not stopped:
        episode.finish_reason = "length" if end is None else "max_tokens"
        return False
    if turn + 1 >= settings.max_turns:
        episode.finish_reason = "max_turns"
        return False
    reply = env_turns.ids(observation or "")
    if len(episode.completion_ids) + len(reply) >= settings.max_episode_tokens:
        episode.finish_reason = "max_tokens"
        return False
    episode.completion_ids += reply
    episode.model_mask += [0] * len(reply)
    episode.token_turns += [turn] * len(reply)
    episode.observations.append(observation or "")
    return True


def episodes_rollout(episodes: list[Episode], group_size: int, tokenizer=None) -> Rollout:
    """The Rollout of `episodes` for the trainer: completion_ids are every token after the prompt, completions the
    last model turn's text (what extra reward functions read), finish_reasons "length" for an episode cut by a
    token limit (else "stop"); extra carries model_mask, token_turns,
    turn_rewards, finish (the episode's finish reason), transcript (each turn's text) and, when the sampler gave
    them, behaviour_logps (model tokens only, in order: `rollout.rl.sampler_logps` lays them on the loss mask)."""
    extra = {
        "model_mask": [e.model_mask for e in episodes],
        "token_turns": [e.token_turns for e in episodes],
        "turn_rewards": [e.turn_rewards for e in episodes],
        "finish": [e.finish_reason for e in episodes],
        "transcript": [_transcript(e) for e in episodes],
    }
    if episodes and all(len(e.logps) == sum(e.model_mask) for e in episodes) and any(e.logps for e in episodes):
        extra["behaviour_logps"] = [e.logps for e in episodes]
    return Rollout(
        rows=[e.row for e in episodes],
        prompt_ids=[e.prompt_ids for e in episodes],
        completion_ids=[e.completion_ids for e in episodes],
        completions=[e.texts[-1] if e.texts else "" for e in episodes],
        finish_reasons=["length" if e.finish_reason in ("length", "max_tokens") else "stop" for e in episodes],
        group_size=group_size,
        extra=extra,
    )


def _transcript(episode: Episode) -> list[dict]:
    out = []
    for k, text in enumerate(episode.texts):
        out.append({"role": "assistant", "content": text})
        if k < len(episode.observations):
            out.append({"role": "tool", "content": episode.observations[k]})
    return out

