"""A pipeline stage that samples answers to a prompt file and keeps them (e.g. before/after training)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rollout.generate import SamplingSettings, as_records, generate

STDOUT = "-"


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


def run_generate(config: GenerateConfig, output: str | Path | None = None) -> Path | None:
    """Sample and write generations.jsonl atomically, marking the stage complete; returns the file.
    With `output` (the CLI's -o FILE, or "-" for stdout) the rows go there instead and no run directory is
    written (run.json nor config.yaml); stdout returns None."""
    with run_owner(config, kind="generate", record=output is None, model=config.model_name_or_path) as run:
        run.start()
        started = time.time()
        rows = load_prompt_rows(config.dataset_name, split=config.dataset_split)
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        records = as_records(rows, generate(model, tokenizer, [r["prompt"] for r in rows], config.sampling))
        if output == STDOUT:
            for record in records:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            return None
        path = Path(output) if output is not None else Path(config.output_dir) / "generations.jsonl"
        write_jsonl(path, records)
        if output is None:
            if config.show:
                show(records)
            run.complete(model=config.model_name_or_path, rows=len(records),
                         seconds=round(time.time() - started, 2))
        return path


def show(records: list[dict]) -> None:
    """Each prompt's last turn with its answer ([...] where the answer was cut at max_new_tokens)."""
    for record in records:
        prompt = record["prompt"]
        question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        cut = "" if record["finish_reason"] == "stop" else " [...]"
        print(f"Q: {question}\nA: {record['completion']}{cut}\n", flush=True)
