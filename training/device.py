"""Which torch device a run uses, and how a result names the machine it ran on.

Its own module so the trainer (train.py) and the evaluator (evaluate.py), which both need it, do
not import each other.
"""

from __future__ import annotations

import os
import platform

import torch


def resolve_device(device: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:  # torch's own words list every device type it knows
        raise ValueError(f"unknown device {device!r}: auto, cpu, cuda or cuda:<index>") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    return resolved



def machine_description(device: torch.device) -> str:
    """e.g. 'Linux-6.1 x86_64, 2 CPUs, cpu' or '..., cuda (NVIDIA H100)'."""
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return f"{platform.system()}-{platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, {name}"
