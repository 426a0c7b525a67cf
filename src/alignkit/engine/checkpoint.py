"""Checkpoints that are either complete or ignored, and resume that continues bit for bit.

Layout under a run directory:

    checkpoints/step-000100/   model (save_pretrained, safetensors; only the adapter with LoRA),
                               trainer_state.pt (optimizer, scheduler, RNG states, data position, counters)
                               COMPLETE (written last)
    checkpoints/latest         "step-000100", replaced atomically after the directory is in place

A checkpoint is written into `checkpoints/.tmp-step-NNNNNN-PID/` and renamed when complete; `latest` is
updated after that. A process killed mid-save leaves only a `.tmp-*` directory, which `find_latest`
never picks and `clean_partial` removes.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from alignkit.files import fsync_dir, write_atomic, write_text_atomic

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step can touch."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], rank: int = 0) -> None:
    """Restore the RNG states; `state` may be a list with one entry per rank (multi-process checkpoints).
    A rank the checkpoint has no entry for (more processes than wrote it) takes rank 0's."""
    import numpy as np

    if isinstance(state, list):
        state = state[rank] if rank < len(state) else state[0]

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torch_save_atomic(path: Path, obj: Any) -> None:
    """torch.save to a temporary file renamed into place: a crash never leaves a half-written file."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(run_dir: str | Path, step: int, model, state: dict[str, Any], keep_last: int | None = None,
                    model_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, then prune to the newest `keep_last`.

    `state` holds everything but the model (optimizer and scheduler state dicts, counters, data position);
    this process's RNG state is added here unless `state` brings its own. `model_state` is the full state
    dict gathered from sharded processes (FSDP, ZeRO-3); without it the model's own weights are saved.
    Only one process (rank 0) may call it.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp, model_state)
    torch.save({"rng": rng_state(), **state, "step": step}, tmp / STATE_FILE)
    write_text_atomic(tmp / MARKER, f"{step}\n")
    fsync_dir(tmp)
    if final.exists():  # a resumed run saving the same step again
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    write_text_atomic(root / "latest", final.name + "\n")
    if keep_last:
        complete = sorted(p for p in root.glob("step-*") if (p / MARKER).exists())
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_model(model, path: Path, model_state: dict | None = None) -> None:
    """save_pretrained, or with `model_state` (full weights gathered from shards) the same files written from
    it: transformers' save_pretrained reads the live, sharded parameters, which only rank 0's copy holds whole."""
    model = unwrap(model)
    if model_state is None:
        model.save_pretrained(path, safe_serialization=True, max_shard_size="1000GB")
    elif hasattr(model, "merge_and_unload"):  # peft picks the adapter's weights out of the given state
        model.save_pretrained(path, state_dict=model_state)
    else:
        from safetensors.torch import save_file

        model.config.save_pretrained(path)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(path / "model.safetensors"),
                  metadata={"format": "pt"})


def clean_partial(run_dir: str | Path) -> list[Path]:
    """Remove checkpoints a killed process left half-written; returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".tmp-") or (path.name.startswith("step-") and not (path / MARKER).exists()):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names if complete, else the highest complete step."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if (named / MARKER).exists():
            return named
    complete = sorted(p for p in root.glob("step-*") if (p / MARKER).exists())
    return complete[-1] if complete else None


def unwrap(model):
    """The model without accelerate/DDP wrappers (peft wrappers stay: they save adapters)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def load_model_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model` in place (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    model = unwrap(model)
    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    weights = load_file(checkpoint / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not match the model (missing {really_missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
