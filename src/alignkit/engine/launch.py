"""`alignkit <method> --num_processes N --accelerate_config NAME|PATH`: the same command, run again on N
processes through `accelerate launch` (python -m accelerate.commands.launch).

NAME is one of the packaged configs (configs/accelerate/: ddp, fsdp, fsdp_offload, zero2, zero3); PATH is any
accelerate config file. accelerate's own `--cpu` flag would start a single process, so on CPU the config's
launcher (torchrun) starts the N processes and the engine builds a gloo accelerator in each
(engine.distributed.make_accelerator). For several machines, run `accelerate launch` or torchrun yourself
(docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from alignkit.errors import AlignkitError

OPTIONS = ("num_processes", "accelerate_config")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def add_options(parser, option) -> None:
    """The two launch options every training command takes (absent unless given)."""
    option(parser, "--num_processes", type=int, default=argparse.SUPPRESS, metavar="N",
           help="train on N processes (GPUs, or CPU processes over gloo) through accelerate launch "
                "(default with --accelerate_config: every visible GPU, or 1 on CPU)")
    option(parser, "--accelerate_config", default=argparse.SUPPRESS, metavar="NAME|PATH",
           help=f"accelerate config: {', '.join(config_names())} (docs/scaling.md) or a file "
                "(default with --num_processes: ddp)")


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str) -> Path:
    """A packaged config's file by NAME, or the given file."""
    packaged = CONFIG_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise AlignkitError(f"accelerate_config: {name_or_path}: neither a file nor one of {', '.join(config_names())}")


def strip_options(argv: list[str]) -> list[str]:
    """argv without the launch options (`--num_processes 2`, `--num-processes=2`, ...)."""
    flags = {f"--{name}" for name in OPTIONS} | {f"--{name.replace('_', '-')}" for name in OPTIONS}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif arg.split("=", 1)[0] not in flags:
            out.append(arg)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(argv: list[str], num_processes: int | None, accelerate_config: str | None) -> list[str]:
    """The `accelerate launch` command line that runs `alignkit <argv>` on the processes asked for."""
    if "LOCAL_RANK" in os.environ:
        raise AlignkitError("num_processes: this command already runs under a launcher (LOCAL_RANK is set); "
                            "drop --num_processes / --accelerate_config")
    if num_processes is None:
        import torch

        num_processes = torch.cuda.device_count() if torch.cuda.is_available() else 1
    if num_processes < 1:
        raise AlignkitError(f"num_processes: must be at least 1, got {num_processes}")
    config = config_path(accelerate_config or "ddp")
    port = os.environ.get("MAIN_PROCESS_PORT") or str(free_port())  # tests and neighbours run side by side
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", port,
            "-m", "alignkit.cli", *strip_options(argv)]


def relaunch(argv: list[str], num_processes: int | None, accelerate_config: str | None) -> int:
    """Run the command on N processes; returns the launcher's exit code (non-zero when any process failed)."""
    command = launch_command(argv, num_processes, accelerate_config)
    print(f"alignkit: launching {command[6]} processes with {Path(command[4]).name}", file=sys.stderr)
    return subprocess.call(command)


def hide_deepspeed_unless_chosen() -> None:
    """Keep DeepSpeed out of a process whose launch did not choose it. Installed, it is imported by
    accelerate whenever transformers saves a model (to unwrap a DeepSpeedEngine), which costs 0.2 s and, on
    a machine without a GPU, logs "Setting accelerator to CPU. If you have GPU...". `accelerate launch` with
    a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED=true; otherwise a None entry in sys.modules makes
    `importlib.util.find_spec("deepspeed")` answer None, so every "is DeepSpeed available" check says no."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        sys.modules.setdefault("deepspeed", None)
