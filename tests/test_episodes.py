"""Multi-turn episodes, token-in/token-out (rollout.episodes) and per-turn credit (losses.rl.turn_advantages)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.envs.base import (
    ToolEnvironment,
    environment_class,
    make_environment,
    opening_messages,
    parse_tool_calls,
)
from alignkit.errors import AlignkitError
from alignkit.losses import rl
from alignkit.models.load import load_tokenizer
from alignkit.rollout.episodes import (
    EnvTurns,
    episodes_rollout,
    opening_ids,
    run_episodes,
)
from alignkit.rollout.settings import EnvSettings

EOS = 3  # the tiny tokenizer's <|im_end|>


class Scripted:
    """An environment whose per-turn rewards and episode length come from the row."""

    def reset(self, row):
        self.row, self.turn = row, 0
        return row["prompt"]

    def step(self, action):
        reward = self.row["rewards"][self.turn]
        self.turn += 1
        done = self.turn >= self.row["turns"]
        return (None if done else f"obs{self.turn}"), reward, done


class ScriptedSampler:
    """A sample_fn that answers every context with `script[turn]` (then pads), recording the contexts."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, contexts, group, max_new_tokens):
        turn = len(self.calls)
        self.calls.append([list(c) for c in contexts])
        rows = [(list(self.script[turn]) + [0] * max_new_tokens)[:max_new_tokens]
                for _ in range(len(contexts) * group)]
        return rows, None


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("embedded:tiny", padding_side="left")


def chars(tok, text):
    """Token ids one character each: decode -> encode merges them into other ids (re-tokenisation drift)."""
    return [tok.convert_tokens_to_ids(c) for c in text]


ENV = f"{__name__}:Scripted"


def test_the_ids_sampled_are_the_ids_scored_and_the_mask_is_the_models_tokens(tok):
    turn1, turn2 = chars(tok, "hello") + [EOS], chars(tok, "world") + [EOS]
    assert tok(tok.decode(turn1[:-1]), add_special_tokens=False).input_ids != turn1[:-1]  # the drift is real
    sampler = ScriptedSampler([turn1, turn2])
    row = {"prompt": [{"role": "user", "content": "hi"}], "rewards": [0.0, 1.0], "turns": 2}
    (episode,) = run_episodes(sampler, tok, [row], ENV, 1, 16, EnvSettings(max_turns=4), [EOS])
    reply = EnvTurns(tok, ["<|pad|>", tok.decode([EOS])]).ids("obs1")
    assert reply == tok("\n<|im_start|>tool\nobs1<|im_end|>\n<|im_start|>assistant\n",
                        add_special_tokens=False).input_ids
    assert episode.completion_ids == turn1 + reply + turn2
    assert episode.model_mask == [1] * len(turn1) + [0] * len(reply) + [1] * len(turn2)
    assert episode.token_turns == [0] * (len(turn1) + len(reply)) + [1] * len(turn2)
    # turn 2 was sampled from exactly the prompt + the sampled ids + the environment's ids, not a re-rendering
    assert sampler.calls[1] == [episode.prompt_ids + turn1 + reply]
    assert episode.texts == ["hello", "world"] and episode.turn_rewards == [0.0, 1.0]
    assert episode.finish_reason == "done"
    rollout = episodes_rollout([episode], 1)
    assert rollout.completion_ids == [turn1 + reply + turn2]  # what the trainer scores
    assert rollout.extra["model_mask"] == [episode.model_mask] and rollout.finish_reasons == ["stop"]


def test_episodes_that_end_stop_generating(tok):
    rows = [{"prompt": "a", "rewards": [1.0, 0, 0], "turns": 1}, {"prompt": "b", "rewards": [0, 0, 0], "turns": 3}]
    sampler = ScriptedSampler([[10, EOS]] * 3)
    episodes = run_episodes(sampler, tok, rows, ENV, 2, 8, EnvSettings(max_turns=5), [EOS])
    assert [len(c) for c in sampler.calls] == [2, 2, 2]  # turn 0: one prefill per row; then row b's 2 episodes
    assert [e.turns for e in episodes] == [1, 1, 3, 3]
    assert all(c[:len(episodes[2].prompt_ids)] == episodes[2].prompt_ids for c in sampler.calls[1])


def test_limits_end_episodes(tok):
    row = {"prompt": "a", "rewards": [0.0] * 9, "turns": 9}
    (ep,) = run_episodes(ScriptedSampler([[10, EOS]] * 9), tok, [row], ENV, 1, 8, EnvSettings(max_turns=2), [EOS])
    assert ep.turns == 2 and ep.finish_reason == "max_turns" and ep.model_mask[-1] == 1
    (ep,) = run_episodes(ScriptedSampler([[10, 11, 12]] * 9), tok, [row], ENV, 1, 3, EnvSettings(), [EOS])
    assert ep.turns == 1 and ep.finish_reason == "length"  # no stop token: the turn was cut, the episode ends
    (ep,) = run_episodes(ScriptedSampler([[10, EOS]] * 9), tok, [row], ENV, 1, 8,
                         EnvSettings(max_turns=9, max_episode_tokens=12), [EOS])
    assert ep.finish_reason == "max_tokens" and len(ep.completion_ids) <= 12


def test_a_reward_at_turn_2_of_3_reaches_turn_2_and_not_turn_3():
    # group of 2: episode 0 earns 1 at turn 2 (index 1) of 3; episode 1 earns nothing
    turns = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]])
    adv = rl.turn_advantages([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], turns, 2, "grpo", scale=False)
    assert adv[0].tolist() == [0.5, 0.5, 0.5, 0.5, 0.0, 0.0]  # returns 1, 1, 0 minus the group's 0.5, 0.5, 0
    assert adv[1].tolist() == [-0.5, -0.5, -0.5, -0.5, 0.0, 0.0]
    rloo = rl.turn_advantages([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], turns, 2, "rloo")
    assert rloo[0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # moving the reward to turn 3 changes turn 3's advantage; a reward only at turn 1 leaves later turns at 0
    late = rl.turn_advantages([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], turns, 2, "grpo", scale=False)
    assert late[0, 4].item() == 0.5
    early = rl.turn_advantages([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], turns, 2, "grpo", scale=False)
    assert early[0, 2:].tolist() == [0.0] * 4 and early[0, 0].item() == 0.5


def test_turns_reached_by_one_episode_get_no_baseline_of_their_own():
    turns = torch.tensor([[0, 1, 2], [0, 0, 0]])
    adv = rl.turn_advantages([[0.0, 0.0, 2.0], [1.0]], turns, 2, "grpo", scale=False)
    assert adv[0].tolist() == [0.5, 0.0, 0.0] and adv[1].tolist() == [-0.5] * 3
    assert rl.turn_advantages([[0.0, 0.0, 2.0], [1.0]], turns, 2, "rloo")[0].tolist() == [1.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(1, 3), st.data())
def test_one_final_reward_and_equal_turns_is_plain_grpo_and_rloo(groups, group, turns, data):
    rewards = data.draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=groups * group,
                                 max_size=groups * group))
    per_turn = [[0.0] * (turns - 1) + [r] for r in rewards]
    token_turns = torch.arange(turns).repeat_interleave(2).repeat(len(rewards), 1)
    expected = rl.group_advantages(torch.tensor(rewards), group)
    got = rl.turn_advantages(per_turn, token_turns, group, "grpo")
    assert torch.allclose(got, expected[:, None].expand_as(got), atol=1e-5)
    expected = rl.rloo_advantages(torch.tensor(rewards), group)
    got = rl.turn_advantages(per_turn, token_turns, group, "rloo")
    assert torch.allclose(got, expected[:, None].expand_as(got), atol=1e-5)


def test_bad_environments_are_one_line(tok):
    with pytest.raises(AlignkitError, match="unknown 'nope'"):
        environment_class("nope")
    with pytest.raises(AlignkitError, match="has no 'Missing'"):
        environment_class(f"{__name__}:Missing")

    class Bad(Scripted):
        def step(self, action):
            return "obs", float("nan"), False

    globals()["Bad"] = Bad
    with pytest.raises(AlignkitError, match="reward must be finite"):
        run_episodes(ScriptedSampler([[10, EOS]]), tok, [{"prompt": "a"}], f"{__name__}:Bad", 1, 4, EnvSettings(),
                     [EOS])


def test_tool_call_parsing():
    calls = parse_tool_calls('x <tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call> '
                             '<tool_call>{"name": 3}</tool_call><tool_call>nope</tool_call>'
                             '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert calls[0].name == "calculator" and calls[0].arguments == {"expression": "1+2"}
    assert isinstance(calls[1], str) and "error" in calls[2] and calls[3].arguments == {"a": 1}


def test_a_template_with_its_own_tool_format_gets_the_tools(tok):
    """A chat template that renders `tools` gets the schemas itself (no JSON-in-tags instructions in the system
    message); one without gets the instructions."""
    class Fake:
        def __init__(self, inner, template):
            self.inner, self.chat_template = inner, template

        def apply_chat_template(self, messages, tools=None, **kwargs):
            return self.inner.apply_chat_template(messages, chat_template=self.chat_template, tools=tools, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    template = ("{% if tools %}<|im_start|>system\nTOOLS:{{ tools | tojson }}<|im_end|>\n{% endif %}"
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fake = Fake(tok, template)
    env = make_environment(f"{__name__}:Calc", fake)
    text = tok.decode(opening_ids(fake, env, opening_messages(env, {"question": "1+1?"})))
    assert "TOOLS:" in text and "calc" in text and "<tool_call>" not in text
    plain = make_environment(f"{__name__}:Calc", tok)
    text = tok.decode(opening_ids(tok, plain, opening_messages(plain, {"question": "1+1?"})))
    assert "TOOLS:" not in text and "<tool_call>" in text and "- calc(): adds" in text


class Calc(ToolEnvironment):
    tools = [{"name": "calc", "description": "adds", "parameters": {"type": "object", "properties": {}}}]

    def question(self, row):
        return row["question"]
