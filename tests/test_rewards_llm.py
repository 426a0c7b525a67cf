"""LLM-judge reward sources (`llm:MODEL`, `openai:URL#MODEL`) and concurrent / async reward functions: the
Yes/No and 1–10 mappings worked by hand, the local judge read exactly as its model's next-token
probabilities and unchanged by batching, an OpenAI-compatible loopback stub for both routes (with the
requests seen to overlap), one-line errors, reward sources running at the same time in `RewardMix`, and a
GRPO run rewarded by the tiny model as judge."""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading

import pytest
import torch
from stubs import JSONServer

from alignkit.config import build_config
from alignkit.errors import AlignkitError
from alignkit.rewards.llm import (
    FALLBACK,
    RUBRIC,
    SCORE,
    judge_task,
    parse_score,
    soft_preference,
)
from alignkit.rewards.sources import RewardMix, load_reward

# ---------------------------------------------------------------------------------------- the mappings


def test_yes_no_probability_becomes_the_reward():
    """P(Yes) = 0.3 and P(No) = 0.1 (other tokens hold 0.6): r = 0.3 / (0.3 + 0.1) = 0.75; equal
    probabilities give 0.5; a Yes a thousand nats likelier gives 1."""
    assert soft_preference(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert soft_preference(math.log(0.2), math.log(0.2)) == 0.5
    assert soft_preference(0.0, -1000.0) == 1.0 and soft_preference(-1000.0, 0.0) == pytest.approx(0.0)


def test_score_text_becomes_the_reward():
    """The first number s in [1, 10] maps to (s − 1)/9: 1 → 0, 10 → 1, 8 → 7/9, 7.5 → 6.5/9; none, or one
    outside [1, 10], is unparsable (None)."""
    assert parse_score("1") == 0.0 and parse_score("10") == 1.0
    assert parse_score("Score: 8/10") == pytest.approx(7 / 9)
    assert parse_score(" 7.5 - solid answer") == pytest.approx(6.5 / 9)
    for text in ("", "eleven", "0", "11 out of 10", "-3", None):
        assert parse_score(text) is None, text


def test_judge_task_shows_request_reply_rubric_and_question():
    task = judge_task([{"role": "user", "content": "What is 2+2?"}], "4", SCORE)
    assert task.startswith("Here is a request") and "Request: What is 2+2?\n\nReply: 4\n\n" in task
    assert task.endswith(RUBRIC + " " + SCORE)
    assert judge_task("Hi", "Hello").endswith("Answer Yes or No.")


# ----------------------------------------------------------------------------------------------- llm:MODEL


def test_local_judge_reads_yes_no_and_batching_changes_nothing():
    """Scores lie in [0, 1], a batch of texts of different lengths (left padding) scores as each alone, and
    the first equals P(Yes)/(P(Yes)+P(No)) read off the model's full next-token softmax by hand."""
    reward = load_reward("llm:embedded:tiny", device="cpu")
    assert reward.__name__ == "llm:embedded:tiny" and reward._loaded is None  # loads on the first call
    prompts = ["What is 2+2?", [{"role": "user", "content": "Tell me a joke"}], "Hi", "Name a colour."]
    completions = ["4", "Why did the chicken cross the road? To get to the other side of it, of course.", "Hello!",
                   "Blue is a colour, and so are green and red and many more besides."]
    reward.batch_size = 3  # two batches, the second with one row
    batched = reward(prompts, completions)
    alone = [reward([p], [c])[0] for p, c in zip(prompts, completions)]
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)

    tokenizer, model, (yes, no) = reward.load()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = tokenizer(reward.texts(prompts[:1], completions[:1])[0], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**ids).logits[0, -1].double(), -1)
    assert batched[0] == pytest.approx(float(probs[yes] / (probs[yes] + probs[no])), abs=1e-5)


# -------------------------------------------------------------------------------------- openai:URL#MODEL


class StubOpenAI:
    """An OpenAI-compatible server on loopback. /v1/completions answers with top log-probs for the next
    token: P(Yes) = 0.8 when the reply contains GOOD, else 0.2 (P(No) the rest of 0.5; " Maybe" holds
    the other half). With `logprobs=False` it has no /v1/completions (404). /v1/chat/completions answers
    "Score: 9" for a GOOD reply, "???" for one containing UNSURE, else "3". Each request waits (up to 5 s)
    until a second one is in flight, so a client that sends one at a time is seen (`overlapped` False)."""

    def __init__(self, logprobs: bool = True, status: int = 200):
        self.logprobs, self.status = logprobs, status
        self.lock, self.in_flight, self.most_in_flight = threading.Lock(), 0, 0
        self.second = threading.Event()
        self.http = JSONServer(self.handle)
        self.url = self.http.url

    @property
    def overlapped(self) -> bool:
        return self.most_in_flight >= 2

    def handle(self, method: str, path: str, body: dict) -> tuple[int, str]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight >= 2:
                self.second.set()
        self.second.wait(5)
        try:
            return self.answer(path, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, path: str, body: dict) -> tuple[int, str]:
        if self.status != 200:
            return self.status, '{"error": "overloaded"}'
        if path == "/v1/completions" and self.logprobs:
            reply = re.search(r"Reply: (.*?)\n\nA good reply", body["prompt"], re.S).group(1)
            p = 0.8 if "GOOD" in reply else 0.2
            top = {" Yes": math.log(0.5 * p), " No": math.log(0.5 * (1 - p)), " Maybe": math.log(0.5)}
            return 200, json.dumps({"choices": [{"index": 0, "text": " Yes", "logprobs": {"top_logprobs": [top]}}]})
        if path == "/v1/chat/completions":
            text = body["messages"][0]["content"]
            content = "Score: 9" if "GOOD" in text else "???" if "UNSURE" in text else "3"
            return 200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        return 404, '{"error": "not found"}'

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.http.close()


def test_openai_reads_yes_no_log_probs_concurrently():
    with StubOpenAI() as server:
        reward = load_reward(f"openai:{server.url}#stub")
        scores = reward(["q1", "q2", "q3", "q4"], ["a GOOD answer", "plain", "GOOD too", "meh"])
    assert reward.__name__ == f"openai:{server.url}#stub"
    assert scores == pytest.approx([0.8, 0.2, 0.8, 0.2])
    assert server.overlapped
    paths = [path for path, _, _ in server.http.requests]
    assert paths == ["/v1/completions"] * 4
    body = server.http.bodies[0]
    assert body["model"] == "stub" and body["max_tokens"] == 1 and body["logprobs"] >= 2
    assert body["prompt"].endswith("Answer Yes or No.\nAnswer:")


def test_openai_without_log_probs_parses_a_score_and_counts_fallbacks():
    """No /v1/completions (404): the source switches to the score route, warns once, and from then on asks
    /v1/chat/completions only. 9 → 8/9, 3 → 2/9; "???" has no score: FALLBACK, counted and warned."""
    with StubOpenAI(logprobs=False) as server:
        reward = load_reward(f"openai:{server.url}")
        with pytest.warns(UserWarning) as caught:
            scores = reward(["q"] * 3, ["GOOD", "plain", "UNSURE"])
        before = len(server.http.requests)
        again = reward(["q", "q"], ["GOOD", "plain"])
    assert scores == pytest.approx([8 / 9, 2 / 9, FALLBACK]) and again == pytest.approx([8 / 9, 2 / 9])
    assert reward.route == "score" and reward.fallbacks == 1
    messages = [str(w.message) for w in caught]
    assert any("1-10 score from /v1/chat/completions" in m for m in messages)
    assert any("1 of 3 replies had no usable answer" in m for m in messages)
    assert server.overlapped
    assert [path for path, _, _ in server.http.requests[before:]] == ["/v1/chat/completions"] * 2
    assert "model" not in server.http.bodies[-1]


def test_openai_errors_are_one_line():
    with StubOpenAI(status=500) as server:
        reward = load_reward(f"openai:{server.url}#stub")
        with pytest.raises(AlignkitError, match=rf"^reward openai:{server.url}#stub: HTTP Error 500") as error:
            reward(["q", "q"], ["a", "b"])
    assert "\n" not in str(error.value)
    with pytest.raises(AlignkitError, match=r"^reward openai:http://127.0.0.1:9: ") as error:
        load_reward("openai:http://127.0.0.1:9")(["q"], ["a"])
    assert "\n" not in str(error.value)
    for url in ("file:///etc/passwd", "ftp://example.org/x", "127.0.0.1:8000"):
        with pytest.raises(AlignkitError, match="only http:// and https:// URLs"):
            load_reward(f"openai:{url}")


def test_openai_refuses_redirects():
    with StubOpenAI() as target:
        redirecting = JSONServer(lambda method, path, body: (307, "{}", {"Location": target.url + path}))
        try:
            with pytest.raises(AlignkitError, match="HTTP Error 307"):
                load_reward(f"openai:{redirecting.url}")(["q"], ["a"])
        finally:
            redirecting.close()
    assert target.http.requests == []


# ------------------------------------------------------------------------------- RewardMix: threads, async


def test_reward_sources_run_at_the_same_time_in_source_order():
    """Each slow source waits at a two-party barrier: run one after the other, the first would wait alone
    and fail. Both start before either ends, and results keep the sources' order."""
    barrier, events = threading.Barrier(2, timeout=5), []

    def slow(name: str, value: float):
        def reward(prompts, completions, **columns):
            events.append(("start", name))
            barrier.wait()
            events.append(("end", name))
            return [value] * len(completions)

        reward.__name__ = name
        return reward

    mix = RewardMix([slow("first", 1.0), slow("second", 10.0)], weights=[1.0, 0.5])
    total, parts = mix(["p", "q"], ["a", "b"])
    assert {e for e, _ in events[:2]} == {"start"} and {e for e, _ in events[2:]} == {"end"}
    assert list(parts) == ["first", "second"] and parts["first"] == [1.0, 1.0] and parts["second"] == [10.0, 10.0]
    assert total == [6.0, 6.0]


class AsyncLength:
    """An object whose __call__ is async: it is not a coroutine function, but its result is awaitable."""

    __name__ = "async_length"

    async def __call__(self, prompts, completions, **columns):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]


def test_async_reward_functions_are_awaited():
    async def has_e(prompts, completions, finish_reason, **columns):
        await asyncio.sleep(0)
        return [float("e" in c) for c in completions]

    mix = RewardMix([has_e, AsyncLength(), load_reward("contains:x")])
    total, parts = mix(["p", "q"], ["hey", "xo"], finish_reasons=["stop", "length"])
    assert list(parts) == ["has_e", "async_length", "contains:x"]
    assert parts["has_e"] == [1.0, 0.0] and parts["async_length"] == [3.0, 2.0] and total == [4.0, 3.0]

    async def inside_a_running_loop():  # a notebook: the caller's thread already runs an event loop
        return RewardMix([has_e])(["p"], ["e"])

    assert asyncio.run(inside_a_running_loop())[0] == [1.0]


def test_concurrent_sources_keep_their_errors():
    def broken(prompts, completions, **columns):
        raise AlignkitError("reward broken: the judge is down")

    def short(prompts, completions, **columns):
        return [1.0]

    with pytest.raises(AlignkitError, match="^reward broken: the judge is down$"):
        RewardMix([load_reward("contains:a"), broken])(["p"], ["a"])
    with pytest.raises(AlignkitError, match="reward short: returned 1 scores for 2 completions"):
        RewardMix([load_reward("contains:a"), short])(["p", "q"], ["a", "b"])
    with pytest.raises(AlignkitError, match="reward nan: returned a non-finite score"):
        RewardMix([load_reward("contains:a"), lambda p, c, **k: [math.nan] * len(c)], names=["a", "nan"])(["p"], ["a"])


# --------------------------------------------------------------------------------------------- end to end


def test_grpo_with_the_tiny_model_as_judge(tmp_path):
    from alignkit.methods.grpo import GRPOConfig, train_grpo

    out = tmp_path / "run"
    config = build_config(GRPOConfig, {
        "model_name_or_path": "embedded:tiny", "dataset_name": "builtin:prompts.jsonl",
        "reward_funcs": "llm:embedded:tiny contains:e", "num_generations": 2, "per_device_train_batch_size": 4,
        "max_completion_length": 8, "max_steps": 2, "logging_steps": 1, "output_dir": str(out), "progress": False,
        "device": "cpu"})
    train_grpo(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    judged = [r["rewards/llm:embedded:tiny/mean"] for r in rows if "rewards/llm:embedded:tiny/mean" in r]
    assert len(judged) == 2 and all(0.0 <= v <= 1.0 for v in judged)
    assert all(math.isfinite(r["reward"]) for r in rows if "reward" in r)
