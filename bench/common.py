"""What the benchmark scripts share: the device's name and waiting for a GPU."""

import contextlib
import platform

import torch


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name as Linux reports it."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def sync(device: str) -> None:
    """Wait until a GPU has finished what it was given, so that timings are true."""
    if device == "cuda":
        torch.cuda.synchronize()
