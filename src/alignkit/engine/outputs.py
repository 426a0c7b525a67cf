"""What a finished stage leaves besides checkpoints: run.json (status), the final model, the report."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

from alignkit.engine.checkpoint import save_model, unwrap
from alignkit.engine.distributed import is_main_process
from alignkit.engine.report import write_report
from alignkit.files import write_text_atomic

STATUS_FILE = "run.json"


def write_status(out: str | Path, status: str, method: str, **extra) -> None:
    """run.json: status is running, complete, stopped (non-finite losses) or failed (an error). Rank 0 only."""
    if not is_main_process():
        return
    record = {"status": status, "method": method, "output_dir": str(out), **extra}
    write_text_atomic(Path(out) / STATUS_FILE, json.dumps(record, indent=2, default=str) + "\n")


def read_status(out: str | Path) -> dict:
    path = Path(out) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_complete(out: str | Path) -> bool:
    return read_status(out).get("status") == "complete"


def save_final_model(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> Path | None:
    """Write a model that transformers and vLLM load as is. With LoRA the adapter is merged into a copy
    of the weights, and the adapter alone is kept next to it as adapter/. `state_dict` is the full state
    gathered from sharded processes (FSDP, ZeRO-3); only rank 0 writes (others return None)."""
    if not is_main_process():
        return None
    path = Path(path)
    model = unwrap(model)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):
        save_model(model, path.with_name("adapter"), state_dict)
        if state_dict is not None:  # the live weights are sharded
            _merge_from_adapter(model, path.with_name("adapter"), tmp)
        else:
            copy.deepcopy(model).merge_and_unload().save_pretrained(tmp, safe_serialization=True)
    else:
        save_model(model, tmp, state_dict)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _merge_from_adapter(model, adapter_dir: Path, out: Path) -> None:
    """The merged LoRA model when the live weights are sharded: reload the base weights on this process,
    apply the saved adapter, merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model.peft_config["default"].base_model_name_or_path)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out, safe_serialization=True)


def write_report_quietly(out: str | Path) -> Path | None:
    """Write report.html (rank 0); a plotting failure must never lose a finished run, so it only warns."""
    if not is_main_process():
        return None

    try:
        return write_report(out)
    except Exception as e:  # noqa: BLE001  (matplotlib or a malformed metric: the run itself is fine)
        warnings.warn(f"could not write {Path(out) / 'report.html'}: {e}", stacklevel=2)
        return None
