"""Response pairs for judging: N sampled responses per prompt, written as one row per prompt.

Output rows: {"prompt", "responses": [N strings], "finish_reasons": [N of "stop"/"length"], "model",
 ...the prompt row's extra columns (split, hazard, category, ...)}. `alignkit judge` turns them into
preference data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.data.io import write_jsonl
from alignkit.data.readers import load_prompt_rows
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.rollout.generate import SamplingSettings, generate

PAIRS_FILE = "pairs.jsonl"


@dataclass
class GeneratePairsConfig:
    """Sample several responses per prompt for a judge to compare."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to sample from: embedded:NAME, a local checkpoint, a hub id, or stage:NAME in a pipeline."""
    dataset_name: str = ""
    """Prompt-format rows ({"prompt": ...}); several files separated by commas are read in turn."""
    output_dir: str = "runs/pairs"
    """Directory for pairs.jsonl and run.json."""
    max_prompts: int = 0
    """Use only the first this many prompts of each file (0: all)."""
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(
        num_return_sequences=2, max_new_tokens=128, temperature=0.8, top_p=0.95, batch_size=16))
    """How to sample (flat keys: num_return_sequences (responses per prompt, alias --n), max_new_tokens,
    temperature (above 0, so a prompt's responses differ), top_p, top_k, batch_size (prompts per call), seed)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "num_return_sequences": ("--n", "--num_responses", "--num_generations")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give a prompts file (--prompts FILE)")
        self.sampling.check()
        if self.sampling.num_return_sequences < 2:
            raise AlignkitError("config: num_return_sequences: a judge needs at least 2 responses per prompt, "
                                f"got {self.sampling.num_return_sequences}")
        if self.sampling.temperature == 0:
            raise AlignkitError("config: temperature: greedy decoding gives identical responses; use a temperature > 0")
        if self.max_prompts < 0:
            raise AlignkitError(f"config: max_prompts: must be >= 0, got {self.max_prompts}")


def sample_pairs(model, tokenizer, rows: list[dict], config: GeneratePairsConfig, model_name: str) -> list[dict]:
    """One output row per prompt row with config.sampling.num_return_sequences sampled responses."""
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], config.sampling)
    return [{**row, "responses": [g.completion for g in gens], "finish_reasons": [g.finish_reason for g in gens],
             "model": model_name} for row, gens in zip(rows, outputs)]


def run_generate_pairs(config: GeneratePairsConfig, output: str | Path | None = None) -> Path:
    """Sample and write pairs.jsonl (or `output`) atomically; mark the stage complete; return the file."""
    with run_owner(config, kind="generate_pairs", record=not output, model=config.model_name_or_path) as run:
        run.start()
        started = time.time()
        rows = load_prompt_rows(config.dataset_name, config.max_prompts)
        tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device)
        records = sample_pairs(model, tokenizer, rows, config, config.model_name_or_path)
        out = Path(config.output_dir)
        path = Path(output) if output else out / PAIRS_FILE
        write_jsonl(path, records)
        if not output:
            cut = sum(r == "length" for rec in records for r in rec["finish_reasons"])
            run.complete(model=config.model_name_or_path, rows=len(records),
                         responses=len(records) * config.sampling.num_return_sequences, cut_at_max_new_tokens=cut,
                         seconds=round(time.time() - started, 2))
        return path
