"""Chunked log-prob ops agree with the textbook full log-softmax, in values and gradients, and use less memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alignkit.data.collate import collate
from alignkit.data.tokenize import tokenize_example
from alignkit.ops.logprobs import (
    _plain_linear_head,
    default_chunk_size,
    linear_log_probs,
    score_mask,
    selective_log_softmax,
    sequence_logps,
    sequence_logps_naive,
)

TINY = "embedded:tiny"


def naive_selective(logits, labels):
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def naive_linear(hidden, weight, bias, labels, temperature=1.0):
    logits = torch.nn.functional.linear(hidden, weight, bias) / temperature
    return naive_selective(logits, labels)


def _tols(dtype):
    # float32: torch's own default closeness (a weight gradient sums many rows, and chunking changes the
    # order of that sum: 1.5e-6 apart on some CPUs); float64 is where exactness is checked, at 1e-12
    return {"rtol": 1.3e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}


# --------------------------------------------------------------------------------------------------
# selective_log_softmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 1000, None])
def test_selective_log_softmax_matches_naive(dtype, chunk):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 25, 97, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 97, (2, 25), generator=g)
    weights = torch.randn(2, 25, generator=g).to(dtype)

    ref_in = logits.clone().requires_grad_()
    ref = naive_selective(ref_in, labels)
    (ref * weights).sum().backward()

    x = logits.clone().requires_grad_()
    out = selective_log_softmax(x, labels, chunk)
    assert out.shape == labels.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref.detach(), **_tols(dtype))
    (out * weights).sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, ref_in.grad, **_tols(dtype))

    with torch.no_grad():  # the graph-free path gives the same values
        torch.testing.assert_close(selective_log_softmax(logits, labels, chunk), ref.detach(), **_tols(dtype))
    torch.testing.assert_close(selective_log_softmax(logits, labels, chunk), ref.detach(), **_tols(dtype))


@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_selective_log_softmax_gradcheck(chunk):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (6,), generator=g)
    assert torch.autograd.gradcheck(lambda t: selective_log_softmax(t, labels, chunk), (x,))
    x3 = torch.randn(2, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels3 = torch.randint(0, 7, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda t: selective_log_softmax(t, labels3, chunk), (x3,))


def test_selective_log_softmax_bf16_returns_float32():
    g = torch.Generator().manual_seed(2)
    logits32 = torch.randn(40, 300, generator=g) * 3
    labels = torch.randint(0, 300, (40,), generator=g)
    logits16 = logits32.to(torch.bfloat16)
    x = logits16.clone().requires_grad_()
    out = selective_log_softmax(x, labels, 16)
    assert out.dtype == torch.float32
    # the only error is bf16 rounding of the logits (~2^-8 relative): compare to the exact answer on the
    # rounded logits tightly, and to the float32 logits within bf16 tolerance
    torch.testing.assert_close(out, naive_selective(logits16.float(), labels).detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out, naive_selective(logits32, labels), rtol=2e-2, atol=5e-2)
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    ref_in = logits32.clone().requires_grad_()
    naive_selective(ref_in, labels).sum().backward()
    torch.testing.assert_close(x.grad.float(), ref_in.grad, rtol=2e-2, atol=1e-2)


def test_selective_log_softmax_empty():
    out = selective_log_softmax(torch.randn(0, 10, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float32


def test_default_chunk_size():
    assert default_chunk_size(49152) * 49152 <= 2**25
    assert default_chunk_size(10**9) == 16


# --------------------------------------------------------------------------------------------------
# linear_log_probs


def _linear_inputs(dtype, n=30, h=8, v=53, bias=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = torch.randn(v, h, generator=g).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, labels


CASES = {
    # name: (weight trainable, bias present, bias trainable, temperature)
    "trainable": (True, False, False, 1.0),
    "frozen": (False, False, False, 1.0),  # the LoRA case: keeps E_p[W], no recompute in backward
    "bias": (True, True, True, 1.0),
    "frozen_bias": (False, True, False, 1.0),
    "frozen_weight_trainable_bias": (False, True, True, 1.0),
    "temperature": (True, True, True, 0.7),
    "frozen_temperature": (False, False, False, 1.9),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 4, 7, 1000, None])
def test_linear_log_probs_matches_naive(case, dtype, chunk):
    w_grad, has_bias, b_grad, temp = CASES[case]
    hidden, weight, bias, labels = _linear_inputs(dtype, bias=has_bias)
    weights = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(9)).to(dtype)

    def leaves():
        return (hidden.clone().requires_grad_(), weight.clone().requires_grad_(w_grad),
                None if bias is None else bias.clone().requires_grad_(b_grad))

    rh, rw, rb = leaves()
    ref = naive_linear(rh, rw, rb, labels, temp)
    (ref * weights).sum().backward()

    h, w, b = leaves()
    out = linear_log_probs(h, w, b, labels, chunk, temp)
    assert out.shape == labels.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref.detach(), **_tols(dtype))
    (out * weights).sum().backward()
    torch.testing.assert_close(h.grad, rh.grad, **_tols(dtype))
    if w_grad:
        torch.testing.assert_close(w.grad, rw.grad, **_tols(dtype))
    else:
        assert w.grad is None
    if b is not None and b_grad:
        torch.testing.assert_close(b.grad, rb.grad, **_tols(dtype))

    with torch.no_grad():
        torch.testing.assert_close(linear_log_probs(hidden, weight, bias, labels, chunk, temp), ref.detach(),
                                   **_tols(dtype))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_linear_log_probs_gradcheck(case, chunk):
    w_grad, has_bias, b_grad, temp = CASES[case]
    hidden, weight, bias, labels = _linear_inputs(torch.float64, n=7, h=4, v=9, bias=has_bias, seed=4)
    inputs = [hidden.requires_grad_()]
    if w_grad:
        inputs.append(weight.requires_grad_())
    if bias is not None and b_grad:
        inputs.append(bias.requires_grad_())

    def f(*args):
        it = iter(args)
        h = next(it)
        w = next(it) if w_grad else weight
        b = next(it) if (bias is not None and b_grad) else bias
        return linear_log_probs(h, w, b, labels, chunk, temp)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_linear_log_probs_only_weight_trainable():
    """Hidden states that need no gradient (a frozen decoder) still give the head its gradient."""
    hidden, weight, bias, labels = _linear_inputs(torch.float64, n=6, h=4, v=9, bias=True, seed=5)
    weight.requires_grad_()
    bias.requires_grad_()
    assert torch.autograd.gradcheck(lambda w, b: linear_log_probs(hidden, w, b, labels, 4), (weight, bias))


def test_linear_log_probs_bf16():
    hidden, weight, _, labels = _linear_inputs(torch.float32, n=20, h=16, v=200, seed=6)
    h16 = hidden.to(torch.bfloat16).requires_grad_()
    w16 = weight.to(torch.bfloat16).requires_grad_()
    out = linear_log_probs(h16, w16, None, labels, 8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_linear(hidden, weight, None, labels), rtol=3e-2, atol=3e-1)
    out.sum().backward()
    assert h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16


def test_linear_log_probs_empty():
    hidden, weight, _, _ = _linear_inputs(torch.float32)
    h = hidden[:0].clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = linear_log_probs(h, w, None, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert w.grad is not None and not w.grad.any()


# --------------------------------------------------------------------------------------------------
# sequence_logps on real (tiny) models

EXAMPLES = [
    ("Hi", "Hello! How can I help you today?"),
    ("What is the capital of France? Answer in one word please.", "Paris."),
    ("Count to five.", "one two three four five"),
    ("Tell me a joke about cats and dogs, a long one with many words in it", "No."),
]


def make_batch(tokenizer, examples=EXAMPLES, side="right"):
    items = [tokenize_example(tokenizer, p, c) for p, c in examples]
    return collate(items, tokenizer.pad_token_id, side), items


def _check_batch_is_varied(batch, items):
    assert len({len(i.prompt_ids) for i in items}) == len(items), "prompts of different lengths"
    assert not batch["attention_mask"].bool().all(), "some right padding"


def _assert_same(fast, naive, atol=1e-5):
    assert torch.equal(fast.mask, naive.mask)
    torch.testing.assert_close(fast.token_logps, naive.token_logps, rtol=1e-5, atol=atol)
    torch.testing.assert_close(fast.sum, naive.sum, rtol=1e-5, atol=atol)


def _param_grads(model, fn, batch, weights):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch)
    (out.token_logps * weights).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_grads_close(fast, naive, rel=1e-5):
    assert fast.keys() == naive.keys() and fast
    for name in naive:
        a, b = fast[name], naive[name]
        scale = b.norm().item()
        err = (a - b).norm().item()
        assert err <= rel * scale + 1e-9, f"{name}: |diff| {err:.3g} vs |grad| {scale:.3g}"


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_logps_matches_naive(tiny_model, tiny_tokenizer, side):
    batch, items = make_batch(tiny_tokenizer, side=side)
    _check_batch_is_varied(batch, items)
    assert _plain_linear_head(tiny_model) is tiny_model.lm_head  # the chunked path is the one tested
    with torch.no_grad():
        naive = sequence_logps_naive(tiny_model, batch)
        for chunk in (1, 5, None):
            _assert_same(sequence_logps(tiny_model, batch, chunk_size=chunk), naive)
    # under autograd too (values from the graph-building path)
    _assert_same(sequence_logps(tiny_model, batch, chunk_size=3), naive)


@pytest.mark.parametrize("chunk", [4, None])
def test_sequence_logps_gradients_match_naive(tiny_model, tiny_tokenizer, chunk):
    batch, _ = make_batch(tiny_tokenizer)
    weights = torch.randn(batch["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    fast = _param_grads(tiny_model, lambda m, b: sequence_logps(m, b, chunk_size=chunk), batch, weights)
    naive = _param_grads(tiny_model, sequence_logps_naive, batch, weights)
    assert "lm_head.weight" in fast and fast["lm_head.weight"].abs().sum() > 0
    _assert_grads_close(fast, naive)
    # and plain summed log-probs, as a loss would use them
    sum_fast = _param_grads(tiny_model, sequence_logps, batch, torch.ones_like(weights))
    sum_naive = _param_grads(tiny_model, sequence_logps_naive, batch, torch.ones_like(weights))
    _assert_grads_close(sum_fast, sum_naive)


def test_sequence_logps_temperature(tiny_model, tiny_tokenizer):
    batch, _ = make_batch(tiny_tokenizer)
    weights = torch.randn(batch["input_ids"].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_same(sequence_logps(tiny_model, batch, chunk_size=3, temperature=0.6),
                     sequence_logps_naive(tiny_model, batch, temperature=0.6))
    fast = _param_grads(tiny_model, lambda m, b: sequence_logps(m, b, temperature=0.6), batch, weights)
    naive = _param_grads(tiny_model, lambda m, b: sequence_logps_naive(m, b, temperature=0.6), batch, weights)
    _assert_grads_close(fast, naive)


def test_sequence_logps_scores_only_completion_tokens(tiny_model, tiny_tokenizer):
    batch, items = make_batch(tiny_tokenizer)
    with torch.no_grad():
        out = sequence_logps(tiny_model, batch)
    completion = batch["completion_mask"].bool()
    # scored positions are exactly the response tokens (the prompt is never empty, so position 0 is prompt)
    assert torch.equal(out.mask, completion)
    assert out.count.tolist() == [len(i.completion_ids) for i in items]
    assert not out.mask[:, 0].any()
    assert torch.all(out.token_logps[~out.mask] == 0)
    assert torch.all(out.token_logps[out.mask] < 0)
    assert torch.allclose(out.mean, out.sum / out.count)

    # each row scores the same alone as in the padded batch: padding changes nothing
    for row, (prompt, completion_text) in enumerate(EXAMPLES):
        alone, _ = make_batch(tiny_tokenizer, [(prompt, completion_text)])
        with torch.no_grad():
            single = sequence_logps(tiny_model, alone)
        torch.testing.assert_close(single.sum[0], out.sum[row], rtol=1e-5, atol=1e-5)

    # pad tokens are never looked at: different pad ids give identical results
    scrambled = dict(batch)
    ids = batch["input_ids"].clone()
    pads = ~batch["attention_mask"].bool()
    ids[pads] = torch.randint(4, 500, (int(pads.sum()),), generator=torch.Generator().manual_seed(2))
    scrambled["input_ids"] = ids
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(tiny_model, scrambled).token_logps, out.token_logps)

    # the response is conditioned on the prompt: changing a prompt token changes the response's log-prob,
    # yet the positions scored stay the same
    changed = dict(batch)
    ids = batch["input_ids"].clone()
    ids[:, 1] = (ids[:, 1] + 1) % 512
    changed["input_ids"] = ids
    with torch.no_grad():
        other = sequence_logps(tiny_model, changed)
    assert torch.equal(other.mask, out.mask)
    assert not torch.allclose(other.sum, out.sum)

    # a scored position's value is the log-prob of the token there, given the tokens before it
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    b, t = out.mask.nonzero()[0].tolist()
    expected = torch.log_softmax(logits[b, t - 1].double(), -1)[batch["input_ids"][b, t]]
    assert abs(out.token_logps[b, t].item() - expected.item()) < 1e-5


def test_sequence_logps_without_completion_mask(tiny_model, tiny_tokenizer):
    batch, items = make_batch(tiny_tokenizer)
    del batch["completion_mask"]
    with torch.no_grad():
        out = sequence_logps(tiny_model, batch)
        _assert_same(out, sequence_logps_naive(tiny_model, batch))
    # every real token but the first
    assert out.count.tolist() == [len(i.input_ids) - 1 for i in items]


def test_sequence_logps_nothing_scored(tiny_model, tiny_tokenizer):
    batch, _ = make_batch(tiny_tokenizer)
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    out = sequence_logps(tiny_model, batch)
    assert torch.all(out.sum == 0) and torch.all(out.count == 0) and torch.all(out.mean == 0)


def test_score_mask():
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
             "completion_mask": torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1]])}
    assert score_mask(batch).tolist() == [[False, False, True, True], [False, True, False, False]]
    # without attention_mask (unpadded rows) the completion mask alone decides
    del batch["attention_mask"]
    assert score_mask(batch).tolist() == [[False, False, True, True], [False, True, True, True]]


@pytest.mark.parametrize("softcapped", [False, True])
def test_sequence_logps_mean_logits(tiny_model, tiny_tokenizer, softcapped):
    """token_mean_logits is the vocabulary mean of the full logits at each scored position, on the chunked
    path (h·mean(w), logits never built) and on the full-logits fallback alike."""
    if softcapped:
        tiny_model.config.final_logit_softcapping = 30.0
    batch, _ = make_batch(tiny_tokenizer)
    with torch.no_grad():
        out = sequence_logps(tiny_model, batch, mean_logits=True, temperature=0.7)
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / 0.7
    expected = torch.zeros_like(out.token_logps)
    expected[:, 1:] = logits[:, :-1].mean(-1) * out.mask[:, 1:]
    torch.testing.assert_close(out.token_mean_logits, expected, atol=1e-5, rtol=1e-5)
    assert sequence_logps(tiny_model, batch).token_mean_logits is None


def test_sequence_logps_softcapped_head_falls_back(tiny_model, tiny_tokenizer):
    """A config with final soft-capping is not a plain linear head: the full-logits fallback runs and agrees."""
    tiny_model.config.final_logit_softcapping = 30.0
    assert _plain_linear_head(tiny_model) is None
    batch, _ = make_batch(tiny_tokenizer)
    with torch.no_grad():
        _assert_same(sequence_logps(tiny_model, batch, chunk_size=3), sequence_logps_naive(tiny_model, batch))
    weights = torch.randn(batch["input_ids"].shape, generator=torch.Generator().manual_seed(3))
    fast = _param_grads(tiny_model, lambda m, b: sequence_logps(m, b, chunk_size=3), batch, weights)
    naive = _param_grads(tiny_model, sequence_logps_naive, batch, weights)
    _assert_grads_close(fast, naive)


def test_sequence_logps_scaled_logits_model_matches_naive():
    """Models that rescale logits after the head (Granite divides by config.logits_scaling) must not take
    the plain-linear path, or must apply the scale there."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=4, logits_scaling=4.0)
    model = GraniteForCausalLM(config).eval()
    ids = torch.randint(1, 128, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        _assert_same(sequence_logps(model, batch), sequence_logps_naive(model, batch))


def _lora_policy(target_modules):
    from alignkit.models.load import load_policy

    # dropout 0 so the two computations see the same network; B starts at zero, so randomise it to give
    # the adapter an effect (and lora_A a gradient)
    model = load_policy(TINY, device="cpu", lora={"r": 4, "target_modules": target_modules, "dropout": 0.0})
    model.eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("target", ["all-linear", "with-head"])
def test_sequence_logps_lora(tiny_tokenizer, target):
    """LoRA on the decoder: the head stays a frozen nn.Linear (the expectation path). LoRA on the head
    itself wraps it: the fallback path. Both agree with the naive computation, values and gradients."""
    targets = "all-linear" if target == "all-linear" else ["q_proj", "v_proj", "lm_head"]
    model = _lora_policy(targets)
    head = _plain_linear_head(model)
    if target == "all-linear":
        assert head is not None and not head.weight.requires_grad
    else:
        assert head is None
    batch, _ = make_batch(tiny_tokenizer)
    with torch.no_grad():
        _assert_same(sequence_logps(model, batch, chunk_size=5), sequence_logps_naive(model, batch))
    weights = torch.randn(batch["input_ids"].shape, generator=torch.Generator().manual_seed(5))
    fast = _param_grads(model, lambda m, b: sequence_logps(m, b, chunk_size=5), batch, weights)
    naive = _param_grads(model, sequence_logps_naive, batch, weights)
    assert all("lora_" in n for n in fast)
    assert any("lora_A" in n and g.abs().sum() > 0 for n, g in fast.items())
    _assert_grads_close(fast, naive)


# --------------------------------------------------------------------------------------------------
# memory

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(2)
    mode = sys.argv[1]
    N, H, V = 2048, 64, 32768
    g = torch.Generator().manual_seed(0)
    hidden = torch.empty(N, H).normal_(generator=g)
    weight = torch.empty(V, H).normal_(std=0.05, generator=g).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=g)
    from alignkit.ops.logprobs import linear_log_probs

    def run(h, w, y):
        h = h.clone().requires_grad_()
        if mode == "naive":
            out = torch.log_softmax(h @ w.T, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        else:
            out = linear_log_probs(h, w, None, y, chunk_size=256)
        out.sum().backward()
        return float(out.sum())

    run(hidden[:8], weight, labels[:8])  # load kernels at a small size
    weight.grad = torch.zeros_like(weight)

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))  # KiB

    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): import-time peaks do not count
        f.write("5")
    base = status("VmRSS")
    run(hidden, weight, labels)
    print(json.dumps({"extra_kib": status("VmHWM") - base}))
""")


def _peak_extra_kib(mode):
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, mode], capture_output=True, text=True,
                          timeout=300,
                          # a fixed mmap threshold: glibc otherwise raises it after the first large free and
                          # later chunks come from a fragmenting heap, so RSS would measure the allocator
                          env=dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="131072"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["extra_kib"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status and clear_refs (Linux)")
def test_chunked_log_probs_peak_memory_below_naive():
    """Forward+backward at N=2048, V=32768: naive holds several N x V float32 tensors (256 MiB each); the
    chunked version holds a couple of 256 x V chunks (32 MiB each)."""
    naive = _peak_extra_kib("naive")
    chunked = _peak_extra_kib("chunked")
    full = 2048 * 32768 * 4 // 1024  # one N x V float32 tensor, in KiB
    assert naive >= full, f"naive peak {naive} KiB should hold at least one full logits tensor ({full} KiB)"
    # measured ~76 MiB against ~770 MiB. The peak is reset after imports (VmHWM via clear_refs): with
    # ru_maxrss an import-time spike late in a full suite once read as ~390 MiB for the chunked op
    assert chunked < 0.3 * naive, f"chunked peak extra {chunked} KiB vs naive {naive} KiB"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_uniform_grad_mode_is_exact_for_uniform_and_other_gradients(temperature, with_bias):
    """uniform_grad precomputes the gradients for a unit upstream gradient (SFT's plain sum). A uniform
    gradient is just scaled; any other gradient must still come out exact (recompute fallback)."""
    torch.manual_seed(0)
    n, h, v = 19, 8, 37
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,))
    params = [hidden, weight] + ([bias] if with_bias else [])
    ref = torch.log_softmax((hidden @ weight.T + (bias if with_bias else 0)) / temperature, -1)
    ref = ref.gather(-1, labels[:, None]).squeeze(-1)
    for upstream in (torch.full((n,), -0.25, dtype=torch.float64), torch.randn(n, dtype=torch.float64)):
        out = linear_log_probs(hidden, weight, bias, labels, chunk_size=6, temperature=temperature,
                               uniform_grad=True)
        assert torch.allclose(out, ref, atol=1e-12)
        got = torch.autograd.grad((out * upstream).sum(), params)
        want = torch.autograd.grad((ref * upstream).sum(), params, retain_graph=True)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-10)
