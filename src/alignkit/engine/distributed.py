"""What changes when a run has several processes (`accelerate launch`, torchrun, SLURM): who writes files,
how the accelerator is built on CPU, and how checkpoints gather sharded state.

- Files are written by the global rank 0 only (`is_main_process`, from `alignkit.processes`: the launcher's
  RANK variable, so it works before any accelerator exists, e.g. for config.yaml and run.json).
- A checkpoint holds the *full* model weights and the *full* optimizer state, gathered onto rank 0, with the
  optimizer state keyed by parameter name rather than position. That makes a checkpoint independent of the
  strategy and the number of processes that wrote it: DDP, FSDP and a single process all read it, and resume
  under DDP or FSDP is exact. Each rank's RNG state is kept too (ranks sample different things in online RL).
- accelerate runs FSDP and DeepSpeed only on accelerators; torch's FSDP2 itself also runs on CPU processes
  over gloo, so on CPU (tests, laptops) `make_accelerator` builds a multi-CPU accelerator and switches it to
  FSDP when the launch config asked for FSDP.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any

from alignkit.engine.checkpoint import rng_state
from alignkit.processes import is_main_process, rank, world_size  # noqa: F401 (the engine's users read them here)


def make_accelerator(cpu: bool, **kwargs):
    """An Accelerator for this launch. On CPU with several processes it is accelerate's multi-CPU (gloo)
    state, switched to FSDP when the launch config chose FSDP (accelerate would otherwise fall back to DDP
    silently)."""
    import torch
    from accelerate import Accelerator

    use_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not torch.cuda.is_available():
        # DeepSpeed (imported by accelerate when installed) would find no GPU and say so on stdout, which is
        # the CLI's results channel; naming the CPU it falls back to anyway keeps stdout clean
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if world_size() > 1 and not torch.cuda.is_available():
        cpu = True  # without this accelerate sees no GPU and runs each process alone
    if world_size() > 1:
        _close_at_exit()
    if not (cpu and world_size() > 1 and (use_fsdp or use_deepspeed)):
        return Accelerator(cpu=cpu, **kwargs)
    if use_deepspeed:
        return _deepspeed_on_cpu(kwargs)
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch set from the config
    accelerator = Accelerator(cpu=True, **kwargs)
    _switch(DistributedType.FSDP)
    AcceleratorState().fsdp_plugin = plugin
    return accelerator


def _switch(distributed_type) -> None:
    """Set the distributed type on both of accelerate's shared states (AcceleratorState re-reads
    PartialState's each time it is constructed, which prepare does)."""
    from accelerate.state import AcceleratorState, PartialState

    PartialState().distributed_type = distributed_type
    AcceleratorState().distributed_type = distributed_type


_closing = []


def _close_at_exit() -> None:
    """Shut the process group down before the interpreter does: a gloo group torn down at interpreter exit
    can abort the process ("terminate called without an active exception") after a successful run."""
    if _closing:
        return
    import torch.distributed

    def close():
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_backend() == "gloo":
            # every rank reaches the teardown before any tears down: a peer that already closed its side
            # aborts gloo's threads mid-teardown (seen about 1 run in 8 on 2 CPU processes); bounded wait,
            # so a crashed peer cannot hold this process at exit
            try:
                torch.distributed.monitored_barrier(timeout=timedelta(seconds=60))
            except RuntimeError:
                pass
        torch.distributed.destroy_process_group()

    atexit.register(close)
    _closing.append(close)


def _deepspeed_on_cpu(kwargs):
    """DeepSpeed on CPU processes: accelerate's multi-CPU (gloo) process group, DeepSpeed's CPU accelerator
    on top, and the state switched to DEEPSPEED so `prepare` builds a DeepSpeed engine."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables of the launch config
    accelerator = Accelerator(cpu=True, **kwargs)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    state = AcceleratorState()
    plugin.set_mixed_precision(state.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    _switch(DistributedType.DEEPSPEED)
    state.deepspeed_plugins = plugin
    return accelerator


def uses_deepspeed(accelerator) -> bool:
    return str(accelerator.distributed_type).endswith("DEEPSPEED")


def param_names(model, optimizer) -> list[str]:
    """The name of every parameter the optimizer holds, in its order (before `prepare` wraps the model)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def by_name(optimizer_state: dict, names: list[str]) -> dict:
    """A torch optimizer state dict keyed by position turned into one keyed by parameter name."""
    state = {names[i]: value for i, value in optimizer_state["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def by_position(optimizer_state: dict, names: list[str]) -> dict:
    """The inverse of `by_name` (position keys are what `Optimizer.load_state_dict` takes)."""
    if all(isinstance(k, int) for k in optimizer_state["state"]):
        return optimizer_state
    index = {name: i for i, name in enumerate(names)}
    state = {index[name]: value for name, value in optimizer_state["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optimizer_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def checkpoint_parts(accelerator, model, optimizer, names: list[str]) -> tuple[Any, dict | None, list]:
    """(full model state dict or None, optimizer state keyed by name, every rank's RNG state) for a checkpoint.
    Collective: every process calls it; the dicts are complete on rank 0 only."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if accelerator.num_processes == 1:
        return None, by_name(inner.state_dict(), names), [rng_state()]
    from accelerate.utils import gather_object

    model_state = optimizer_state = None  # DDP and ZeRO-2 keep whole weights: rank 0 saves its own
    if uses_deepspeed(accelerator):  # DeepSpeed keeps its optimizer state inside its engine
        if accelerator.state.deepspeed_plugin.zero_stage == 3:
            model_state = accelerator.get_state_dict(model)
    else:
        if is_fsdp(model):
            model_state = {k: _full(v) for k, v in model.state_dict().items()}
        saved = inner.state_dict()
        state = {i: {k: _full(v) for k, v in s.items()} for i, s in saved["state"].items()}
        optimizer_state = by_name({"state": state, "param_groups": saved["param_groups"]}, names)
    return model_state, optimizer_state, gather_object([rng_state()])


def _full(value):
    """A CPU copy of a tensor, gathered from every process when it is an FSDP2 shard (collective)."""
    import torch

    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    # a copy with its own storage: FSDP frees the buffers it gathered into
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def is_fsdp(model) -> bool:
    """Whether FSDP2 shards the model's parameters (read from them: accelerate's state may report MULTI_CPU
    once prepare has run on CPU)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def load_optimizer(accelerator, model, optimizer, saved: dict, names: list[str]) -> None:
    """Load a checkpoint's optimizer state (keyed by name or, from older checkpoints, by position)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if accelerator.num_processes == 1 or not is_fsdp(model):
        inner.load_state_dict(by_position(saved, names))  # DDP: every rank holds the whole optimizer
        return
    from torch.distributed.tensor import distribute_tensor

    saved = by_position(saved, names)
    params = [p for group in inner.param_groups for p in group["params"]]
    state = {}
    for i, values in saved["state"].items():  # shard each full tensor the way its parameter is sharded
        param = params[i]
        state[i] = {k: distribute_tensor(v.to(param.device), param.device_mesh, param.placements)
                    if hasattr(param, "device_mesh") and getattr(v, "shape", None) == param.shape else v
                    for k, v in values.items()}
    inner.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
