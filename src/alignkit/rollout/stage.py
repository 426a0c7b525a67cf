"""A pipeline stage that samples answers to a prompt file and keeps them (e.g. before/after training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.rollout.generate import SamplingSettings


@dataclass
class GenerateConfig:
    """Sample responses to prompts and write them to output_dir/generations.jsonl."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Model to sample from: embedded:NAME, a local checkpoint, a hub id, or stage:NAME in a pipeline."""
    dataset_name: str = "builtin:prompts.jsonl"
    """Prompt-format rows ({"prompt": ...}); several files separated by commas are read in turn."""
    dataset_split: str | None = None
    """Only the rows whose "split" column has this value (e.g. test: prompts no stage trained on)."""
    output_dir: str = "runs/generate"
    """Directory for generations.jsonl and run.json."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """How to sample (flat keys: max_new_tokens, temperature (0: greedy), top_p, top_k,
    num_return_sequences, batch_size, seed)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""
    show: bool = True
    """Print each prompt with its answer."""

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give a prompts file")
        self.sampling.check()


def run_generate(config: GenerateConfig) -> Path:
    """Sample, write generations.jsonl atomically, mark the stage complete; returns the file."""
    import time

    from alignkit.data.io import write_jsonl
    from alignkit.data.readers import load_prompt_rows
    from alignkit.engine.run import run_owner
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.rollout.generate import as_records, generate

    with run_owner(config, kind="generate", model=config.model_name_or_path) as run:
        run.start()
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        rows = load_prompt_rows(config.dataset_name, split=config.dataset_split)
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        outputs = generate(model, tokenizer, [r["prompt"] for r in rows], config.sampling)
        records = as_records(rows, outputs)
        path = out / "generations.jsonl"
        write_jsonl(path, records)
        if config.show:
            for record in records:
                prompt = record["prompt"]
                question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
                cut = "" if record["finish_reason"] == "stop" else " [...]"
                print(f"Q: {question}\nA: {record['completion']}{cut}\n", flush=True)
        run.complete(model=config.model_name_or_path, rows=len(records),
                     seconds=round(time.time() - started, 2))
        return path
