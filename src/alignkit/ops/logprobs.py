"""Log-probabilities of chosen tokens without the full float32 log-softmax.

A causal LM's last layer maps each hidden state (H) to logits over the vocabulary (V). Methods need only
log p(token that was there) at response positions, yet the usual `model(...).logits.log_softmax(-1)`
materialises a B x T x V float32 tensor (and another for its gradient): 1.6 GB for B=8, T=1024 at SmolLM2's
V=49,152. Here instead:

1. the model's decoder gives hidden states; only those at response positions are kept (prompt and pad
   positions never reach the vocabulary projection);
2. they are projected to the vocabulary a chunk of tokens at a time, and each chunk's log-softmax is
   reduced at once to the one log-prob per token that is needed;
3. the backward pass recomputes each chunk's logits instead of keeping them. When the projection is frozen
   (LoRA), the forward keeps softmax @ W per token (H floats) instead, and the backward needs no recompute.

Peak extra memory is about two chunks of logits, independent of T x V. Models whose logits are not a plain
linear map of the hidden state (final soft-capping, logit scaling) fall back to full logits and
`selective_log_softmax`, which still avoids the second B x T x V copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_ELEMENTS = 2**25  # logits per chunk: 128 MB in float32, whatever the vocabulary


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk of float32 logits is about 128 MB."""
    return max(16, DEFAULT_CHUNK_ELEMENTS // max(vocab_size, 1))


def _upcast(t: Tensor) -> Tensor:
    """Half precision to float32 for softmax; float32 and float64 stay as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _log_softmax_at(logits: Tensor, labels: Tensor) -> Tensor:
    """log_softmax(logits)[i, labels[i]] for one chunk, computed in float32 (or float64 if given)."""
    return torch.log_softmax(_upcast(logits), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits).gather(labels) row-chunked; backward recomputes softmax from saved logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk_size: int) -> Tensor:
        out = torch.cat([_log_softmax_at(logits[s:s + chunk_size], labels[s:s + chunk_size])
                         for s in range(0, logits.shape[0], chunk_size)]) if logits.shape[0] else \
            _upcast(logits.new_zeros(0))
        ctx.save_for_backward(logits, labels)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk_size):
            e = s + ctx.chunk_size
            g = _upcast(grad_out[s:e]).unsqueeze(-1)
            d = torch.softmax(_upcast(logits[s:e]), dim=-1).mul_(-g)  # d logp_y / d logit_j = 1[j=y] - p_j
            d.scatter_add_(-1, labels[s:e].unsqueeze(-1), g)
            grad[s:e] = d.to(logits.dtype)
        return grad, None, None


def selective_log_softmax(logits: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """log_softmax(logits, -1) at `labels`, without a full-size log-softmax tensor.

    logits: (..., V) any float dtype; labels: (...) int. Returns (...) float32 (float64 for float64 input).
    Rows are processed `chunk_size` at a time, so extra memory is a few chunks, not another (..., V).
    """
    vocab = logits.shape[-1]
    flat, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1)
    chunk = chunk_size or default_chunk_size(vocab)
    if torch.is_grad_enabled() and logits.requires_grad:
        out = _SelectiveLogSoftmax.apply(flat, flat_labels, chunk)
    else:
        with torch.no_grad():
            out = _SelectiveLogSoftmax.forward(_NoCtx(), flat, flat_labels, chunk)
    return out.reshape(labels.shape)


class _NoCtx:
    """Stands in for autograd's ctx when a Function's forward runs without a graph."""

    def save_for_backward(self, *tensors):
        pass


class _LinearLogProbs(torch.autograd.Function):
    """log_softmax((hidden @ W.T + b) / temperature)[labels], chunked over tokens.

    Modes (how the backward gets what it needs without keeping logits):
      "recompute":   the backward recomputes each chunk's logits (4 vocabulary-sized matmuls in all);
      "expectation": frozen head: the forward keeps E_p[W] per token, the backward is elementwise (2);
      "uniform":     the caller promises one gradient value for every token (a plain sum of log-probs,
                     as in SFT): the forward computes the gradients for a unit gradient and the backward
                     scales them (3). A non-uniform gradient still gets the right answer by recomputing.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, temperature, mode, needs):
        need_h, need_w, need_b = needs
        out = _upcast(hidden.new_empty(hidden.shape[0]))
        saved_h = torch.empty_like(hidden) if mode in ("expectation", "uniform") and need_h else None
        saved_w = _upcast(torch.zeros_like(weight)) if mode == "uniform" and need_w else None
        saved_b = _upcast(torch.zeros_like(bias)) if mode == "uniform" and need_b else None
        for s in range(0, hidden.shape[0], chunk_size):
            e = s + chunk_size
            logp = torch.log_softmax(_project(hidden[s:e], weight, bias, temperature), dim=-1)
            out[s:e] = logp.gather(-1, labels[s:e].unsqueeze(-1)).squeeze(-1)
            if mode == "expectation" and need_h:
                saved_h[s:e] = logp.exp_().to(weight.dtype) @ weight  # E_p[W]
            elif mode == "uniform":
                d = logp.exp_().neg_()  # d logp_y / d logit_j = (1[j=y] - p_j) / t, for a unit gradient
                d.scatter_add_(-1, labels[s:e].unsqueeze(-1), torch.ones_like(out[s:e]).unsqueeze(-1))
                if temperature != 1.0:
                    d.div_(temperature)
                if need_h:
                    saved_h[s:e] = d.to(weight.dtype) @ weight
                if need_w:
                    saved_w.addmm_(d.t(), hidden[s:e].to(d.dtype))
                if need_b:
                    saved_b += d.sum(0)
                del d
            del logp  # free this chunk before the next one is built: peak stays at about two chunks
        ctx.save_for_backward(hidden, weight, bias, labels, saved_h, saved_w, saved_b)
        ctx.chunk_size, ctx.temperature, ctx.mode, ctx.needs = chunk_size, temperature, mode, needs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, saved_h, saved_w, saved_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs
        t = ctx.temperature
        grad_out = _upcast(grad_out)
        none = (None,) * 5
        if ctx.mode == "expectation":
            # d logp_y / d h = (W[y] - E_p[W]) / t
            g = (grad_out / t).unsqueeze(-1).to(hidden.dtype)
            return ((weight[labels] - saved_h) * g if need_h else None), None, None, *none
        if ctx.mode == "uniform" and grad_out.numel() and bool((grad_out == grad_out[0]).all()):
            c = grad_out[0]
            return (None if saved_h is None else saved_h * c.to(saved_h.dtype),
                    None if saved_w is None else (saved_w * c).to(weight.dtype),
                    None if saved_b is None else (saved_b * c).to(bias.dtype), *none)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = _upcast(torch.zeros_like(weight)) if need_w else None
        grad_b = _upcast(torch.zeros_like(bias)) if need_b else None
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = s + ctx.chunk_size
            g = (grad_out[s:e] / t).unsqueeze(-1)
            d = torch.softmax(_project(hidden[s:e], weight, bias, t), dim=-1).mul_(-g)
            d.scatter_add_(-1, labels[s:e].unsqueeze(-1), g)  # d logp_y / d logit_j = (1[j=y] - p_j) / t
            if need_h:
                grad_h[s:e] = d.to(weight.dtype) @ weight
            if need_w:
                grad_w.addmm_(d.t(), hidden[s:e].to(d.dtype))
            if need_b:
                grad_b += d.sum(0)
            del d
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), *none)


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    logits = _upcast(torch.nn.functional.linear(hidden, weight, bias))
    return logits / temperature if temperature != 1.0 else logits


def linear_log_probs(hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                     chunk_size: int | None = None, temperature: float = 1.0,
                     uniform_grad: bool = False) -> Tensor:
    """log_softmax((hidden @ weight.T + bias) / temperature)[labels] for N tokens, chunked.

    hidden: (N, H); weight: (V, H); bias: (V,) or None; labels: (N,). Returns (N,) float32.
    uniform_grad: the result will be summed with one weight for every token (SFT's loss); the backward
    then costs one vocabulary-sized matmul less. Any other use still gets exact gradients.
    """
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    if not (torch.is_grad_enabled() and any(needs)):
        with torch.no_grad():
            return _LinearLogProbs.forward(_NoCtx(), hidden, weight, bias, labels, chunk, temperature,
                                           "recompute", (False, False, False))
    if not needs[1] and not needs[2]:
        mode = "expectation"
    else:
        mode = "uniform" if uniform_grad else "recompute"
    return _LinearLogProbs.apply(hidden, weight, bias, labels, chunk, temperature, mode, needs)


def _chunk_entropy(logits: Tensor) -> Tensor:
    """(N,) entropy in nats of softmax(logits) per row, in float32: logsumexp(z) − Σ p·z."""
    z = _upcast(logits)
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def _linear_chunk_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    return _chunk_entropy(_project(hidden, weight, bias, temperature))


def linear_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float = 1.0,
                   chunk_size: int | None = None) -> Tensor:
    """(N,) entropy of softmax((hidden @ weight.T + b) / temperature) per token, chunked like
    `linear_log_probs`: a chunk of logits at a time, and with a gradient each chunk is recomputed in the
    backward pass (activation checkpointing) instead of kept, so memory stays at about two chunks."""
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    parts = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for s in range(0, hidden.shape[0], chunk):
        if grad:
            parts.append(checkpoint(_linear_chunk_entropy, hidden[s:s + chunk], weight, bias,
                                                           temperature, use_reentrant=False))
        else:
            parts.append(_linear_chunk_entropy(hidden[s:s + chunk], weight, bias, temperature))
    return torch.cat(parts) if parts else _upcast(hidden.new_zeros(0))


def logits_entropy(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """(N,) entropy of softmax(logits) per row of (N, V) logits (temperature already applied), chunked."""
    chunk = chunk_size or default_chunk_size(logits.shape[-1])
    parts = [_chunk_entropy(logits[s:s + chunk]) for s in range(0, logits.shape[0], chunk)]
    return torch.cat(parts) if parts else _upcast(logits.new_zeros(0))


@dataclass
class SequenceLogProbs:
    """Log-probs of the response tokens of a batch.

    token_logps: (B, T) float32, aligned with input_ids (position t holds log p(input_ids[t] | < t)),
                 zero outside the completion mask and at t = 0.
    mask:        (B, T) bool, the positions that were scored.
    """

    token_logps: Tensor
    mask: Tensor
    token_mean_logits: Tensor | None = None
    """(B, T) mean over the vocabulary of the logits at each scored position (no gradient), when asked
    for: TRL's logits/chosen and logits/rejected metrics."""
    hidden: Tensor | None = None
    """(B, T, H) the final hidden states, when asked for (a value head on the policy's trunk reads them)."""
    entropy: Tensor | None = None
    """(B, T) the entropy of the policy's next-token distribution (with the temperature) at each scored
    position, zero elsewhere, when asked for; differentiable when the log-probs are."""

    @property
    def sum(self) -> Tensor:
        """(B,) summed log-prob of each response: log p(response | prompt)."""
        return self.token_logps.sum(-1)

    @property
    def count(self) -> Tensor:
        """(B,) number of scored tokens per row."""
        return self.mask.sum(-1)

    @property
    def mean(self) -> Tensor:
        """(B,) average per-token log-prob (length-normalised, as SimPO and IPO variants use)."""
        return self.sum / self.count.clamp(min=1)


# Architectures whose logits are exactly lm_head(final hidden state): no soft-capping, no logit scaling
# (Granite divides by logits_scaling, Cohere multiplies by logit_scale, Gemma 2/3 soft-cap, MiniCPM
# rescales the hidden state). Anything not listed takes the exact general path.
PLAIN_HEAD_MODELS = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo", "olmo2",
    "gemma", "smollm3", "starcoder2", "stablelm", "gpt_neox", "deepseek_v3",
})
SCALING_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "scale_width")


def _plain_linear_head(model):
    """The output projection when logits are exactly hidden @ W.T (+ b); None when they are not."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in SCALING_ATTRIBUTES):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:  # exact type: wrapped heads (LoRA, modules_to_save) take the general path
        return None
    if not hasattr(model, "get_decoder"):
        return None
    return head


def score_mask(batch: dict) -> Tensor:
    """(B, T) bool: the positions whose token is scored (response tokens, never position 0)."""
    mask = (batch["completion_mask"] if "completion_mask" in batch else batch["attention_mask"]).bool().clone()
    mask[:, 0] = False  # nothing predicts the first token
    if "attention_mask" in batch:
        mask &= batch["attention_mask"].bool()
    return mask


def sequence_logps(model, batch: dict, chunk_size: int | None = None, temperature: float = 1.0,
                   uniform_grad: bool = False, mean_logits: bool = False,
                   return_hidden: bool = False, entropy: bool = False) -> SequenceLogProbs:
    """Per-token and summed log-probs of the response tokens in `batch`.

    batch: input_ids (B, T), attention_mask (B, T), completion_mask (B, T) (1 on response tokens; when
    absent every real token but the first is scored), optional position_ids (packed sequences).
    Only response positions are projected to the vocabulary; see the module docstring for memory.
    uniform_grad: the caller's loss is a plain sum of the token log-probs (SFT); see `linear_log_probs`.
    mean_logits: also fill `token_mean_logits`. With a plain linear head the mean over the vocabulary of
    h·w_v + b_v is h·mean(w) + mean(b): one dot product per token, the logits still never materialised.
    entropy: also fill `entropy` (`linear_entropy`: one more chunked projection, checkpointed).
    """
    input_ids = batch["input_ids"]
    mask = score_mask(batch)
    head = _plain_linear_head(model)
    model_inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    # hidden state at t-1 predicts token t: shift so both index the predicted token
    target_mask = mask[:, 1:]
    labels = input_ids[:, 1:][target_mask]
    if head is not None:
        hidden = model.get_decoder()(input_ids=input_ids, use_cache=False, **model_inputs).last_hidden_state
        selected = hidden[:, :-1][target_mask]
        flat = linear_log_probs(selected, head.weight, head.bias, labels, chunk_size, temperature, uniform_grad)
        if entropy:
            flat_entropy = linear_entropy(selected, head.weight, head.bias, temperature, chunk_size)
        if mean_logits:
            with torch.no_grad():
                flat_mean = selected.detach().float() @ head.weight.float().mean(0)
                if head.bias is not None:
                    flat_mean = flat_mean + head.bias.float().mean()
                flat_mean = flat_mean / temperature
    else:
        outputs = model(input_ids=input_ids, use_cache=False, output_hidden_states=return_hidden, **model_inputs)
        if return_hidden:
            hidden = outputs.hidden_states[-1]
        logits = outputs.logits[:, :-1]
        if temperature != 1.0:
            logits = logits / temperature
        flat = selective_log_softmax(logits[target_mask], labels, chunk_size)
        if entropy:
            flat_entropy = logits_entropy(logits[target_mask], chunk_size)
        if mean_logits:
            with torch.no_grad():
                flat_mean = logits[target_mask].float().mean(-1)
    token_logps = _scatter(mask, target_mask, flat)
    token_mean_logits = _scatter(mask, target_mask, flat_mean) if mean_logits else None
    return SequenceLogProbs(token_logps=token_logps, mask=mask, token_mean_logits=token_mean_logits,
                            hidden=hidden if return_hidden else None,
                            entropy=_scatter(mask, target_mask, flat_entropy) if entropy else None)


def _scatter(mask: Tensor, target_mask: Tensor, flat: Tensor) -> Tensor:
    """(B, T) with the per-scored-token values `flat` at their positions (the predicted token's), 0 elsewhere."""
    out = flat.new_zeros(mask.shape)
    return torch.cat([out[:, :1], out[:, 1:].masked_scatter(target_mask, flat)], dim=1)


def sequence_logps_naive(model, batch: dict, temperature: float = 1.0) -> SequenceLogProbs:
    """The textbook computation, full float32 log-softmax over B x T x V: the reference the tests and
    benchmarks compare `sequence_logps` against. Use `sequence_logps` in real code."""
    mask = score_mask(batch)
    model_inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    logits = _upcast(model(input_ids=batch["input_ids"], use_cache=False, **model_inputs).logits[:, :-1])
    logp = torch.log_softmax(logits / temperature, dim=-1)
    per_token = logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
    return SequenceLogProbs(torch.cat([per_token.new_zeros(per_token.shape[0], 1), per_token], dim=1), mask)
