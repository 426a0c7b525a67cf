"""Tokenize prompts and responses so that the boundary between them is exact.

Rules every method relies on:

- The prompt's tokens are exactly the tokenization of the prompt alone, and the response is tokenized on
  its own, so no BPE merge ever crosses the boundary and the loss mask covers response tokens only.
- Conversations are rendered with the tokenizer's chat template. The template already writes any BOS it
  wants, so the rendered text is encoded without special tokens; a BOS is added only when the tokenizer
  normally adds one and the text does not start with it (never twice).
- Every response ends with EOS, so the model learns to stop. With a chat template the response is the
  template's own rendering of the assistant turn, cut right after its last EOS.
- Truncation keeps responses: the prompt is cut from the left first (its leading BOS kept), then responses
  from the right; an example whose response would be emptied is dropped and counted, never kept empty.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

from alignkit.data.formats import explicit_prompt, split_sft
from alignkit.errors import AlignkitError


class TruncationWarning(UserWarning):
    """Examples were dropped because truncation would have emptied their responses."""


@dataclass
class Tokenized:
    """One prompt with one response; `input_ids` is their concatenation."""

    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


@dataclass
class TokenizedPair:
    """One prompt with a chosen and a rejected response, truncated together so they share the prompt."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def chosen(self) -> Tokenized:
        return Tokenized(self.prompt_ids, self.chosen_ids)

    @property
    def rejected(self) -> Tokenized:
        return Tokenized(self.prompt_ids, self.rejected_ids)


_PREFIX_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def special_prefix(tokenizer) -> list[int]:
    """The special tokens (usually one BOS) the tokenizer puts before any text it encodes."""
    try:
        return _PREFIX_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    n = len(with_special) - len(without)
    prefix = with_special[:n] if n > 0 and with_special[n:n + len(without)] == without else []
    try:
        _PREFIX_CACHE[tokenizer] = prefix  # weak keys: a freed tokenizer's entry goes with it
    except TypeError:
        pass  # not weak-referenceable: compute each time
    return prefix


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise AlignkitError(
            "conversational data needs a tokenizer with a chat template; set tokenizer.chat_template "
            "or give prompt and response as plain strings"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _with_prefix(tokenizer, ids: list[int]) -> list[int]:
    prefix = special_prefix(tokenizer)
    return prefix + ids if prefix and ids[: len(prefix)] != prefix else ids


def render_prompt(tokenizer, prompt: Any) -> str:
    """The text a model reads for a prompt: a conversation through the chat template (with the assistant's
    generation header), a string as it is."""
    if isinstance(prompt, list):
        return _render(tokenizer, prompt, add_generation_prompt=True) if prompt else ""
    return prompt


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    """Token ids of a prompt (string or conversation), with BOS exactly once when the tokenizer uses one."""
    return _with_prefix(tokenizer, _encode(tokenizer, render_prompt(tokenizer, prompt)))


def _conversation_texts(tokenizer, prompt: list, completion: list) -> tuple[str, str]:
    """Split the template's rendering of prompt + completion into (text before the answer, the answer).

    With prompt messages the split is where the rendered prompt (with its generation header) ends. With
    none, the template may still write things before the answer (a default system prompt, the assistant
    header): they belong to the prompt, so the split is where the first answer's content begins.
    """
    full = _render(tokenizer, prompt + completion, add_generation_prompt=False)
    if prompt:
        before = _render(tokenizer, prompt, add_generation_prompt=True)
        if full.startswith(before):
            return before, full[len(before):]
    else:
        first = next((m["content"] for m in completion if m.get("content")), "")
        at = full.find(first) if first else -1
        if at >= 0:
            return full[:at], full[at:]
    # a template that renders history differently once an answer follows: keep the answers' own text
    before = _render(tokenizer, prompt, add_generation_prompt=True) if prompt else ""
    return before, "".join(m["content"] for m in completion if m.get("role") == "assistant")


def _end_with_eos(ids: list[int], eos: int) -> list[int]:
    """Cut after the last EOS (a template's newline after it is not part of the answer), or append one."""
    if eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return ids + [eos]


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise AlignkitError("the tokenizer has no EOS token; set tokenizer.eos_token so responses can end")
    return tokenizer.eos_token_id


def encode_pair_ids(tokenizer, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids ending with EOS) for one prompt and response, strings or conversations."""
    eos = _eos(tokenizer)
    if isinstance(completion, list):
        prompt_text, answer_text = _conversation_texts(tokenizer, prompt if isinstance(prompt, list) else [],
                                                       completion)
        prompt_ids = _with_prefix(tokenizer, _encode(tokenizer, prompt_text))
        return prompt_ids, _end_with_eos(_encode(tokenizer, answer_text), eos)
    return encode_prompt(tokenizer, prompt), _encode(tokenizer, completion) + [eos]


def encode_completion(tokenizer, prompt: Any, completion: Any) -> list[int]:
    """Token ids of a response to `prompt`, ending with EOS."""
    return encode_pair_ids(tokenizer, prompt, completion)[1]


def _cut_left(ids: list[int], keep: int, prefix: list[int]) -> list[int]:
    """The last `keep` tokens of a prompt, keeping its leading BOS."""
    if len(ids) <= keep:
        return ids
    head = prefix if prefix and ids[: len(prefix)] == prefix else []
    tail = max(keep - len(head), 0)
    return head + (ids[len(ids) - tail:] if tail else [])


def truncate(
    prompt_ids: list[int],
    responses: list[list[int]],
    *,
    max_length: int | None,
    max_prompt_length: int | None = None,
    prefix: list[int] = (),
) -> tuple[list[int], list[list[int]]] | None:
    """Fit prompt + the longest response into `max_length`; None when a response would be emptied.

    The prompt is cut from the left first (to `max_prompt_length`, then as far as needed, keeping its
    leading BOS and one more token to condition on); only then are responses cut from the right.
    """
    prefix = list(prefix)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = _cut_left(prompt_ids, max_prompt_length, prefix)
    if max_length is None:
        return prompt_ids, responses
    overflow = len(prompt_ids) + max(len(r) for r in responses) - max_length
    if overflow > 0:
        has_head = bool(prefix) and prompt_ids[: len(prefix)] == prefix
        floor = min(len(prompt_ids), (len(prefix) if has_head else 0) + 1)
        keep = max(len(prompt_ids) - overflow, floor)
        prompt_ids = _cut_left(prompt_ids, keep, prefix)
    budget = max_length - len(prompt_ids)
    if budget <= 0:
        return None
    return prompt_ids, [r[:budget] for r in responses]


def tokenize_example(tokenizer, prompt: Any, completion: Any, *, max_length: int | None = None,
                     max_prompt_length: int | None = None) -> Tokenized | None:
    """Tokenize one prompt/response; None when truncation would empty the response."""
    prompt_ids, completion_ids = encode_pair_ids(tokenizer, prompt, completion)
    fitted = truncate(prompt_ids, [completion_ids], max_length=max_length,
                      max_prompt_length=max_prompt_length, prefix=special_prefix(tokenizer))
    return None if fitted is None else Tokenized(fitted[0], fitted[1][0])


def tokenize_pair(tokenizer, prompt: Any, chosen: Any, rejected: Any, *, max_length: int | None = None,
                  max_prompt_length: int | None = None) -> TokenizedPair | None:
    """Tokenize a preference pair; both responses keep the same (possibly cut) prompt."""
    prompt_ids, chosen_ids = encode_pair_ids(tokenizer, prompt, chosen)
    rejected_prompt_ids, rejected_ids = encode_pair_ids(tokenizer, prompt, rejected)
    if rejected_prompt_ids != prompt_ids:  # only with no prompt messages and a template that differs by answer
        raise AlignkitError("chosen and rejected render different prompts; give the prompt explicitly")
    responses = [chosen_ids, rejected_ids]
    fitted = truncate(prompt_ids, responses, max_length=max_length, max_prompt_length=max_prompt_length,
                      prefix=special_prefix(tokenizer))
    return None if fitted is None else TokenizedPair(fitted[0], *fitted[1])


def tokenize_rows(tokenizer, rows: list[dict], kind: str, *, max_length: int | None = None,
                  max_prompt_length: int | None = None) -> list:
    """Tokenize validated rows of `kind`; drops (and warns about, with the count) rows truncation would empty.

    preference rows give `TokenizedPair`s; sft, unpaired and prompt+completion rows give `Tokenized`.
    """
    out, dropped = [], 0
    limits = {"max_length": max_length, "max_prompt_length": max_prompt_length}
    for row in rows:
        if kind == "preference":
            row = explicit_prompt(row)
            item = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], **limits)
        elif kind in ("sft", "unpaired"):
            prompt, completion = split_sft(row)
            item = tokenize_example(tokenizer, prompt, completion, **limits)
        else:
            raise AlignkitError(f"tokenize_rows: {kind!r} rows have no response; use encode_prompt")
        if item is None:
            dropped += 1
        else:
            out.append(item)
    if dropped:
        warnings.warn(
            f"dropped {dropped} of {len(rows)} examples: at max_length={max_length} their responses "
            "would be empty; raise max_length or lower max_prompt_length",
            TruncationWarning, stacklevel=2,
        )
    return out


@dataclass
class MaskedExample:
    """Token ids with a per-token loss mask (1 where the token is trained on), for SFT."""

    input_ids: list[int]
    loss_mask: list[int]


def encode_conversation(tokenizer, messages: list[dict]) -> MaskedExample:
    """A whole conversation with every assistant turn marked for the loss (and nothing else).

    The template's rendering is cut at each assistant turn's start and end; each piece is tokenized on its
    own, so no merge crosses a boundary. Inside an assistant turn, tokens after its last EOS (a template's
    newline) are not trained. Templates that rewrite earlier turns once later ones follow fall back to
    training on the final assistant turn only.
    """
    eos = _eos(tokenizer)
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i in turns:
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if i == 0:
            before = through[: max(through.find(messages[0]["content"]), 0)]
        if not (before.startswith(done) and through.startswith(before)):
            prompt_ids, answer_ids = encode_pair_ids(tokenizer, messages[: turns[-1]], [messages[turns[-1]]])
            return MaskedExample(prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids))
        pieces += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    ids: list[int] = []
    mask: list[int] = []
    for n, (text, trained) in enumerate(pieces):
        piece = _encode(tokenizer, text)
        if n == 0:
            piece = _with_prefix(tokenizer, piece)
        if trained:
            piece = _end_with_eos(piece, eos) if n == len(pieces) - 1 else piece
            last_eos = len(piece) - piece[::-1].index(eos) if eos in piece else len(piece)
            ids += piece
            mask += [1] * last_eos + [0] * (len(piece) - last_eos)
        else:
            ids += piece
            mask += [0] * len(piece)
    return MaskedExample(ids, mask)


def truncate_masked(example: MaskedExample, max_length: int | None, prefix: list[int] = ()) -> MaskedExample | None:
    """Fit a masked example into max_length the way `truncate` does: everything before the final trained
    span counts as prompt (cut from the left first), the final span as the response; None if emptied."""
    if max_length is None or len(example.input_ids) <= max_length:
        return example if any(example.loss_mask) else None
    mask = example.loss_mask
    if not any(mask):
        return None
    start = len(mask) - 1
    while start > 0 and not (mask[start - 1] == 0 and mask[start] == 1):
        start -= 1  # first token of the final trained span
    positions = list(range(len(mask)))
    has_prefix = bool(prefix) and example.input_ids[: len(prefix)] == list(prefix)
    fitted = truncate(positions[:start], [positions[start:]], max_length=max_length,
                      prefix=list(range(len(prefix))) if has_prefix else [])
    if fitted is None:
        return None
    kept = fitted[0] + fitted[1][0]
    out = MaskedExample([example.input_ids[i] for i in kept], [mask[i] for i in kept])
    return out if any(out.loss_mask) else None


def cut_prompt(row: dict, tokenizer, max_prompt_length: int) -> dict:
    """Plain-text prompts longer than max_prompt_length tokens keep their last tokens (conversations are kept
    whole: cutting one would break its chat template)."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if len(ids) > max_prompt_length:
            return {**row, "prompt": tokenizer.decode(ids[-max_prompt_length:])}
    return row
