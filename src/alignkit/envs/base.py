"""The environment interface, the tool-call format, and the loader of environment specs.

An environment is a Python class; one instance holds one episode's state (`rollout.episodes` makes a fresh
instance per episode, so instances never share state across episodes):

- `reset(row) -> opening`: start an episode on a prompt row (the row's extra columns, such as the answer,
  are the environment's to read). Returns the opening conversation (a list of chat messages), a string
  (one user message), or None (the row's own "prompt").
- `step(action) -> (observation, reward, done)`: the text the model wrote this turn (decoded once, special
  tokens skipped). `observation` is the environment's reply, added to the conversation as a "tool" turn
  when the episode goes on (ignored when done); `reward` is this turn's reward (per-turn rewards are
  credited to the turn that earned them and the turns before it, `losses.rl.turn_advantages`).

Environments are named by spec, as reward functions are: `module:Class` or `file.py:Class`; the built-in ones
by their short name (`calculator`, `retrieval`, `ENVIRONMENTS`).

Tool calls use the model's chat-template tool format where its template has one (a template that renders
`tools`: the tool schemas go to `apply_chat_template(tools=...)`); otherwise the documented JSON-in-tags
format below, which is also the Hermes/Qwen format, so one parser serves both:

    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>

and a final answer is written `<answer>84</answer>`. `ToolEnvironment` implements reset/step on top of this:
a subclass lists its tools, implements `call(name, arguments)`, `score(answer)` and `question(row)`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.imports import load_object

ENVIRONMENTS = {
    "calculator": "alignkit.envs.calculator:CalculatorEnv",
    "retrieval": "alignkit.envs.retrieval:RetrievalEnv",
}
"""Built-in environments by short name (an --environment value)."""

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


class Environment:
    """The interface (subclassing it is optional: any class with these two methods works)."""

    def reset(self, row: dict) -> list[dict] | str | None:
        """The opening conversation of an episode on prompt row `row` (None: row["prompt"])."""
        return None

    def step(self, action: str) -> tuple[str | None, float, bool]:
        """(observation, reward, done) after the model wrote `action`."""
        raise NotImplementedError


@dataclass
class ToolCall:
    """One parsed tool call."""

    name: str
    arguments: dict


def parse_tool_calls(text: str) -> list[ToolCall | str]:
    """The tool calls in `text`, in order; a call that is not {"name": str, "arguments": object} JSON comes
    back as a string saying why (the environment replies with it, so the model can see its mistake)."""
    calls: list[ToolCall | str] = []
    for body in TOOL_CALL.findall(text):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as e:
            calls.append(f"error: the tool call is not JSON ({e.msg})")
            continue
        except RecursionError:  # nesting deeper than the parser's recursion limit
            calls.append("error: the tool call is nested too deeply")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            calls.append('error: a tool call is {"name": "...", "arguments": {...}}')
            continue
        arguments = value.get("arguments", {})
        if isinstance(arguments, str):  # some templates write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except (json.JSONDecodeError, RecursionError):
                arguments = None
        if not isinstance(arguments, dict):
            calls.append(f"error: the arguments of {value['name'][:40]!r} must be a JSON object")
            continue
        calls.append(ToolCall(value["name"], arguments))
    return calls


def parse_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer> in `text`, None when there is none."""
    found = ANSWER.findall(text)
    return found[-1].strip() if found else None


def format_tool_call(name: str, arguments: dict) -> str:
    """A tool call in the JSON-in-tags format."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def template_has_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a `tools` argument (its own tool format)."""
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


ANSWER_INSTRUCTION = "When you know the answer, write <answer>ANSWER</answer>."


def tool_instructions(tools: list[dict]) -> str:
    """The system text that teaches the JSON-in-tags format for `tools` (JSON schemas with name, description
    and parameters), for a model whose template has no tool format of its own. Each tool is one line,
    `name(argument, ...): description`: the prompt is read at every turn of every episode, so it is kept
    short."""
    listing = "\n".join(f"- {signature(t)}" for t in tools)
    return ('To call a tool, write <tool_call>{"name": NAME, "arguments": {...}}</tool_call> and wait for its '
            f"result. {ANSWER_INSTRUCTION}\nTools:\n{listing}")


def signature(tool: dict) -> str:
    """`name(argument, ...): description` of a tool's JSON schema."""
    arguments = ", ".join((tool.get("parameters") or {}).get("properties") or {})
    return f"{tool.get('name', '?')}({arguments}): {tool.get('description', '')}".rstrip(": ")


class ToolEnvironment(Environment):
    """reset/step for an environment of tools with a checkable final answer.

    A turn with tool calls gets their results as the observation (reward 0, not done); a turn with
    <answer>...</answer> ends the episode with reward `score(answer)`; a turn with neither ends it with
    reward 0 (the model stopped without answering). Subclasses set `tools` and implement `question`,
    `call` and `score`; `demonstration` (a solved conversation, for an SFT warm-up) is optional.
    """

    tools: list[dict] = []
    system_prompt: str = ""
    """Text put before the tool instructions in the system message."""

    def __init__(self, use_template_tools: bool = False):
        self.use_template_tools = use_template_tools
        self.row: dict = {}

    def question(self, row: dict) -> str:
        """The user's message for `row` (default: its "question" column)."""
        return row["question"]

    def call(self, name: str, arguments: dict) -> str:
        """The result of one tool call, as text. `name` is one of `tools` and `arguments` match its schema
        (`check_call` has answered anything else with an error text)."""
        raise NotImplementedError

    def check_call(self, name: str, arguments: dict) -> str | None:
        """An error text for a call `tools` does not allow (an unknown tool, an argument it does not take, a
        required one missing, a string argument that is not a string); None when it is allowed."""
        tool = next((t for t in self.tools if t.get("name") == name), None)
        if tool is None:
            names = ", ".join(t.get("name", "?") for t in self.tools)
            only = "the only tool is" if len(self.tools) == 1 else "the tools are"
            return f"error: unknown tool {name[:40]!r}; {only} {names}"
        schema = tool.get("parameters") or {}
        properties = schema.get("properties") or {}
        unknown = sorted(set(arguments) - set(properties))
        if unknown:
            takes = ", ".join(f'"{p}"' for p in properties)
            return f"error: {name} takes only {takes}, not {', '.join(repr(k[:40]) for k in unknown)}"
        for argument in schema.get("required", []):
            value = arguments.get(argument)
            wanted = (properties.get(argument) or {}).get("type")
            if value is None or wanted == "string" and not isinstance(value, str):
                return f'error: {name} needs {{"{argument}": "..."}}, a string'
        return None

    def score(self, answer: str) -> float:
        """The reward of final answer `answer` on the current row."""
        raise NotImplementedError

    def opening(self, row: dict) -> list[dict]:
        """The system message (the tool instructions, or only how to answer when the template renders the tools
        itself) and the question."""
        how = ANSWER_INSTRUCTION if self.use_template_tools else tool_instructions(self.tools)
        system = "\n\n".join(x for x in (self.system_prompt, how) if x)
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": self.question(row)}]

    def reset(self, row: dict) -> list[dict]:
        self.row = row
        return self.opening(row)

    def step(self, action: str) -> tuple[str | None, float, bool]:
        calls = parse_tool_calls(action)
        if calls:
            results = [c if isinstance(c, str) else self.run_tool(c.name, c.arguments) for c in calls]
            return "\n".join(results), 0.0, False
        answer = parse_answer(action)
        if answer is None:
            return None, 0.0, True
        return None, float(self.score(answer)), True

    def run_tool(self, name: str, arguments: dict) -> str:
        """One tool call as the model's observation: checked against the schemas (`check_call`), then `call`;
        a tool that raises gives an error text, never a crash."""
        problem = self.check_call(name, arguments)
        if problem is not None:
            return problem
        try:
            return str(self.call(name, arguments))
        except Exception as e:  # noqa: BLE001 - a tool's failure is the model's observation, not a crash
            return f"error: {name}: {type(e).__name__}: {e}"

    def one_call_solution(self, row: dict, name: str, arguments: dict, answer: str) -> list[dict]:
        """The conversation of an episode solved with one tool call: the opening, the call, the tool's actual
        reply (run here, so a demonstration never shows a reply the tool would not give), the answer."""
        return self.opening(row) + [
            {"role": "assistant", "content": format_tool_call(name, arguments)},
            {"role": "tool", "content": self.run_tool(name, arguments)},
            {"role": "assistant", "content": f"<answer>{answer}</answer>"},
        ]

    def demonstration(self, row: dict) -> list[dict]:
        """A solved episode for `row` as a conversation (opening, then assistant / tool turns), written the
        way the environment expects to be used; the SFT warm-up trains on it."""
        raise NotImplementedError


def environment_class(spec: str) -> type:
    """The environment class a spec names: a built-in short name, `module:Class` or `file.py:Class`."""
    if not spec:
        raise AlignkitError("environment: empty spec; use " + ", ".join(ENVIRONMENTS) + ", module:Class or "
                            "file.py:Class")
    target = ENVIRONMENTS.get(spec, spec)
    if ":" not in target:
        raise AlignkitError(f"environment: unknown {spec!r}; use " + ", ".join(ENVIRONMENTS) +
                            ", module:Class or file.py:Class")
    cls = load_object(target, "environment")
    if not callable(cls) or not callable(getattr(cls, "step", None)):
        raise AlignkitError(f"environment: {spec!r} is not a class with reset(row) and step(action)")
    return cls


def make_environment(spec: str, tokenizer=None) -> Any:
    """A fresh environment instance of `spec` (a ToolEnvironment is told whether the chat template renders
    tools itself)."""
    cls = environment_class(spec)
    if isinstance(cls, type) and issubclass(cls, ToolEnvironment):
        return cls(use_template_tools=tokenizer is not None and template_has_tools(tokenizer))
    return cls()


def opening_messages(env, row: dict) -> list[dict] | str:
    """The episode's opening: `env.reset(row)`, or the row's prompt when it returns None. One line when the
    environment returns something else."""
    opening = env.reset(row)
    if opening is None:
        if "prompt" not in row:
            raise AlignkitError("environment: reset returned None and the row has no prompt")
        return row["prompt"]
    if isinstance(opening, str) or (isinstance(opening, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in opening) and opening):
        return opening
    raise AlignkitError(f"environment: reset must return a string, a list of {{role, content}} messages or None, "
                        f"got {type(opening).__name__}")


def check_step(result: Any) -> tuple[str | None, float, bool]:
    """`step`'s return value checked: (observation str or None, finite float reward, bool done)."""
    if not (isinstance(result, tuple) and len(result) == 3):
        raise AlignkitError(f"environment: step must return (observation, reward, done), got {result!r:.80}")
    observation, reward, done = result
    if observation is not None and not isinstance(observation, str):
        raise AlignkitError(f"environment: step's observation must be a string or None, got "
                            f"{type(observation).__name__}")
    try:
        reward = float(reward)
    except (TypeError, ValueError):
        raise AlignkitError(f"environment: step's reward must be a number, got {reward!r:.40}") from None
    if not math.isfinite(reward):
        raise AlignkitError(f"environment: step's reward must be finite, got {reward}")
    return observation, reward, bool(done)
