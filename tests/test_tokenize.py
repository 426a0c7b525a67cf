"""Tokenization, truncation, collation and prompt extraction, checked as properties on both test tokenizers.

Two tokenizers with opposite habits:

- `embedded:tiny`: byte-level BPE that ADDS a BOS (`<|bos|>`, id 1) to everything it encodes, and whose ChatML
  template ALSO writes `{{ bos_token }}`: the double-BOS trap.
- SmolLM2: adds no BOS (its `bos_token` is `<|im_start|>`, which the template writes before every turn), and its
  ChatML template inserts a default system prompt when the conversation has none.

The properties are the contract in `alignkit.data.tokenize`'s docstring: the prompt is tokenized alone (BOS
exactly once), the response alone and ending with EOS, truncation cuts the prompt from the left (keeping BOS)
before it touches a response and never leaves a response empty.
"""

from __future__ import annotations

import copy
import weakref
import warnings
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from alignkit.data.collate import collate, collate_pairs, pad
from alignkit.data.formats import check_row, explicit_prompt, preference_to_unpaired, split_sft
from alignkit.data.tokenize import (
    Tokenized,
    TokenizedPair,
    TruncationWarning,
    encode_completion,
    encode_prompt,
    special_prefix,
    tokenize_example,
    tokenize_pair,
    tokenize_rows,
    truncate,
)
from alignkit.errors import AlignkitError

# hypothesis + the session-scoped tokenizers behind a function-scoped parametrized fixture
FIXTURE_OK = [HealthCheck.function_scoped_fixture]

# text that would be read as a special token is not "text"; random strings never hit these, but be explicit
SPECIAL_TEXTS = (
    "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<reponame>", "<file_sep>",
    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
    "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
)


def _plain(s: str) -> bool:
    return not any(special in s for special in SPECIAL_TEXTS)


# SmolLM2's byte-level vocabulary lacks the byte tokens for 0x04 0x06 0x13 0x14 0x16 0x1d and the UTF-8 lead
# bytes 0xF1 0xF2 (and bytes no UTF-8 uses): those characters cannot survive a round trip through it at all
# (see test_smollm2_cannot_represent_some_bytes), so generated text leaves them out. Tiny has every byte.
SMOLLM2_MISSING_BYTES = {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)}
_CHARS = st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",),
                       exclude_characters="\x04\x06\x13\x14\x16\x1d")
_EDGE = st.sampled_from(["", "", " ", "  ", "\n", "\t", " \n ", "\u00a0", "\u3000"])
_CORE = st.one_of(
    st.text(_CHARS, max_size=24),  # unicode up to plane 3
    st.text(alphabet=" \t\n\r\u00a0abcXYZ019.,!?'\"-éß中😀\u200b", max_size=24),  # whitespace-heavy
)
# leading/trailing whitespace is common in real prompts and responses
texts = st.builds(lambda a, b, c: a + b + c, _EDGE, _CORE, _EDGE).filter(_plain)
# the formats forbid empty and whitespace-only prompts, responses and message contents
nonblank = texts.filter(lambda s: bool(s.strip()))


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


@st.composite
def conversations(draw) -> list[dict]:
    """A conversational prompt: optional system turn, 0-2 earlier exchanges, ending with a user turn."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})  # system content may be empty
    for _ in range(draw(st.integers(0, 2))):
        messages += [user(draw(nonblank)), assistant(draw(nonblank))]
    messages.append(user(draw(nonblank)))
    return messages


@pytest.fixture(params=["tiny", "smollm2"])
def tok(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assert_prefix_once(tokenizer, ids: list[int]) -> None:
    """The tokenizer's special prefix (tiny: one BOS; SmolLM2: nothing) starts `ids`, and BOS is never doubled."""
    prefix = special_prefix(tokenizer)
    h = len(prefix)
    assert ids[:h] == prefix
    if h:
        assert ids[h:2 * h] != prefix, f"special prefix written twice: {ids[:2 * h]}"
    bos = tokenizer.bos_token_id
    assert ids[:2] != [bos, bos], f"double BOS: {ids[:4]}"


def strip_prefix(tokenizer, ids: list[int]) -> list[int]:
    return ids[len(special_prefix(tokenizer)):]


# ----------------------------------------------------------------------------------------------------
# the two tokenizers are what the tests assume


def test_tiny_adds_bos_and_its_template_writes_one_too(tiny_tokenizer):
    assert special_prefix(tiny_tokenizer) == [tiny_tokenizer.bos_token_id] == [1]
    assert tiny_tokenizer("a").input_ids[0] == 1
    assert render(tiny_tokenizer, [user("Hi")], True).startswith("<|bos|>")


def test_smollm2_adds_no_bos_and_has_a_default_system_prompt(smollm2_tokenizer):
    assert special_prefix(smollm2_tokenizer) == []
    assert "You are a helpful AI assistant" in render(smollm2_tokenizer, [user("Hi")], True)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable-symbol table that byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def test_smollm2_cannot_represent_some_bytes(tiny_tokenizer, smollm2_tokenizer):
    """Why generated text leaves some characters out: a property of SmolLM2's vocabulary, not of alignkit."""
    symbols = _byte_symbols()
    assert all(symbols[b] in tiny_tokenizer.get_vocab() for b in range(256))
    vocab = smollm2_tokenizer.get_vocab()
    assert {b for b in range(256) if symbols[b] not in vocab} == SMOLLM2_MISSING_BYTES
    assert decode(smollm2_tokenizer, encode(smollm2_tokenizer, "\U00040000")) != "\U00040000"


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(min_size=1).filter(lambda s: s.strip() and _plain(s)),
       response=st.text(min_size=1).filter(lambda s: s.strip() and _plain(s)))
def test_tiny_round_trips_all_of_unicode(tiny_tokenizer, prompt, response):
    t = tokenize_example(tiny_tokenizer, prompt, response)
    assert decode(tiny_tokenizer, t.prompt_ids) == "<|bos|>" + prompt
    assert decode(tiny_tokenizer, t.completion_ids) == response + "<|im_end|>"


def test_special_token_list_covers_both_tokenizers(tiny_tokenizer, smollm2_tokenizer):
    for tokenizer in (tiny_tokenizer, smollm2_tokenizer):
        for added in tokenizer.added_tokens_decoder.values():
            assert added.content in SPECIAL_TEXTS


# ----------------------------------------------------------------------------------------------------
# string prompts and responses


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=nonblank)
def test_string_prompt_is_tokenized_alone_with_prefix_once(tok, prompt):
    ids = encode_prompt(tok, prompt)
    assert ids == tok(prompt).input_ids  # exactly what the tokenizer gives the text on its own, specials included
    assert ids == special_prefix(tok) + encode(tok, prompt)
    assert_prefix_once(tok, ids)
    assert decode(tok, strip_prefix(tok, ids)) == prompt


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=nonblank, response=nonblank)
def test_string_example(tok, prompt, response):
    t = tokenize_example(tok, prompt, response)
    eos = tok.eos_token_id
    assert t.prompt_ids == encode_prompt(tok, prompt)
    assert t.completion_ids == encode(tok, response) + [eos]  # the response alone: no merge across the boundary
    assert t.input_ids == t.prompt_ids + t.completion_ids
    assert t.completion_ids[-1] == eos and eos not in t.completion_ids[:-1]  # exactly one EOS, at the end
    assert decode(tok, t.completion_ids[:-1]) == response
    assert decode(tok, strip_prefix(tok, t.prompt_ids)) == prompt
    assert_prefix_once(tok, t.input_ids)
    assert encode_completion(tok, prompt, response) == t.completion_ids


@settings(max_examples=50, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=nonblank, chosen=nonblank, rejected=nonblank)
def test_string_pair(tok, prompt, chosen, rejected):
    pair = tokenize_pair(tok, prompt, chosen, rejected)
    assert pair.prompt_ids == encode_prompt(tok, prompt)
    assert pair.chosen == tokenize_example(tok, prompt, chosen)
    assert pair.rejected == tokenize_example(tok, prompt, rejected)
    assert pair.chosen.prompt_ids == pair.rejected.prompt_ids


# ----------------------------------------------------------------------------------------------------
# conversations


def check_conversational(tokenizer, prompt, content, t: Tokenized) -> None:
    eos, eos_text = tokenizer.eos_token_id, tokenizer.eos_token
    rendered_prompt = render(tokenizer, prompt, add_generation_prompt=True)
    # the template writes any BOS it wants; encoding must not add a second one
    assert t.prompt_ids == encode(tokenizer, rendered_prompt)
    assert_prefix_once(tokenizer, t.prompt_ids)
    if special_prefix(tokenizer):
        assert t.prompt_ids.count(tokenizer.bos_token_id) == 1
    assert decode(tokenizer, t.prompt_ids) == rendered_prompt
    # the completion is the template's assistant turn, cut right after its EOS
    assert t.completion_ids[-1] == eos and eos not in t.completion_ids[:-1]
    assert decode(tokenizer, t.completion_ids) == content + eos_text
    full = render(tokenizer, prompt + [assistant(content)], add_generation_prompt=False)
    assert decode(tokenizer, t.input_ids) == full[: full.rindex(eos_text) + len(eos_text)]
    if not content[:1].isspace():
        # Leading whitespace in the answer may merge with the template's "\n" when the whole conversation is
        # encoded at once; tokenizing the prompt alone is what keeps the boundary exact, so only compare ids
        # with the all-at-once encoding where no merge can cross it.
        full_ids = encode(tokenizer, full)
        assert full_ids[: len(t.input_ids)] == t.input_ids


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=conversations(), content=nonblank)
def test_conversational_example(tok, prompt, content):
    t = tokenize_example(tok, prompt, [assistant(content)])
    assert t.prompt_ids == encode_prompt(tok, prompt)
    check_conversational(tok, prompt, content, t)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=conversations(), chosen=nonblank, rejected=nonblank)
def test_conversational_pair(tok, prompt, chosen, rejected):
    pair = tokenize_pair(tok, prompt, [assistant(chosen)], [assistant(rejected)])
    check_conversational(tok, prompt, chosen, pair.chosen)
    check_conversational(tok, prompt, rejected, pair.rejected)


def test_multi_turn_completion_keeps_every_turn_and_ends_at_the_last_eos(tok):
    prompt = [user("Hi")]
    completion = [assistant("Hello."), user("What is 2+2?"), assistant("4")]
    t = tokenize_example(tok, prompt, completion)
    eos_text = tok.eos_token
    assert decode(tok, t.completion_ids) == (
        f"Hello.{eos_text}\n<|im_start|>user\nWhat is 2+2?{eos_text}\n<|im_start|>assistant\n4{eos_text}"
    )
    assert t.completion_ids[-1] == tok.eos_token_id


def test_assistant_only_conversation_uses_the_chat_template(tok):
    row = {"messages": [assistant("Hi")]}  # valid sft data: a conversation with no prompt turns
    prompt, completion = split_sft(row)
    assert check_row(row, "sft") == []
    t = tokenize_example(tok, prompt, completion)
    full = render(tok, row["messages"], add_generation_prompt=False)
    assert decode(tok, t.input_ids) == full[: full.rindex(tok.eos_token) + len(tok.eos_token)]
    assert_prefix_once(tok, t.input_ids)
    assert t.completion_ids[-1] == tok.eos_token_id and decode(tok, t.completion_ids).endswith("Hi" + tok.eos_token)


def test_assistant_only_conversation_does_not_train_on_the_default_system_prompt(smollm2_tokenizer):
    t = tokenize_example(smollm2_tokenizer, [], [assistant("Hi")])
    # decodes to "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n
    #             <|im_start|>assistant\nHi<|im_end|>"
    assert "You are a helpful AI assistant" not in decode(smollm2_tokenizer, t.completion_ids)


def test_conversation_without_chat_template_is_a_clear_error(tiny_tokenizer):
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    with pytest.raises(AlignkitError, match="chat template"):
        encode_prompt(bare, [user("Hi")])
    with pytest.raises(AlignkitError, match="chat template"):
        tokenize_example(bare, [user("Hi")], [assistant("Yo")])


# ----------------------------------------------------------------------------------------------------
# truncation

# max_prompt_length >= 2 leaves room for tiny's BOS plus one token (the floor truncation itself keeps)
lengths = st.one_of(st.none(), st.integers(1, 40))
prompt_lengths = st.one_of(st.none(), st.integers(2, 30))


def expected_lengths(n_prompt: int, n_responses: list[int], h: int, max_length, max_prompt_length):
    """Lengths truncation should produce, worked out from the rules rather than the code; None when dropped."""
    p = n_prompt if max_prompt_length is None else min(n_prompt, max_prompt_length)
    if max_length is None:
        return p, n_responses
    floor = min(n_prompt, h + 1)  # the leading BOS (if any) and one token to condition on
    if p + max(n_responses) > max_length:
        p = max(max_length - max(n_responses), floor)
    budget = max_length - p
    if budget <= 0:
        return None
    return p, [min(n, budget) for n in n_responses]


def check_truncated_prompt(tokenizer, full_prompt: list[int], cut: list[int]) -> None:
    prefix = special_prefix(tokenizer)
    h = len(prefix)
    assert cut[:h] == prefix  # tiny: the leading BOS survives any cut
    kept = cut[h:]
    assert full_prompt[h:][len(full_prompt) - len(cut):] == kept  # cut from the left: a suffix of the original
    if len(full_prompt) > h:
        assert kept, "the prompt kept nothing to condition on"


@settings(max_examples=250, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=nonblank, response=nonblank, max_length=lengths, max_prompt_length=prompt_lengths)
def test_truncate_example(tok, prompt, response, max_length, max_prompt_length):
    full = tokenize_example(tok, prompt, response)
    t = tokenize_example(tok, prompt, response, max_length=max_length, max_prompt_length=max_prompt_length)
    h = len(special_prefix(tok))
    want = expected_lengths(len(full.prompt_ids), [len(full.completion_ids)], h, max_length, max_prompt_length)
    if want is None:
        assert t is None  # the response would have been emptied: dropped, never kept empty
        assert max_length <= min(len(full.prompt_ids), h + 1)
        return
    assert t is not None
    assert (len(t.prompt_ids), [len(t.completion_ids)]) == want
    if max_length is not None:
        assert len(t.input_ids) <= max_length
    if max_prompt_length is not None:
        assert len(t.prompt_ids) <= max_prompt_length
    assert t.completion_ids, "truncation emptied a response"
    assert t.completion_ids == full.completion_ids[: len(t.completion_ids)]  # responses cut from the right
    check_truncated_prompt(tok, full.prompt_ids, t.prompt_ids)
    if len(t.completion_ids) < len(full.completion_ids):
        # responses are only cut once the prompt is down to its floor
        assert len(t.prompt_ids) == min(len(full.prompt_ids), h + 1)
    if len(full.prompt_ids) <= (max_prompt_length or 10**9) and len(full.input_ids) <= (max_length or 10**9):
        assert t == full  # nothing to cut: nothing changes


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=nonblank, chosen=nonblank, rejected=nonblank, max_length=lengths,
       max_prompt_length=prompt_lengths)
def test_truncate_pair(tok, prompt, chosen, rejected, max_length, max_prompt_length):
    full = tokenize_pair(tok, prompt, chosen, rejected)
    pair = tokenize_pair(tok, prompt, chosen, rejected, max_length=max_length, max_prompt_length=max_prompt_length)
    h = len(special_prefix(tok))
    full_responses = [full.chosen_ids, full.rejected_ids]
    want = expected_lengths(len(full.prompt_ids), [len(r) for r in full_responses], h, max_length,
                            max_prompt_length)
    if want is None:
        assert pair is None
        return
    assert pair is not None
    responses = [pair.chosen_ids, pair.rejected_ids]
    assert (len(pair.prompt_ids), [len(r) for r in responses]) == want
    assert pair.chosen.prompt_ids == pair.rejected.prompt_ids  # one prompt for both responses
    check_truncated_prompt(tok, full.prompt_ids, pair.prompt_ids)
    for cut, whole in zip(responses, full_responses):
        assert cut and cut == whole[: len(cut)]
        if max_length is not None:
            assert len(pair.prompt_ids) + len(cut) <= max_length
        if len(cut) < len(whole):
            assert len(pair.prompt_ids) == min(len(full.prompt_ids), h + 1)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(prompt=conversations(), content=nonblank, max_length=st.integers(1, 60))
def test_truncate_conversational_keeps_bos_and_a_suffix(tok, prompt, content, max_length):
    full = tokenize_example(tok, prompt, [assistant(content)])
    t = tokenize_example(tok, prompt, [assistant(content)], max_length=max_length)
    h = len(special_prefix(tok))
    if max_length <= h + 1:
        assert t is None
        return
    assert len(t.input_ids) <= max_length and t.completion_ids
    check_truncated_prompt(tok, full.prompt_ids, t.prompt_ids)
    assert t.completion_ids == full.completion_ids[: len(t.completion_ids)]


# rows of each kind; the plain {"text"} sft row has an empty prompt, so it survives limits that drop the others
sft_rows = st.one_of(
    st.builds(lambda p, c: {"prompt": p, "completion": c, "id": 0}, nonblank, nonblank),
    st.builds(lambda t: {"text": t}, nonblank),
    st.builds(lambda p, c: {"messages": p + [assistant(c)]}, conversations(), nonblank),
)
preference_rows = st.one_of(
    st.builds(lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r}, nonblank, nonblank, nonblank),
    st.builds(lambda p, c, r: {"chosen": p + [assistant(c)], "rejected": p + [assistant(r)]},
              conversations(), nonblank, nonblank).filter(lambda row: row["chosen"] != row["rejected"]),
)


def _tokenize_rows_recording(tokenizer, rows, kind, **limits):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tokenize_rows(tokenizer, rows, kind, **limits)
    return out, [w for w in caught if issubclass(w.category, TruncationWarning)]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rows=st.lists(sft_rows, min_size=1, max_size=6), max_length=st.one_of(st.none(), st.integers(1, 4)))
def test_tokenize_rows_sft_drops_and_counts(tok, rows, max_length):
    expected = [tokenize_example(tok, *split_sft(row), max_length=max_length) for row in rows]
    kept = [e for e in expected if e is not None]
    out, caught = _tokenize_rows_recording(tok, rows, "sft", max_length=max_length)
    assert out == kept
    dropped = len(rows) - len(kept)
    if dropped:
        assert len(caught) == 1
        assert f"dropped {dropped} of {len(rows)}" in str(caught[0].message)
    else:
        assert caught == []


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rows=st.lists(preference_rows, min_size=1, max_size=5), max_length=st.one_of(st.none(), st.integers(1, 4)))
def test_tokenize_rows_preference_drops_and_counts(tok, rows, max_length):
    expected = []
    for row in rows:
        row = explicit_prompt(row)
        expected.append(tokenize_pair(tok, row["prompt"], row["chosen"], row["rejected"], max_length=max_length))
    kept = [e for e in expected if e is not None]
    out, caught = _tokenize_rows_recording(tok, rows, "preference", max_length=max_length)
    assert out == kept and all(isinstance(p, TokenizedPair) for p in out)
    dropped = len(rows) - len(kept)
    assert len(caught) == (1 if dropped else 0)
    if dropped:
        assert f"dropped {dropped} of {len(rows)}" in str(caught[0].message)


def test_tokenize_rows_warning_names_the_count_and_points_at_the_caller(tiny_tokenizer):
    rows = [{"prompt": "The quick brown fox", "completion": " jumps"},
            {"text": "Hello"},  # empty prompt: [BOS] alone, so one response token still fits
            {"prompt": "What is 2+2?", "completion": " 4"}]
    with pytest.warns(TruncationWarning, match=r"dropped 2 of 3 examples: at max_length=2") as record:
        out = tokenize_rows(tiny_tokenizer, rows, "sft", max_length=2)
    assert record[0].filename == __file__  # stacklevel: the user's line, not tokenize.py
    assert out == [Tokenized([1], [43])]  # "<|bos|>" + "H"


def test_tokenize_rows_rejects_prompt_only_rows(tiny_tokenizer):
    with pytest.raises(AlignkitError, match="encode_prompt"):
        tokenize_rows(tiny_tokenizer, [{"prompt": "Hi"}], "prompt")


def test_truncate_on_raw_ids():
    bos = [1]
    assert truncate([1, 10, 11, 12], [[20, 21, 3]], max_length=5, prefix=bos) == ([1, 12], [[20, 21, 3]])
    # the prompt is at its floor (BOS + one token) before the response loses anything
    assert truncate([1, 10, 11, 12], [[20, 21, 3]], max_length=4, prefix=bos) == ([1, 12], [[20, 21]])
    assert truncate([1, 10, 11, 12], [[20, 21, 3]], max_length=2, prefix=bos) is None
    assert truncate([1, 10, 11, 12], [[20], [30, 31, 3]], max_length=4, max_prompt_length=3, prefix=bos) == (
        [1, 12], [[20], [30, 31]])
    # without a BOS the floor is one token
    assert truncate([10, 11, 12], [[20, 3]], max_length=3) == ([12], [[20, 3]])
    assert truncate([10, 11, 12], [[20, 3]], max_length=1) is None
    assert truncate([10, 11, 12], [[20, 3]], max_length=None, max_prompt_length=2) == ([11, 12], [[20, 3]])


# ----------------------------------------------------------------------------------------------------
# worked examples: exact ids for the tiny tokenizer (checked by hand once; a change here is a regression)


def test_worked_string_example_tiny(tiny_tokenizer):
    # <|bos|> What Ġis Ġ2 + 2 ?
    assert encode_prompt(tiny_tokenizer, "What is 2+2?") == [1, 299, 346, 458, 14, 21, 34]
    t = tokenize_example(tiny_tokenizer, "What is 2+2?", " 4")
    assert t.prompt_ids == [1, 299, 346, 458, 14, 21, 34]
    assert t.completion_ids == [339, 3]  # Ġ4 <|im_end|>


def test_worked_conversational_example_tiny(tiny_tokenizer):
    t = tokenize_example(tiny_tokenizer, [user("Hi")], [assistant("Hello there.")])
    # <|bos|> <|im_start|> u s er Ċ H i <|im_end|> Ċ <|im_start|> as sist ant Ċ   (one BOS, from the template)
    assert t.prompt_ids == [1, 2, 88, 86, 267, 202, 43, 76, 3, 202, 2, 320, 444, 503, 202]
    # H e l l o Ġthe re . <|im_end|>   (the template's trailing "\n" is not part of the answer)
    assert t.completion_ids == [43, 72, 79, 79, 82, 269, 276, 17, 3]


def test_worked_truncated_pair_tiny(tiny_tokenizer):
    args = (tiny_tokenizer, "The quick brown fox", " jumps over the lazy dog.", " sleeps.")
    full = tokenize_pair(*args)
    assert full == TokenizedPair(
        prompt_ids=[1, 381, 348, 327, 358, 292, 81, 277, 432],
        chosen_ids=[472, 333, 310, 450, 269, 467, 455, 316, 74, 17, 3],
        rejected_ids=[484, 72, 333, 17, 3],
    )
    # the chosen answer (11 tokens) cannot fit in 8 even with the prompt at its floor <|bos|> "ox"
    assert tokenize_pair(*args, max_length=8) == TokenizedPair(
        prompt_ids=[1, 432], chosen_ids=[472, 333, 310, 450, 269, 467], rejected_ids=[484, 72, 333, 17, 3])
    # room for the whole chosen answer once the prompt gives up its left part
    assert tokenize_pair(*args, max_length=17) == TokenizedPair(
        prompt_ids=[1, 358, 292, 81, 277, 432], chosen_ids=full.chosen_ids, rejected_ids=full.rejected_ids)
    assert tokenize_example(tiny_tokenizer, "The quick brown fox", " jumps", max_prompt_length=3) == Tokenized(
        [1, 277, 432], [472, 333, 3])
    assert tokenize_example(tiny_tokenizer, "The quick brown fox", " jumps", max_length=3) == Tokenized(
        [1, 432], [472])
    assert tokenize_example(tiny_tokenizer, "The quick brown fox", " jumps", max_length=2) is None


def test_worked_examples_smollm2(smollm2_tokenizer):
    t = tokenize_example(smollm2_tokenizer, "What is 2+2?", " 4")
    assert t == Tokenized([1780, 314, 216, 34, 27, 34, 47], [216, 36, 2])
    t = tokenize_example(smollm2_tokenizer, [user("Hi")], [assistant("Hello there.")])
    assert t.prompt_ids[:2] == [1, 9690]  # <|im_start|> system: the default system prompt, no extra BOS
    assert t.prompt_ids[-4:] == [1, 520, 9531, 198]  # <|im_start|> assistant \n
    assert t.completion_ids == [19556, 665, 30, 2]  # Hello Ġthere . <|im_end|>


# ----------------------------------------------------------------------------------------------------
# collation

ids = st.lists(st.integers(5, 500), max_size=6)  # real ids never equal the pad id 0 here
examples = st.builds(Tokenized, ids, st.lists(st.integers(5, 500), min_size=1, max_size=6))
PAD = 0


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(examples, min_size=1, max_size=5), side=st.sampled_from(["right", "left"]),
       multiple_of=st.integers(1, 8))
def test_collate_masks_line_up(batch, side, multiple_of):
    out = collate(batch, PAD, side, multiple_of)
    longest = max(len(e.input_ids) for e in batch)
    width = out["input_ids"].shape[1]
    assert width % multiple_of == 0 and longest <= width < longest + multiple_of
    for name in ("input_ids", "attention_mask", "completion_mask"):
        assert out[name].shape == (len(batch), width)
    for i, e in enumerate(batch):
        n, gap = len(e.input_ids), width - len(e.input_ids)
        row = out["input_ids"][i].tolist()
        attention = out["attention_mask"][i].tolist()
        completion = out["completion_mask"][i].tolist()
        real = [1] * n
        completion_real = [0] * len(e.prompt_ids) + [1] * len(e.completion_ids)
        if side == "right":
            assert row == e.input_ids + [PAD] * gap
            assert attention == real + [0] * gap
            assert completion == completion_real + [0] * gap
        else:  # generation: the pad comes first so every prompt ends at the last column
            assert row == [PAD] * gap + e.input_ids
            assert attention == [0] * gap + real
            assert completion == [0] * gap + completion_real
        assert sum(completion) == len(e.completion_ids)


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(ids, min_size=1, max_size=4), data=st.data())
def test_collate_pairs_puts_chosen_first(prompts, data):
    response = st.lists(st.integers(5, 500), min_size=1, max_size=6)
    pairs = [TokenizedPair(p, data.draw(response), data.draw(response)) for p in prompts]
    out = collate_pairs(pairs, PAD)
    b = len(pairs)
    assert out["input_ids"].shape[0] == 2 * b
    for i, p in enumerate(pairs):
        for row, want in ((i, p.chosen), (b + i, p.rejected)):
            n = len(want.input_ids)
            assert out["input_ids"][row, :n].tolist() == want.input_ids
            assert out["completion_mask"][row, :n].tolist() == [0] * len(p.prompt_ids) + [1] * len(want.completion_ids)
            assert out["attention_mask"][row].sum().item() == n


def test_collate_worked_example():
    batch = [Tokenized([1, 7], [8, 3]), Tokenized([1], [9, 9, 9, 3])]
    right = collate(batch, PAD)
    assert right["input_ids"].tolist() == [[1, 7, 8, 3, 0], [1, 9, 9, 9, 3]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert right["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    left = collate(batch, PAD, "left", multiple_of=4)
    assert left["input_ids"].tolist() == [[0, 0, 0, 0, 1, 7, 8, 3], [0, 0, 0, 1, 9, 9, 9, 3]]
    assert left["completion_mask"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="side"):
        pad([[1]], 0, side="middle")


# ----------------------------------------------------------------------------------------------------
# implicit prompts: explicit_prompt and preference_to_unpaired


@settings(max_examples=80, deadline=None)
@given(shared=conversations(), data=st.data())
def test_implicit_conversational_prompt_is_the_shared_messages(shared, data):
    first = data.draw(nonblank)
    other = data.draw(nonblank.filter(lambda s: s != first))
    tail_c = [assistant(first)]
    tail_r = [assistant(other)]
    if data.draw(st.booleans()):  # answers may run on for more turns
        tail_r += [user(data.draw(nonblank)), assistant(data.draw(nonblank))]
    row = {"chosen": shared + tail_c, "rejected": shared + tail_r, "source": "x"}
    before = copy.deepcopy(row)
    out = explicit_prompt(row)
    assert out == {"prompt": shared, "chosen": tail_c, "rejected": tail_r, "source": "x"}
    assert row == before  # the input row is not modified
    assert check_row(row, "preference") == []


def test_implicit_conversational_prompt_keeps_the_final_turn_out():
    # identical answers up to the last turn: the prompt still stops before the final turn
    row = {"chosen": [user("Hi"), assistant("Yo")], "rejected": [user("Hi"), assistant("Yo"), user("?"),
                                                                   assistant("Hey")]}
    assert explicit_prompt(row)["prompt"] == [user("Hi")]
    assert explicit_prompt(row)["chosen"] == [assistant("Yo")]


hh_text = nonblank.filter(lambda s: "Assistant:" not in s)
hh_answer = hh_text.filter(lambda s: not s.startswith(" "))


@settings(max_examples=80, deadline=None)
@given(history=st.lists(st.tuples(hh_text, hh_text), max_size=2), question=hh_text, chosen=hh_answer,
       rejected=hh_answer)
def test_hh_rlhf_string_prompt_ends_after_assistant_and_its_space(history, question, chosen, rejected):
    assume(chosen != rejected)
    transcript = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in history)
    prompt = f"{transcript}\n\nHuman: {question}\n\nAssistant: "
    row = {"chosen": prompt + chosen, "rejected": prompt + rejected, "margin": 1.0}
    out = explicit_prompt(row)
    assert out == {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": 1.0}
    assert check_row(row, "preference") == []


def test_hh_rlhf_worked_example():
    row = {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.",
           "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix it up, buy some."}
    out = explicit_prompt(row)
    assert out["prompt"] == "\n\nHuman: How do I bake bread?\n\nAssistant: "
    assert (out["chosen"], out["rejected"]) == ("Mix flour and water.", "Mix it up, buy some.")
    explicit = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert explicit_prompt(explicit) is explicit


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.one_of(
    st.builds(lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r, "margin": 0.5, "id": 7},
              nonblank, nonblank, nonblank),
    st.builds(lambda p, c, r: {"chosen": p + [assistant(c)], "rejected": p + [assistant(r)], "id": 8},
              conversations(), nonblank, nonblank).filter(lambda row: row["chosen"] != row["rejected"]),
), max_size=4))
def test_preference_to_unpaired(rows):
    out = preference_to_unpaired(rows)
    assert len(out) == 2 * len(rows)
    for row, good, bad in zip(rows, out[0::2], out[1::2]):
        row = explicit_prompt(row)
        assert good == {"id": row["id"], "prompt": row["prompt"], "completion": row["chosen"], "label": True}
        assert bad == {"id": row["id"], "prompt": row["prompt"], "completion": row["rejected"], "label": False}
        assert check_row(good, "unpaired") == [] and check_row(bad, "unpaired") == []


# ----------------------------------------------------------------------------------------------------
# special_prefix caches by id(tokenizer)


class _FakeTokenizer:
    def __init__(self, bos):
        self.bos = bos

    def __call__(self, text, add_special_tokens=True):
        head = [self.bos] if add_special_tokens and self.bos is not None else []
        return SimpleNamespace(input_ids=head + [ord(c) for c in text])


def test_special_prefix_is_not_inherited_through_a_reused_id(monkeypatch):
    import alignkit.data.tokenize as tokenize_module

    # a private cache for this test, so its stale entries cannot reach a tokenizer another test creates
    monkeypatch.setattr(tokenize_module, "_PREFIX_CACHE", weakref.WeakKeyDictionary())
    for _ in range(100):  # CPython hands a freed object's address to the next one of its size, usually at once
        first = _FakeTokenizer(bos=7)
        assert special_prefix(first) == [7]
        first_id = id(first)
        del first
        second = _FakeTokenizer(bos=None)
        if id(second) == first_id:
            break
    else:
        pytest.skip("CPython did not reuse an id")
    assert special_prefix(second) == []  # a stale id-keyed cache would give the dead tokenizer's [7]
