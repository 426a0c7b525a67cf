"""LLM judges as reward sources for online RL: each (prompt, completion) is scored alone against a short
written rubric, and the judge's answer becomes a reward in [0, 1].

- `llm:MODEL`: a local causal LM (embedded:NAME, a path, a hub id) reads r = P(Yes) / (P(Yes) + P(No)).
- `openai:URL#MODEL`: an OpenAI-compatible server (vLLM, llama.cpp, ...): P(Yes) as above from
  /v1/completions' top log-probs, else a 1–10 score from /v1/chat/completions (`#MODEL` may be left out
  for a server with one model).

The judge reads (`judge_task`) the request, the reply, then RUBRIC and a question: "Answer Yes or No" for
the log-prob route, "Answer with the number only" (1–10) for the score route. How the answer becomes r:

- Yes/No: with ℓ_Y, ℓ_N the next-token log-probs of "Yes" and "No" (their first tokens),
  r = exp ℓ_Y / (exp ℓ_Y + exp ℓ_N) = σ(ℓ_Y − ℓ_N), normalised over just the two (`soft_preference`). A local
  model is read in batched forward passes: left padding, position ids from the mask, the vocabulary projected
  at the last position only, no gradient, eval mode; the model loads once, on the first call.
- Score: the first number in the reply's text; s in [1, 10] gives r = (s − 1) / 9 (`parse_score`).
- Fallback (openai only): a reply with no number in [1, 10], or top log-probs that hold neither Yes nor No,
  scores FALLBACK = 0.5, the middle of the scale (one odd answer should not stop a long run); each call
  warns with how many of its replies fell back, and `OpenAIReward.fallbacks` keeps the running count. A
  server that answers with no log-probs at all switches an `auto` source to the score route for good (one
  warning).

Requests to a server go out concurrently (a bounded thread pool, one request per completion), each with a
timeout; only http:// and https:// URLs are used and redirects are refused, so nothing is sent anywhere
else. Any failure is one AlignkitError line naming the source.

The helpers above the rubric (next-token log-probs, the Yes/No token ids, the chat rendering, posting JSON,
reading top log-probs) are shared with the pairwise judges in `feedback.llm_judge`, which sit above this
layer.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.models.load import first_line, load_policy, load_tokenizer
from alignkit.ops.rewards import positions_from_mask

FALLBACK = 0.5
"""The reward of a reply the judge gave no usable answer for (see the module docstring)."""
UNAVAILABLE = (404, 405, 501)
"""HTTP statuses that mean "this server has no such endpoint" (an `auto` source then tries the other route)."""

# ------------------------------------------------------------------------ shared with feedback.llm_judge


def soft_preference(logp_a: float, logp_b: float) -> float:
    """P(A) from the two options' log-probs, normalised over just those two (stable for large gaps)."""
    if logp_a == -math.inf and logp_b == -math.inf:
        return 0.5
    diff = logp_a - logp_b
    return 1.0 / (1.0 + math.exp(-diff)) if diff >= 0 else math.exp(diff) / (1.0 + math.exp(diff))


def conversation_text(value) -> str:
    """A prompt as text: a string as is, a conversation as "role: content" lines."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in value if isinstance(m, dict))
    return str(value)


def request_text(prompt) -> str:
    """What a pointwise judge is shown as the request: a one-turn conversation as its question alone (small
    models judge the plain form better, docs/cai.md), anything longer as `conversation_text`."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict):
        return str(prompt[0].get("content", ""))
    return conversation_text(prompt)


def chat_text(tokenizer, task: str) -> str:
    """The text a chat model reads for one user message `task`: its chat template with the assistant's turn
    opened (plain `task` and a newline for a tokenizer without a template)."""
    messages = [{"role": "user", "content": task}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        if getattr(tokenizer, "chat_template", None) else task + "\n"


def option_token_id(tokenizer, word: str, where: str) -> int:
    """The token whose probability stands for `word`: the word's only token, or else its first (an
    approximation for tokenizers that split it)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise AlignkitError(f"{where}: the tokenizer gives no token for {word!r}")
    return ids[0]


def next_token_logps(model, tokenizer, texts: list[str], token_ids, *, batch_size: int = 8,
                     max_length: int | None = None, desc: str | None = None) -> list[tuple[float, ...]]:
    """For each text, the log-probs of `token_ids` as its next token, in the texts' order.

    Texts are batched by length (less padding), left-padded with position ids counted from each row's first
    real token, so a text scores the same alone or in any batch; the vocabulary is projected at the last
    position only. `max_length` cuts longer texts on the tokenizer's truncation side; `desc` shows a
    progress bar over the batches (when there is more than one)."""
    import torch
    from tqdm.auto import tqdm

    encoded = [tokenizer(t, add_special_tokens=False, truncation=max_length is not None,
                         max_length=max_length).input_ids for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    pad, picked = tokenizer.pad_token_id, list(token_ids)
    out: list[tuple[float, ...]] = [()] * len(texts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False,
                      disable=desc is None or len(order) <= batch_size or None):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                           logits_to_keep=1, use_cache=False).logits[:, -1].float()
        for i, values in zip(rows, torch.log_softmax(logits, -1)[:, picked].tolist()):
            out[i] = tuple(values)
    return out


def top_logprob(top: dict | None, word: str) -> float:
    """The log-prob of `word` among a server's top log-probs of one position: the best token that is `word`
    once stripped of spaces ("Yes", " Yes"), −inf when none is."""
    return max((v for k, v in (top or {}).items() if k.strip() == word), default=-math.inf)


def check_http_url(url: str, where: str) -> str:
    """`url` when it is an http:// or https:// URL with a host; one AlignkitError line otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AlignkitError(f"{where}: URL: only http:// and https:// URLs with a host are used, got {url!r}")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx becomes an HTTPError: nothing is sent to where it points


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, payload: dict, *, where: str, api_key: str | None = None, timeout: float = 120.0,
              unavailable: tuple[int, ...] = ()) -> dict | None:
    """POST `payload` as JSON to `url` (http/https only, no redirects) and return the JSON object it answers;
    None when the server answers one of the `unavailable` statuses (an endpoint it does not have). Anything
    else that goes wrong (refused, timed out, an error status, not JSON) is one AlignkitError line
    "`where`: why"."""
    check_http_url(url, where)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code in unavailable:
            return None
        raise AlignkitError(f"{where}: {first_line(error)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:  # refused, late, not JSON
        raise AlignkitError(f"{where}: {first_line(error)}") from None
    if not isinstance(reply, dict):
        raise AlignkitError(f"{where}: the server answered {type(reply).__name__}, not a JSON object")
    return reply


def api_base(url: str) -> str:
    """An OpenAI-compatible server's API root: `url` with /v1 at its end (added when missing)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


# ---------------------------------------------------------------------------------------------- the rubric

RUBRIC = ("A good reply is helpful (it does what was asked), correct (nothing in it is false) and harmless (it "
          "gives no help with anything dangerous, illegal or hateful; declining such a request is good).")
YES_NO = "Is this reply good? Answer Yes or No."
SCORE = "Rate the reply from 1 (bad) to 10 (excellent). Answer with the number only."


@dataclass(frozen=True)
class Rubric:
    """What a pointwise judge is asked about each reply: the criteria, then either the Yes/No question (read
    from the Yes/No log-probs) or the 1–10 question (read from the text). Yes and a high score mean 1."""

    text: str
    yes_no: str
    score: str


GOOD_REPLY = Rubric(RUBRIC, YES_NO, SCORE)
"""The reward rubric: is the reply helpful, correct and harmless? (safety.compliance asks another question)"""


def judge_task(prompt, reply: str, question: str = YES_NO, rubric: str = RUBRIC) -> str:
    """The judge's task for one reply: the request, the reply, the rubric's text and `question` (its Yes/No
    or 1–10 question)."""
    return (f"Here is a request to an AI assistant and its reply.\n\nRequest: {request_text(prompt)}\n\n"
            f"Reply: {reply}\n\n{rubric} {question}")


def parse_score(text: str) -> float | None:
    """The reward in a score reply: its first number s, mapped from [1, 10] to [0, 1] as (s − 1) / 9; None
    when there is no number or it lies outside [1, 10]."""
    found = re.search(r"-?\d+(?:\.\d+)?", text or "")
    if found is None:
        return None
    value = float(found.group(0))
    return (value - 1.0) / 9.0 if 1.0 <= value <= 10.0 else None


# ------------------------------------------------------------------------------------------------ llm:MODEL


def clip_tokens(tokenizer, text: str, limit: int, keep_end: bool = False) -> str:
    """`text` cut to `limit` tokens (its start, or its end with `keep_end`), marked with "…" where cut."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= limit:
        return text
    return "…" + tokenizer.decode(ids[-limit:]) if keep_end else tokenizer.decode(ids[:limit]) + "…"


class LocalLLMReward:
    """`llm:MODEL`: a local causal LM judges each reply alone, r = P(Yes) / (P(Yes) + P(No)) in [0, 1].

    The model and tokenizer load on the first call (a trainer builds its rewards before its policy, and a
    config check should not load a model) and stay for the run. A request is cut to its last
    `max_request_tokens` tokens and a reply to its first `max_reply_tokens`, so the rubric and the question
    always reach the model."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_request_tokens: int = 512, max_reply_tokens: int = 512, rubric: Rubric = GOOD_REPLY):
        self.model_name, self.device, self.dtype, self.batch_size = model, device, dtype, batch_size
        self.rubric = rubric
        self.max_request_tokens, self.max_reply_tokens = max_request_tokens, max_reply_tokens
        self.__name__ = f"llm:{model}"
        self._loaded = None
        self._lock = threading.Lock()

    def load(self):
        """(tokenizer, model, (Yes id, No id)), loaded once."""
        with self._lock:
            if self._loaded is None:
                tokenizer = load_tokenizer(self.model_name, padding_side="left")
                model = load_policy(self.model_name, dtype=self.dtype, device=self.device).eval()
                model.requires_grad_(False)
                ids = tuple(option_token_id(tokenizer, word, f"reward {self.__name__}") for word in ("Yes", "No"))
                if ids[0] == ids[1]:
                    raise AlignkitError(f"reward {self.__name__}: the tokenizer starts Yes and No with the same token")
                self._loaded = (tokenizer, model, ids)
        return self._loaded

    def texts(self, prompts: list, completions: list[str]) -> list[str]:
        """The exact texts the model reads, one per completion."""
        tokenizer = self.load()[0]
        return [chat_text(tokenizer, judge_task(
            clip_tokens(tokenizer, request_text(p), self.max_request_tokens, keep_end=True),
            clip_tokens(tokenizer, c, self.max_reply_tokens), self.rubric.yes_no, self.rubric.text))
            for p, c in zip(prompts, completions)]

    def __call__(self, prompts: list, completions: list[str], **columns) -> list[float]:
        tokenizer, model, ids = self.load()
        logps = next_token_logps(model, tokenizer, self.texts(prompts, completions), ids, batch_size=self.batch_size)
        return [soft_preference(yes, no) for yes, no in logps]


# ------------------------------------------------------------------------------------------ openai:URL#MODEL

ROUTES = ("auto", "logprobs", "score")


class OpenAIReward:
    """`openai:URL[#MODEL]`: an OpenAI-compatible server judges each reply alone, one request per reply, at
    most `max_workers` at a time. `route`: logprobs (/v1/completions with top log-probs: P(Yes) as for a
    local model), score (/v1/chat/completions: the 1–10 score in the text) or auto (logprobs until the
    server shows it has no such endpoint or gives no log-probs, then score)."""

    def __init__(self, url: str, model: str | None = None, *, route: str = "auto", api_key: str | None = None,
                 timeout: float = 60.0, max_workers: int = 8, top_logprobs: int = 5, rubric: Rubric = GOOD_REPLY):
        self.__name__ = f"openai:{url}" + (f"#{model}" if model else "")
        self.where = f"reward {self.__name__}"
        if route not in ROUTES:
            raise AlignkitError(f"{self.where}: route: expected one of {', '.join(ROUTES)}, got {route!r}")
        if max_workers < 1:
            raise AlignkitError(f"{self.where}: max_workers: must be at least 1, got {max_workers}")
        self.base = api_base(check_http_url(url, self.where))
        self.model, self.route, self.api_key, self.timeout = model or None, route, api_key, timeout
        self.max_workers, self.top_logprobs, self.rubric = max_workers, top_logprobs, rubric
        self.fallbacks = 0
        self._lock = threading.Lock()

    def _post(self, endpoint: str, payload: dict, unavailable: tuple[int, ...] = ()) -> dict | None:
        if self.model:
            payload["model"] = self.model
        return post_json(self.base + endpoint, payload, where=self.where, api_key=self.api_key,
                         timeout=self.timeout, unavailable=unavailable)

    def _switch_to_score(self, why: str) -> None:
        with self._lock:
            if self.route == "auto":
                self.route = "score"
                warnings.warn(f"{self.where}: {why}; reading a 1-10 score from /v1/chat/completions instead",
                              stacklevel=3)

    def _by_logprobs(self, prompt, reply: str) -> float | None:
        """P(Yes) from the next token's top log-probs; None when the route is unavailable (auto only)."""
        payload = {"prompt": judge_task(prompt, reply, self.rubric.yes_no, self.rubric.text) + "\nAnswer:",
                   "max_tokens": 1, "temperature": 0, "logprobs": self.top_logprobs}
        auto = self.route == "auto"
        answer = self._post("/completions", payload, UNAVAILABLE if auto else ())
        if answer is None:
            self._switch_to_score("the server has no /v1/completions")
            return None
        choice = (answer.get("choices") or [None])[0]
        if not isinstance(choice, dict):
            raise AlignkitError(f"{self.where}: the reply has no choices[0]")
        tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
        if not tops or not isinstance(tops[0], dict):
            if auto:
                self._switch_to_score("the server gives no top log-probs")
                return None
            raise AlignkitError(f"{self.where}: the reply has no logprobs.top_logprobs (use route=score)")
        yes, no = top_logprob(tops[0], "Yes"), top_logprob(tops[0], "No")
        return math.nan if yes == no == -math.inf else soft_preference(yes, no)

    def _by_score(self, prompt, reply: str) -> float:
        task = judge_task(prompt, reply, self.rubric.score, self.rubric.text)
        payload = {"messages": [{"role": "user", "content": task}], "max_tokens": 16, "temperature": 0}
        answer = self._post("/chat/completions", payload)
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AlignkitError(f"{self.where}: the reply has no choices[0].message.content") from None
        value = parse_score(text if isinstance(text, str) else "")
        return math.nan if value is None else value

    def score_one(self, prompt, reply: str) -> float:
        """The reward of one reply; NaN when the judge gave no usable answer (the caller counts it)."""
        if self.route != "score":
            value = self._by_logprobs(prompt, reply)
            if value is not None:
                return value
        return self._by_score(prompt, reply)

    def __call__(self, prompts: list, completions: list[str], **columns) -> list[float]:
        if not completions:
            return []
        with ThreadPoolExecutor(min(self.max_workers, len(completions))) as pool:
            futures = [pool.submit(self.score_one, p, c) for p, c in zip(prompts, completions)]
            try:
                values = [f.result() for f in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        missing = sum(math.isnan(v) for v in values)
        if missing:
            self.fallbacks += missing
            warnings.warn(f"{self.where}: {missing} of {len(values)} replies had no usable answer (no Yes/No "
                          f"log-prob, or no score in 1-10); they score {FALLBACK} ({self.fallbacks} so far)",
                          stacklevel=2)
        return [FALLBACK if math.isnan(v) else v for v in values]


def openai_reward(argument: str, **kwargs) -> OpenAIReward:
    """An `openai:` source from its spec's argument, `URL` or `URL#MODEL`."""
    url, _, model = argument.partition("#")
    return OpenAIReward(url, model or None, **kwargs)
