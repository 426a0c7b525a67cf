"""Response pairs for judging: N sampled responses per prompt, written as one row per prompt.

Output rows: {"prompt", "responses": [N strings], "finish_reasons": [N of "stop"/"length"], "model",
 ...the prompt row's extra columns (split, hazard, category, ...)}. `alignkit judge` turns them into
preference data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import AlignkitError

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
    num_responses: int = 2
    """Responses sampled per prompt."""
    max_prompts: int = 0
    """Use only the first this many prompts of each file (0: all)."""
    max_new_tokens: int = 128
    """Most tokens per response."""
    temperature: float = 0.8
    """Sampling temperature (above 0: the responses of a prompt should differ)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    batch_size: int = 16
    """Prompts per generate call (each gives num_responses rows)."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--prompts", "--data"),
                   "num_responses": ("--n", "--num_generations")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give a prompts file (--prompts FILE)")
        if self.num_responses < 2:
            raise AlignkitError(f"config: num_responses: a judge needs at least 2 per prompt, got {self.num_responses}")
        if self.temperature == 0:
            raise AlignkitError("config: temperature: greedy decoding gives identical responses; use a temperature > 0")
        if self.max_prompts < 0:
            raise AlignkitError(f"config: max_prompts: must be >= 0, got {self.max_prompts}")


def load_prompt_rows(names: str, max_prompts: int = 0) -> list[dict]:
    """Prompt rows from one file or several separated by commas; the first `max_prompts` of each when set."""
    from alignkit.data.io import load_rows

    rows = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        found = load_rows(name, "prompt")
        rows += found[:max_prompts] if max_prompts else found
    return rows


def sample_pairs(model, tokenizer, rows: list[dict], config: GeneratePairsConfig, model_name: str) -> list[dict]:
    """One output row per prompt row with config.num_responses sampled responses."""
    from alignkit.rollout.generate import SamplingSettings, generate

    settings = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                top_p=config.top_p, top_k=config.top_k, num_return_sequences=config.num_responses,
                                batch_size=config.batch_size, seed=config.seed)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], settings)
    return [{**row, "responses": [g.completion for g in gens], "finish_reasons": [g.finish_reason for g in gens],
             "model": model_name} for row, gens in zip(rows, outputs)]


def run_generate_pairs(config: GeneratePairsConfig, output: str | Path | None = None) -> Path:
    """Sample and write pairs.jsonl (or `output`) atomically; mark the stage complete; return the file."""
    import time

    from alignkit.data.io import write_jsonl
    from alignkit.engine.outputs import write_status
    from alignkit.models.load import load_policy, load_tokenizer

    config.check()
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
        write_status(out, "complete", "generate_pairs", model=config.model_name_or_path, rows=len(records),
                     responses=len(records) * config.num_responses, cut_at_max_new_tokens=cut,
                     seconds=round(time.time() - started, 2))
    return path
