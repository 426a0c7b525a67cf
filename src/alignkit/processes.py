"""Which process of a launch this is (`accelerate launch`, torchrun, SLURM), read from the launcher's
environment, so that it is known before any accelerator or process group exists.

Bottom layer: models/ and ops/ need it too (only rank 0 writes a cache; every rank must run the same number
of forward passes), and they sit below engine/, which builds the accelerators.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the process that writes files (global rank 0, or the only process)."""
    return rank() == 0
