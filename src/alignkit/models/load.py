"""Load policies, tokenizers and reward models by name.

A name is `embedded:smollm2-135m-instruct`, `embedded:tiny[@SEED]`, a local directory written by
`save_pretrained`, the run directory of an alignkit command (its final model, `model/`, is loaded), or a hub
id (which needs network access; tests run with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.models import embedded
from alignkit.models.lora import PeftSettings, apply_lora

RUN_FILE = "run.json"
"""What every alignkit command writes into its run directory (`engine.outputs.STATUS_FILE`)."""
FINAL_MODEL = "model"
"""The run directory's subdirectory holding the final model (`engine.run.Run.train`)."""
MODEL_FILES = ("config.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def resolve_model_path(name: str | Path, *, what: str = "model", markers: tuple[str, ...] = MODEL_FILES) -> str:
    """The one place a model name given on the command line or in a config becomes the directory to load
    (policy, reference, reward or value model, tokenizer; the guard with `what="guard"` and its own
    `markers`, the files that make a directory one). A directory holding one of `markers` is itself; an
    alignkit run directory (one with run.json) is its final model, `model/`. Any other directory, or a run
    with no final model (still running, failed, or a command that writes none), is one AlignkitError line.
    Embedded names, hub ids and paths that are not directories come back unchanged (the loader says what is
    wrong with those)."""
    name = str(name)
    path = Path(name).expanduser()
    if embedded.is_embedded(name) or not path.is_dir() or any((path / m).is_file() for m in markers):
        return name
    final = path / FINAL_MODEL
    if not (path / RUN_FILE).is_file():
        raise AlignkitError(
            f"{name}: {what}: not a {what} directory (no {markers[0]}) nor an alignkit run directory (no "
            f"{RUN_FILE}); give the {what}'s directory, an alignkit run directory or its {FINAL_MODEL}/ subdirectory")
    if any((final / m).is_file() for m in markers):
        return str(final)
    try:
        record = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    record = record if isinstance(record, dict) else {}
    status, method = record.get("status") or "unknown", record.get("method") or "alignkit"
    if status == "complete":
        raise AlignkitError(f"{name}: {what}: the {method} run in this directory is complete but wrote no {what} "
                            f"(no {FINAL_MODEL}/ subdirectory with {markers[0]})")
    error = f"; it stopped with: {record['error']}" if record.get("error") else ""
    raise AlignkitError(f"{name}: {what}: the {method} run in this directory is {status!r} and has no final {what} "
                        f"yet (no {FINAL_MODEL}/ subdirectory){error}")


def resolve_path(name: str | Path) -> str:
    """Where transformers should load `name` from: the cache dir for embedded names, the final model of a run
    directory (`resolve_model_path`), else `name` itself."""
    name = str(name)
    if embedded.is_embedded(name):
        return str(embedded.ensure(name))
    return resolve_model_path(name)


def resolve_device(device: str | None = "auto"):
    """`auto` picks cuda, then mps, then cpu."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AlignkitError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: Any = "auto", device=None):
    """`auto` is bfloat16 on GPUs that support it, float32 elsewhere (CPU training in half precision is slow)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        device = resolve_device("auto") if device is None else torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise AlignkitError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPES[dtype])


def _quiet_transformers() -> None:
    """No per-tensor progress bars from transformers: loading a small model is not long work."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _load(loader, name: str, what: str, markers: tuple[str, ...] = MODEL_FILES, **kwargs):
    _quiet_transformers()
    if embedded.is_embedded(name):
        path = str(embedded.ensure(name))
    else:
        path = resolve_model_path(name, markers=markers)
        if name.startswith((".", "/", "~")) or Path(path).exists():
            if not Path(path).expanduser().is_dir():
                raise AlignkitError(f"{name}: {what}: no such directory")
            path = str(Path(path).expanduser())
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as e:  # transformers raises ValueError for a directory it cannot use
        hint = first_line(e)
        raise AlignkitError(
            f"{name}: {what}: cannot load ({hint}). Use embedded:smollm2-135m-instruct, embedded:tiny, "
            "a directory written by save_pretrained, an alignkit run directory, or a hub id with network access"
        ) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(name: str | Path, padding_side: str = "right"):
    """The tokenizer of a model, with a pad token set (its EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, str(name), "tokenizer", MODEL_FILES + TOKENIZER_FILES)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise AlignkitError(f"{name}: tokenizer: has neither a pad nor an EOS token; set one before training")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _place(model, device):
    import torch

    device = resolve_device(device)
    if device.type != "cpu":
        model = model.to(device)
    elif next(model.parameters()).device != torch.device("cpu"):
        model = model.to(device)
    return model


def load_policy(
    name: str | Path,
    *,
    dtype: Any = "auto",
    device: str | None = "auto",
    lora: PeftSettings | dict | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
):
    """A causal LM ready to train or generate, optionally wrapped with a LoRA adapter."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    kwargs = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = _load(AutoModelForCausalLM.from_pretrained, str(name), "model", **kwargs)
    model = _place(model, device)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, task_type="CAUSAL_LM")
    return model


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant, so LoRA and frozen inputs work)."""
    # transformers 5.24 renamed it; the old name still works there but warns and goes in v6
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def load_reward_model(
    name: str | Path,
    *,
    dtype: Any = "auto",
    device: str | None = "auto",
    lora: PeftSettings | dict | None = None,
    gradient_checkpointing: bool = False,
):
    """A sequence classifier with one output: the scalar reward (see `ops.rewards.sequence_rewards`, which
    reads it at each sequence's last real token). A causal-LM checkpoint gets a new, randomly initialised head."""
    from transformers import AutoModelForSequenceClassification

    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report lists the new head and the unused LM head: expected here
    try:
        model = _load(AutoModelForSequenceClassification.from_pretrained, str(name), "reward model",
                      num_labels=1, dtype=torch_dtype)
    finally:
        logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        # the classifier finds each sequence's last token through the pad id
        tokenizer = load_tokenizer(name)
        model.config.pad_token_id = tokenizer.pad_token_id
    model = _place(model, device)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, task_type="SEQ_CLS")
    return model
