"""What the machine offers a training step: CPU model and instruction sets, threads, GPU.

The trainer's ``auto`` settings read these facts (never a timing, so the same recipe on the
same machine always runs the same arithmetic); ``fastssl bench train`` names them beside its
figures.
"""

from __future__ import annotations

import functools
import os
import platform

# CPU flags (as /proc/cpuinfo names them) that decide the trainer's arithmetic
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux; empty where /proc/cpuinfo is unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_matmul() -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware tiles (Intel AMX-BF16), where oneDNN's
    bf16 convolutions run well ahead of fp32 (``fastssl bench train`` shows by how much). With
    AVX512-BF16 alone the CPU only converts faster, and bf16 was not found faster than fp32."""
    return "amx_bf16" in cpu_flags()


def cores() -> int:
    return len(os.sched_getaffinity(0))


def describe(device) -> dict:
    """The machine as the bench records it."""
    import torch

    out = {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in FLAGS if f in cpu_flags()],
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.device(device).type == "cuda":
        i = torch.device(device).index or 0
        out["gpu"] = torch.cuda.get_device_name(i)
        out["cuda"] = torch.version.cuda
        out["gpu_driver"] = _nvidia_driver()
    return out


def _nvidia_driver() -> str:
    import subprocess

    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
