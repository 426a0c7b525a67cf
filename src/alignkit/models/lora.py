"""LoRA: the one settings class (`PeftSettings`, whose flat keys every trainable method's config carries) and
the adapter wrapper `apply_lora` that `models.load` applies (kept free of heavy imports: the CLI reads the
settings for --help)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError

# the keys of a settings dict (`PeftSettings.lora()` writes the first four)
LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")


@dataclass
class PeftSettings:
    """LoRA options every trainable method shares (flat keys: use_peft, lora_r, ...)."""

    use_peft: bool = False
    """Train a LoRA adapter instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules LoRA adapts: all-linear, or module names such as q_proj v_proj."""

    def lora(self) -> dict | None:
        """The adapter settings for `models.load`, or None for full fine-tuning."""
        if not self.use_peft:
            return None
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target_modules": target_modules(self.lora_target_modules)}


def target_modules(value: list[str] | str) -> list[str] | str:
    """peft's target_modules from the option: "all-linear" alone stays the string peft knows; a string (as
    Python callers give it) may hold a comma-separated list."""
    names = [t.strip() for t in value.split(",")] if isinstance(value, str) else [str(t).strip() for t in value]
    names = [t for t in names if t]
    return "all-linear" if names in ([], ["all-linear"]) else names


def apply_lora(model, lora: PeftSettings | dict, task_type: str):
    """Wrap `model` with a fresh LoRA adapter. `lora` is a PeftSettings (unchanged model unless use_peft) or a
    dict of `LORA_KEYS` (r, alpha, dropout, target_modules: "all-linear" or a list of module names,
    modules_to_save: modules trained in full next to the adapter; a reward model's score head always is)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise AlignkitError("LoRA needs peft: pip install 'alignkit[lora]'") from None
    if isinstance(lora, PeftSettings):
        lora = lora.lora()
        if lora is None:
            return model
    unknown = set(lora) - set(LORA_KEYS)
    if unknown:
        raise AlignkitError(f"lora: unknown settings {', '.join(sorted(unknown))}")
    defaults = PeftSettings()
    modules_to_save = list(lora.get("modules_to_save", ()))
    if task_type == "SEQ_CLS" and "score" not in modules_to_save:
        modules_to_save.append("score")
    config = LoraConfig(
        r=lora.get("r", defaults.lora_r), lora_alpha=lora.get("alpha", defaults.lora_alpha),
        lora_dropout=lora.get("dropout", defaults.lora_dropout),
        target_modules=target_modules(lora.get("target_modules", defaults.lora_target_modules)),
        modules_to_save=modules_to_save or None, task_type=task_type,
    )
    with warnings.catch_warnings():
        # peft still asks transformers for the deprecated is_gradient_checkpointing; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, config)
