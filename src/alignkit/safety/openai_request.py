"""Requests: the one place that knows every text in an OpenAI-style (chat) completion request.

`parse_request` rebuilds a request from an allowlist of fields (an unknown field with a value is refused with
400; one whose value is null is dropped) and lists every text in it: every message of every role (system,
developer, user, assistant, tool, function), with its `content` as a string or as parts of type `text`,
`input_text`, `output_text` or `refusal`; `name`; assistant `tool_calls[].function.name/arguments`, legacy
`function_call`, `reasoning_content`/`reasoning` and `refusal`; `tools[].function.name/description/parameters`
and legacy `functions` (a JSON schema is read as its serialised text, so its property descriptions are read
too); `response_format.json_schema`; the completions `prompt` (a string or a list of strings) and `suffix`.
Token-id prompts are refused (the guard reads text, and the proxy does not have the model's tokenizer).
Media parts (`image_url`, `input_audio`, `file`, `video_url`, `audio_url`) carry no text the guard can
read, and an image URL is fetched by the model server (a way to reach its network): they are refused
unless the operator allows them (`allow_media`), in which case they are forwarded unchecked except that
deny-lists read their strings. Any other part type is refused. Also here: `message_texts` (the same walk on a
conversation), `joined_conversation` and `request_choices`. Texts and errors: `alignkit.safety.openai_texts`.
"""

from __future__ import annotations

import json

from alignkit.safety.openai_texts import JSON_VIEW, TEXT_PARTS, RequestError, Text, Visit, all_strings, json_strings

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MEDIA_PARTS = ("image_url", "input_audio", "file", "video_url", "audio_url")
MAX_MESSAGES = 2048
MAX_PROMPTS = 256
MAX_LIST = 256  # tools, functions, tool calls, stop strings, parts of one message
MAX_LOGIT_BIAS = 1024


def _keep(text: Text) -> str:
    return text.text


class _RequestWalk:
    """Validates a request while rebuilding it from known fields, calling `visit` on each text (its return
    value replaces the text)."""

    def __init__(self, visit: Visit, allow_media: bool):
        self.visit, self.allow_media = visit, allow_media

    # -- leaves

    def text(self, value, where: str, role: str, nullable: bool = True) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise RequestError(f"{where}: must be a string")
        return self.visit(Text(where, role, value))

    def parameter(self, value, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise RequestError(f"{where}: must be a string")
        self.visit(Text(where, "parameter", value, model_reads=False, rewritable=False))
        return value

    def schema(self, value, where: str) -> dict | None:
        """A JSON schema, read as its serialised text (names, descriptions and enums all in one text)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise RequestError(f"{where}: must be a JSON object")
        raw = json.dumps(value, ensure_ascii=False)
        new = self.visit(Text(where, "tools", raw))
        # and decoded: an escaped newline before a word hides it from a whole-word match in the raw text
        self.visit(Text(where + JSON_VIEW, "tools", "\n".join(all_strings(value)), rewritable=False))
        if new == raw:
            return value
        try:
            return json.loads(new)
        except ValueError:
            raise RequestError(f"{where}: personal data could not be redacted while keeping it JSON") from None

    def strings(self, value, where: str):
        """Any JSON value whose strings (keys too) only deny-lists read: media parts."""
        if isinstance(value, dict):
            return {self.parameter(k, where): self.strings(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.strings(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.parameter(value, where)
        return value

    # -- messages

    def messages(self, messages, where: str = "messages") -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise RequestError(f"{where}: must be a non-empty list of {{role, content}} objects")
        if len(messages) > MAX_MESSAGES:
            raise RequestError(f"{where}: at most {MAX_MESSAGES} messages")
        return [self.message(m, f"{where}[{i}]") for i, m in enumerate(messages)]

    def message(self, message, where: str) -> dict:
        if not isinstance(message, dict):
            raise RequestError(f"{where}: must be a {{role, content}} object")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role: must be one of {', '.join(ROLES)}, got {_short(role)}")
        out = {"role": role}
        for key, value in message.items():
            at = f"{where}.{key}"
            if key == "role" or value is None:
                continue
            if key == "content":
                out[key] = self.content(value, at, role)
            elif key in ("name", "reasoning_content", "reasoning", "refusal"):
                out[key] = self.text(value, at, role)
            elif key == "tool_call_id":
                out[key] = self.parameter(value, at)
            elif key == "tool_calls":
                out[key] = [self.tool_call(c, f"{at}[{i}]", role) for i, c in enumerate(_list(value, at))]
            elif key == "function_call":
                out[key] = self.function(value, at, role)
            else:
                raise RequestError(f"{at}: unknown field (fields the guard does not read are not forwarded)")
        if "content" in message:
            out.setdefault("content", None)  # an explicit null stays: some servers want the key
        return out

    def content(self, content, where: str, role: str):
        if isinstance(content, str):
            return self.text(content, where, role)
        if isinstance(content, list):
            return [self.part(p, f"{where}[{i}]", role) for i, p in enumerate(_list(content, where))]
        raise RequestError(f"{where}: must be a string, a list of content parts or null")

    def part(self, part, where: str, role: str) -> dict:
        if not isinstance(part, dict):
            raise RequestError(f"{where}: must be a content part object with a type")
        kind = part.get("type")
        if kind in TEXT_PARTS:
            field = TEXT_PARTS[kind]
            _only(part, {"type", field}, where)
            return {"type": kind, field: self.text(part.get(field), f"{where}.{field}", role, nullable=False)}
        if kind in MEDIA_PARTS:
            if not self.allow_media:
                raise RequestError(f"{where}: {kind} parts are refused: the guard cannot read them (start the "
                                   f"proxy with --allow_media to forward them unchecked)")
            return self.strings(part, where)
        raise RequestError(f"{where}.type: unknown content part type {_short(kind)}")

    def tool_call(self, call, where: str, role: str) -> dict:
        if not isinstance(call, dict):
            raise RequestError(f"{where}: must be a tool call object")
        _only(call, {"id", "type", "function", "index"}, where)
        if call.get("type", "function") != "function":
            raise RequestError(f"{where}.type: only function tool calls are supported")
        out = {"type": "function", "function": self.function(call.get("function"), f"{where}.function", role)}
        if call.get("id") is not None:
            out["id"] = self.parameter(call["id"], f"{where}.id")
        if call.get("index") is not None:
            out["index"] = _integer(call["index"], f"{where}.index")
        return out

    def function(self, function, where: str, role: str) -> dict:
        """A call: {name, arguments} (arguments is a JSON text the model wrote or reads)."""
        if not isinstance(function, dict):
            raise RequestError(f"{where}: must be a {{name, arguments}} object")
        _only(function, {"name", "arguments"}, where)
        out = {key: self.text(function[key], f"{where}.{key}", role) for key in ("name", "arguments")
               if function.get(key) is not None}
        decoded = json_strings(function.get("arguments") or "")
        if decoded is not None:  # read, never rewritten: PII hidden by JSON escapes is not redacted here
            self.visit(Text(f"{where}.arguments{JSON_VIEW}", role, decoded, rewritable=False))
        return out

    # -- tools and formats

    def definition(self, function, where: str) -> dict:
        """A function definition: {name, description, parameters, strict}."""
        return self.named_schema(function, where, "parameters")

    def named_schema(self, spec, where: str, schema_key: str) -> dict:
        """{name, description, <schema_key>, strict}: a function definition (parameters) or a response
        format's json_schema (schema); the name and description are texts the rails read."""
        if not isinstance(spec, dict):
            raise RequestError(f"{where}: must be a {{name, description, {schema_key}}} object")
        _only(spec, {"name", "description", schema_key, "strict"}, where)
        out = {"name": self.text(spec.get("name"), f"{where}.name", "tools", nullable=False)}
        if spec.get("description") is not None:
            out["description"] = self.text(spec["description"], f"{where}.description", "tools")
        if spec.get(schema_key) is not None:
            out[schema_key] = self.schema(spec[schema_key], f"{where}.{schema_key}")
        if spec.get("strict") is not None:
            out["strict"] = _boolean(spec["strict"], f"{where}.strict")
        return out

    def tools(self, tools, where: str) -> list[dict]:
        out = []
        for i, tool in enumerate(_list(tools, where)):
            at = f"{where}[{i}]"
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise RequestError(f"{at}: must be a {{type: function, function: {{...}}}} object")
            _only(tool, {"type", "function"}, at)
            out.append({"type": "function", "function": self.definition(tool.get("function"), f"{at}.function")})
        return out

    def functions(self, functions, where: str) -> list[dict]:
        return [self.definition(f, f"{where}[{i}]") for i, f in enumerate(_list(functions, where))]

    def tool_choice(self, choice, where: str):
        if isinstance(choice, str):
            return _enum(choice, ("none", "auto", "required"), where)
        if isinstance(choice, dict) and choice.get("type", "function") == "function":
            _only(choice, {"type", "function"}, where)
            function = choice.get("function")
            if not isinstance(function, dict):
                raise RequestError(f"{where}.function: must be a {{name}} object")
            _only(function, {"name"}, f"{where}.function")
            return {"type": "function", "function": {"name": self.parameter(function.get("name"),
                                                                            f"{where}.function.name")}}
        raise RequestError(f"{where}: must be none, auto, required or {{type: function, function: {{name}}}}")

    def function_choice(self, choice, where: str):
        if isinstance(choice, str):
            return _enum(choice, ("none", "auto"), where)
        if isinstance(choice, dict):
            _only(choice, {"name"}, where)
            return {"name": self.parameter(choice.get("name"), f"{where}.name")}
        raise RequestError(f"{where}: must be none, auto or {{name}}")

    def response_format(self, form, where: str) -> dict:
        if not isinstance(form, dict):
            raise RequestError(f"{where}: must be an object with a type")
        kind = _enum(form.get("type"), ("text", "json_object", "json_schema"), f"{where}.type")
        _only(form, {"type", "json_schema"}, where)
        if kind != "json_schema":
            return {"type": kind}
        return {"type": kind, "json_schema": self.named_schema(form.get("json_schema"), f"{where}.json_schema",
                                                               "schema")}

    def prompt(self, prompt, where: str = "prompt"):
        if isinstance(prompt, str):
            return self.text(prompt, where, "prompt", nullable=False)
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) > MAX_PROMPTS:
                raise RequestError(f"{where}: at most {MAX_PROMPTS} prompts per request")
            return [self.text(p, f"{where}[{i}]", "prompt") for i, p in enumerate(prompt)]
        if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
            raise RequestError(f"{where}: token ids cannot be checked by the guard; send the prompt as text")
        raise RequestError(f"{where}: must be a string or a non-empty list of strings")


# -- parameter checks (cheap type checks; the upstream checks ranges)


def _short(value) -> str:
    return repr(value)[:60]


def _only(obj: dict, known: set, where: str) -> None:
    for key, value in obj.items():
        if key not in known and value is not None:
            raise RequestError(f"{where}.{key}: unknown field (fields the guard does not read are not forwarded)")


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise RequestError(f"{where}: must be a list")
    if len(value) > MAX_LIST:
        raise RequestError(f"{where}: at most {MAX_LIST} entries")
    return value


def _enum(value, allowed: tuple, where: str) -> str:
    if value not in allowed:
        raise RequestError(f"{where}: must be one of {', '.join(allowed)}, got {_short(value)}")
    return value


def _number(value, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{where}: must be a number")
    return value


def _integer(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{where}: must be an integer")
    return value


def _boolean(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{where}: must be true or false")
    return value


def _integers(value, where: str) -> list:
    return [_integer(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]


def _logit_bias(value, where: str) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise RequestError(f"{where}: must be an object of at most {MAX_LOGIT_BIAS} token id: bias pairs")
    for key, bias in value.items():
        if not key.isdigit() or not key.isascii():
            raise RequestError(f"{where}: keys must be token ids")
        _number(bias, f"{where}.{key}")
    return value


def _stop(walk: _RequestWalk, value, where: str):
    if isinstance(value, str):
        return walk.parameter(value, where)
    return [walk.parameter(v, f"{where}[{i}]") if isinstance(v, str) else _not_string(f"{where}[{i}]")
            for i, v in enumerate(_list(value, where))]


def _not_string(where: str):
    raise RequestError(f"{where}: must be a string")


_NUMBERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "min_p", "repetition_penalty",
            "length_penalty")
_INTEGERS = ("max_tokens", "max_completion_tokens", "seed", "top_k", "min_tokens", "top_logprobs",
             "truncate_prompt_tokens")
_BOOLEANS = ("stream", "echo", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
             "include_stop_str_in_output", "add_generation_prompt", "continue_final_message",
             "add_special_tokens", "parallel_tool_calls")
_COMMON = {
    **{k: lambda w, v, at: _number(v, at) for k in _NUMBERS},
    **{k: lambda w, v, at: _integer(v, at) for k in _INTEGERS},
    **{k: lambda w, v, at: _boolean(v, at) for k in _BOOLEANS},
    "model": lambda w, v, at: w.parameter(v, at),
    "user": lambda w, v, at: w.parameter(v, at),
    "stop": _stop,
    "stop_token_ids": lambda w, v, at: _integers(v, at),
    "logit_bias": lambda w, v, at: _logit_bias(v, at),
}
CHAT_PARAMETERS = {
    **_COMMON,
    "messages": lambda w, v, at: w.messages(v, at),
    "logprobs": lambda w, v, at: _boolean(v, at),
    "tools": lambda w, v, at: w.tools(v, at),
    "functions": lambda w, v, at: w.functions(v, at),
    "tool_choice": lambda w, v, at: w.tool_choice(v, at),
    "function_call": lambda w, v, at: w.function_choice(v, at),
    "response_format": lambda w, v, at: w.response_format(v, at),
    "reasoning_effort": lambda w, v, at: _enum(v, ("minimal", "low", "medium", "high"), at),
}
COMPLETION_PARAMETERS = {
    **_COMMON,
    "prompt": lambda w, v, at: w.prompt(v, at),
    "suffix": lambda w, v, at: w.text(v, at, "prompt"),
    "logprobs": lambda w, v, at: _integer(v, at),
}
REQUIRED = {"chat": "messages", "text": "prompt"}


def parse_request(kind: str, body, max_n: int = 8, allow_media: bool = False,
                  visit: Visit = _keep) -> tuple[dict, list[Text]]:
    """(the request as it may be forwarded, every text in it). `kind` is chat or text (completions).
    RequestError (one line) for anything the proxy will not forward: unknown fields, wrong types, unknown
    content parts, token-id prompts, `stream: true`, `n` or `best_of` over `max_n`. `visit` may replace
    each text (PII redaction); texts are listed as they were before `visit`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    texts: list[Text] = []

    def collect(text: Text) -> str:
        texts.append(text)
        return visit(text)

    walk = _RequestWalk(collect, allow_media)
    parameters = CHAT_PARAMETERS if kind == "chat" else COMPLETION_PARAMETERS
    if body.get(REQUIRED[kind]) is None:
        raise RequestError(f"{REQUIRED[kind]}: missing")
    if body.get("stream"):
        raise RequestError("stream: true is not supported (the output rail checks the whole reply before any of "
                           "it is sent); send stream: false")
    out = {}
    for key, value in body.items():
        if value is None:
            continue  # null carries nothing; the upstream's default applies
        if key in ("n", "best_of"):
            if _integer(value, key) < 1 or value > max_n:
                raise RequestError(f"{key}: must be 1 to {max_n} (the proxy's --max_n)")
            out[key] = value
        elif key in parameters:
            out[key] = parameters[key](walk, value, key)
        else:
            raise RequestError(f"{key[:40]}: unknown field (fields the guard does not read are not forwarded)")
    return out, texts


def request_choices(kind: str, body: dict) -> int:
    """How many choices a reply to this (parsed) request has: n, times the prompts for completions."""
    n = body.get("n") or 1
    if kind == "chat":
        return n
    prompt = body["prompt"]
    return n * (len(prompt) if isinstance(prompt, list) else 1)


def message_texts(messages: list, visit: Visit = _keep, allow_media: bool = True) -> tuple[list, list[Text]]:
    """(the messages rebuilt with `visit` applied, every text in them): for `Guardrails` on conversations."""
    texts: list[Text] = []

    def collect(text: Text) -> str:
        texts.append(text)
        return visit(text)

    return _RequestWalk(collect, allow_media).messages(messages), texts


def joined_conversation(texts: list[Text]) -> str:
    """One `role: text` line per message (the texts of a message joined): what a guard reading the whole
    conversation at once sees."""
    lines, current = [], None
    for text in texts:
        if not text.model_reads or not text.where.startswith("messages["):
            continue
        message = text.where.split("]", 1)[0]
        if message != current:
            lines.append(f"{text.role}: {text.text}")
            current = message
        else:
            lines[-1] += "\n" + text.text
    return "\n".join(lines)
