"""Replies: the one place that knows every text in an OpenAI-style (chat) completion reply.

`clean_reply` rebuilds a reply from an allowlist of its shape (anything else is dropped before the client
sees it); `choice_texts` and `reply_texts` list every text the client reads: `message.content` (a string or
text parts), `reasoning_content`, `reasoning`, `refusal`, `tool_calls[].function.name/arguments` (and ids),
legacy `function_call`, the completions `text`, and logprobs: the chosen tokens joined, their bytes decoded,
and every alternative in `top_logprobs`. `rewrite_choice` and `blocked_choice` change a choice after the
output rails: a blocked or rewritten choice loses its logprobs. Texts and errors: `alignkit.safety.openai_texts`.
"""

from __future__ import annotations

import json
from typing import Callable

from alignkit.safety.openai_texts import JSON_VIEW, TEXT_PARTS, ReplyError, Text, json_strings

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call", "abort")


def _string(value, where: str, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ReplyError(f"upstream reply: {where} is not a string")
    return value


def _numbers_only(value):
    """A usage object with only its numbers (and nested objects of numbers) kept."""
    if isinstance(value, dict):
        return {k: v for k, v in ((k, _numbers_only(v)) for k, v in value.items()) if v is not None}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _clean_logprob(entry) -> dict:
    token = entry["token"]
    out = {"token": token if isinstance(token, str) else _fail(),
           "logprob": entry["logprob"] if _is_number(entry.get("logprob")) else _fail(),
           "bytes": _clean_bytes(entry.get("bytes"))}
    return out


def _clean_bytes(value):
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        _fail()
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail():
    raise TypeError  # caught by the logprobs cleaners: malformed logprobs are dropped, never passed on


def _clean_chat_logprobs(logprobs):
    """Chat logprobs with only their known fields; None (dropped) when anything is malformed."""
    try:
        out = {}
        for key in ("content", "refusal"):
            entries = logprobs.get(key)
            if entries is None:
                out[key] = None
                continue
            out[key] = [{**_clean_logprob(e), "top_logprobs": [_clean_logprob(t) for t in e.get("top_logprobs") or []]}
                        for e in entries]
        return out
    except (TypeError, KeyError, AttributeError):
        return None


def _clean_text_logprobs(logprobs):
    """Completions logprobs (tokens, token_logprobs, top_logprobs, text_offset); None when malformed."""
    try:
        tokens = [t if isinstance(t, str) else _fail() for t in logprobs["tokens"]]
        return {"tokens": tokens,
                "token_logprobs": [p if p is None or _is_number(p) else _fail() for p in logprobs["token_logprobs"]],
                "top_logprobs": None if logprobs.get("top_logprobs") is None else [
                    None if top is None else {(k if isinstance(k, str) else _fail()): (v if _is_number(v) else _fail())
                                              for k, v in top.items()} for top in logprobs["top_logprobs"]],
                "text_offset": [o if _is_number(o) else _fail() for o in logprobs.get("text_offset") or []]}
    except (TypeError, KeyError, AttributeError):
        return None


def _clean_message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise ReplyError(f"upstream reply: {where} is not an object")
    out = {"role": "assistant"}
    content = message.get("content")
    if "content" not in message:
        pass  # absent stays absent (a reply that needs no change is passed on byte for byte)
    elif isinstance(content, list):  # parts: only text-like ones are kept
        out["content"] = [{"type": p["type"], TEXT_PARTS[p["type"]]: _string(p.get(TEXT_PARTS[p["type"]]),
                                                                             f"{where}.content[{i}]", False)}
                          for i, p in enumerate(content) if isinstance(p, dict) and p.get("type") in TEXT_PARTS]
    else:
        out["content"] = _string(content, f"{where}.content")
    for key in ("reasoning_content", "reasoning", "refusal"):
        if message.get(key) is not None:
            out[key] = _string(message[key], f"{where}.{key}")
    if message.get("tool_calls"):
        calls = message["tool_calls"]
        if not isinstance(calls, list):
            raise ReplyError(f"upstream reply: {where}.tool_calls is not a list")
        out["tool_calls"] = [_clean_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)]
    if message.get("function_call") is not None:
        out["function_call"] = _clean_function(message["function_call"], f"{where}.function_call")
    return out


def _clean_function(function, where: str) -> dict:
    if not isinstance(function, dict):
        raise ReplyError(f"upstream reply: {where} is not an object")
    return {"name": _string(function.get("name"), f"{where}.name") or "",
            "arguments": _string(function.get("arguments"), f"{where}.arguments") or ""}


def _clean_call(call, where: str) -> dict:
    if not isinstance(call, dict):
        raise ReplyError(f"upstream reply: {where} is not an object")
    out = {"id": _string(call.get("id"), f"{where}.id") or "", "type": "function",
           "function": _clean_function(call.get("function"), f"{where}.function")}
    if isinstance(call.get("index"), int) and not isinstance(call.get("index"), bool):
        out["index"] = call["index"]
    return out


def _clean_choice(kind: str, choice, position: int) -> dict:
    where = f"choices[{position}]"
    if not isinstance(choice, dict):
        raise ReplyError(f"upstream reply: {where} is not an object")
    index = choice.get("index")
    out = {"index": index if isinstance(index, int) and not isinstance(index, bool) else position}
    if kind == "chat":
        out["message"] = _clean_message(choice.get("message"), f"{where}.message")
        clean_logprobs = _clean_chat_logprobs
    else:
        out["text"] = _string(choice.get("text"), f"{where}.text", nullable=False)
        clean_logprobs = _clean_text_logprobs
    if "logprobs" in choice:
        out["logprobs"] = None if choice["logprobs"] is None else clean_logprobs(choice["logprobs"])
    if "finish_reason" in choice:
        reason = choice["finish_reason"]
        out["finish_reason"] = reason if reason is None or reason in FINISH_REASONS else "stop"
    if "stop_reason" in choice:  # vLLM: a token id (kept) or the matched stop string (dropped: not ours to vouch for)
        stop = choice["stop_reason"]
        out["stop_reason"] = stop if isinstance(stop, int) and not isinstance(stop, bool) else None
    return out


def clean_reply(kind: str, reply) -> dict:
    """The reply rebuilt from the known shape of a (chat) completion object: every field the client could
    read is one `choice_texts` or `reply_texts` lists; anything else is dropped. ReplyError when the reply is
    not a completion object."""
    if not isinstance(reply, dict):
        raise ReplyError("upstream reply: not a JSON object")
    choices = reply.get("choices")
    if not isinstance(choices, list):
        raise ReplyError("upstream reply: no choices list")
    out = {"id": _string(reply.get("id"), "id") or "", "object": "chat.completion" if kind == "chat" else
           "text_completion", "model": _string(reply.get("model"), "model") or "",
           "choices": [_clean_choice(kind, c, i) for i, c in enumerate(choices)]}
    if _is_number(reply.get("created")):
        out["created"] = reply["created"]
    if isinstance(reply.get("usage"), dict):
        out["usage"] = _numbers_only(reply["usage"])
    for key in ("system_fingerprint", "service_tier"):
        if key in reply:
            out[key] = _string(reply[key], key)
    # keep the upstream's key order (so a clean reply can be recognised as unchanged and passed on as is)
    order = [k for k in reply if k in out] + [k for k in out if k not in reply]
    return {k: out[k] for k in order}


REPLY_PARAMETERS = ("id", "model", "system_fingerprint", "service_tier")


def reply_texts(reply: dict) -> list[Text]:
    """The clean reply's own strings outside its choices (id, model, ...): deny-lists read them."""
    return [Text(key, "parameter", reply[key], model_reads=False, rewritable=False)
            for key in REPLY_PARAMETERS if isinstance(reply.get(key), str) and reply[key]]


def _logprob_texts(where: str, tokens: list[str], raw: list, alternatives: list[str], raw_alternatives: list):
    """The chosen tokens joined (a word split across tokens is whole again), their bytes decoded, and each
    alternative on its own line."""
    out = [Text(f"{where}.tokens", "response", "".join(tokens), rewritable=False)]
    if raw:
        out.append(Text(f"{where}.bytes", "response", bytes(raw).decode("utf-8", "replace"), rewritable=False))
    if alternatives:
        out.append(Text(f"{where}.top_logprobs", "response", "\n".join(alternatives), rewritable=False))
    if raw_alternatives:
        out.append(Text(f"{where}.top_logprobs.bytes", "response",
                        b"\n".join(bytes(b) for b in raw_alternatives).decode("utf-8", "replace"), rewritable=False))
    return out


def choice_texts(kind: str, choice: dict) -> list[Text]:
    """Every text of one clean choice that the client reads."""
    texts: list[Text] = []

    def add(where: str, value, model_reads: bool = True) -> None:
        if isinstance(value, str) and value:
            texts.append(Text(where, "response" if model_reads else "parameter", value, model_reads, model_reads))
            decoded = json_strings(value) if where.endswith("arguments") else None
            if decoded is not None:
                texts.append(Text(where + JSON_VIEW, "response", decoded, rewritable=False))

    if kind == "chat":
        message = choice["message"]
        content = message.get("content")
        if isinstance(content, list):
            for i, part in enumerate(content):
                field = TEXT_PARTS[part["type"]]
                add(f"message.content[{i}].{field}", part[field])
        else:
            add("message.content", content)
        for key in ("reasoning_content", "reasoning", "refusal"):
            add(f"message.{key}", message.get(key))
        for i, call in enumerate(message.get("tool_calls") or []):
            add(f"message.tool_calls[{i}].id", call["id"], model_reads=False)
            add(f"message.tool_calls[{i}].function.name", call["function"]["name"])
            add(f"message.tool_calls[{i}].function.arguments", call["function"]["arguments"])
        if message.get("function_call"):
            add("message.function_call.name", message["function_call"]["name"])
            add("message.function_call.arguments", message["function_call"]["arguments"])
        for key in ("content", "refusal"):
            entries = (choice.get("logprobs") or {}).get(key) or []
            if entries:
                tops = [t for e in entries for t in e["top_logprobs"]]
                texts += _logprob_texts(f"logprobs.{key}", [e["token"] for e in entries],
                                        [b for e in entries for b in e["bytes"] or []],
                                        [t["token"] for t in tops], [t["bytes"] for t in tops if t["bytes"]])
    else:
        add("text", choice["text"])
        logprobs = choice.get("logprobs")
        if logprobs:
            tops = [k for top in logprobs["top_logprobs"] or [] if top for k in top]
            texts += _logprob_texts("logprobs", logprobs["tokens"], [], tops, [])
    return texts


def rewrite_choice(kind: str, choice: dict, new_texts: dict[str, str], redact: Callable[[str], str]) -> dict:
    """The choice with the texts at the paths in `new_texts` replaced (paths from `choice_texts`) and its
    logprobs dropped (they spell the old text). JSON arguments whose decoded strings needed a change that their
    raw text did not show are re-encoded with `redact` applied to each string."""
    out = json.loads(json.dumps(choice))
    for where, text in new_texts.items():
        if where.startswith("logprobs"):
            continue
        if where.endswith(JSON_VIEW):
            where = where[:-len(JSON_VIEW)]
            if where in new_texts:
                continue
            target, key = _locate(out, where)
            target[key] = json.dumps(_map_strings(json.loads(target[key]), redact), ensure_ascii=False)
            continue
        target, key = _locate(out, where)
        target[key] = text
    out["logprobs"] = None
    return out


def _map_strings(value, fn: Callable[[str], str]):
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(k): _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _locate(obj, where: str):
    """(container, key) of a path such as message.tool_calls[0].function.name."""
    steps = []
    for piece in where.split("."):
        name, _, rest = piece.partition("[")
        steps.append(name)
        steps += [int(i) for i in rest.rstrip("]").split("][")] if rest else []
    for step in steps[:-1]:
        obj = obj[step]
    return obj, steps[-1]


def blocked_choice(kind: str, choice: dict, refusal: str) -> dict:
    """The choice with every text replaced by the refusal: no tool calls, reasoning or logprobs."""
    out = {"index": choice["index"]}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": refusal}
    else:
        out["text"] = refusal
    out.update(logprobs=None, finish_reason="content_filter")
    return out
