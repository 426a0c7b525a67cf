"""The guard's default features: the embedded chat model's own hidden states (docs/guard.md, "Features").

An instruction-tuned model represents whether a request is harmful in its residual stream at the end of the
chat template, where it is about to answer; a linear direction there mediates refusal (Arditi et al. 2024).
SmolLM2-135M-Instruct seldom refuses, but the representation is there: on the built-in held-out split a head
on these states separates harmful requests from look-alikes far better than one on MiniLM sentence
embeddings (docs/guard.md has the measurements, layer by layer).

`PolicyStateEncoder.encode(texts)` puts each text in the model's chat template as the user turn (with the
generation prompt after it), runs the model frozen, and takes the hidden state of the last token at each of
`LAYERS`, each L2-normalised, concatenated: 6 x 576 = 3,456 features. Batches are left-padded with position
ids that skip the padding, so a text's features do not depend on what it is batched with. Features are
cached like MiniLM's embeddings (safety/encoder.py, `EmbeddingCache`), but for at most `CACHE_SIZE` (4,000)
texts: each takes 3,456 floats, so the cache holds 55 MB when full.

Long texts: a text of more than `WINDOW` tokens is read in windows of `WINDOW` tokens, `STRIDE` apart, the
last ending at the text's end (`encode_windows`), each in its own chat template; the guard scores every window
and keeps the most unsafe, as it does with MiniLM's windows.
"""

from __future__ import annotations

from alignkit.models.load import load_policy, load_tokenizer
from alignkit.safety.encoder import (
    MINILM,
    EmbeddingCache,
    encode_cached,
    encode_windows,
    get_encoder,
)

POLICY = "smollm2"
ENCODERS = (POLICY, MINILM)
MODEL = "embedded:smollm2-135m-instruct"
LAYERS = (8, 12, 16, 20, 24, 30)
WINDOW = 512  # text tokens per window
STRIDE = 384
CACHE_SIZE = 4_000  # texts whose features are kept: 4,000 x 3,456 floats = 55 MB
MARK = "\x00"  # stands for the text when the chat template is split into what comes before and after it


class PolicyStateEncoder:
    """`encode(texts) -> FloatTensor [n, dim]`: the chat model's last-token hidden states (module docstring)."""

    def __init__(self, model: str = MODEL, batch_size: int = 16, cache_size: int = CACHE_SIZE):
        self.name, self.batch_size = POLICY, batch_size
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_policy(model, dtype="float32", device="cpu").eval().requires_grad_(False)
        self.dim = len(LAYERS) * self.model.config.hidden_size
        chat = self.tokenizer.apply_chat_template([{"role": "user", "content": MARK}], tokenize=False,
                                                  add_generation_prompt=True)
        before, after = chat.split(MARK)
        self._before = self.tokenizer(before, add_special_tokens=False)["input_ids"]
        self._after = self.tokenizer(after, add_special_tokens=False)["input_ids"]
        self._cache = EmbeddingCache(cache_size)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    def encode(self, texts: list[str]):
        """One feature vector per text, of its first `WINDOW` tokens."""
        return encode_cached(self, texts, lambda todo: [ids[:WINDOW] for ids in self.token_ids(todo)], self._states)

    def encode_windows(self, texts: list[str]):
        """(features [windows, dim], windows per text): every window of every text, in text order."""
        return encode_windows(self, texts, self.token_ids(texts), WINDOW, STRIDE, self._states)

    def batch(self, texts_ids: list[list[int]]):
        """(input_ids, attention_mask, position_ids) of texts' ids each in the chat template, left-padded, with
        position ids that skip the padding."""
        import torch

        rows = [self._before + ids + self._after for ids in texts_ids]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return input_ids, mask, (mask.cumsum(1) - 1).clamp(min=0)

    def _states(self, texts_ids: list[list[int]]):
        import torch

        input_ids, mask, positions = self.batch(texts_ids)
        with torch.no_grad():
            states = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                output_hidden_states=True).hidden_states
        last = [torch.nn.functional.normalize(states[layer][:, -1].float(), dim=-1) for layer in LAYERS]
        return torch.cat(last, dim=1)


_POLICY_ENCODERS: dict[str, PolicyStateEncoder] = {}


def guard_encoder(name: str):
    """The guard's encoder by name: `smollm2` (the chat model's states) or `minilm` (sentence embeddings); one
    shared instance per name per process."""
    if name == POLICY:
        if name not in _POLICY_ENCODERS:
            _POLICY_ENCODERS[name] = PolicyStateEncoder()
        return _POLICY_ENCODERS[name]
    return get_encoder(name if name else MINILM)
