"""Where this process runs: its device, and its place in a torch.distributed job (torchrun)."""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import FastSSLError


def resolve_device(name) -> torch.device:
    """A torch device from a recipe's or caller's ``device`` (``auto``: CUDA when present); one
    line when CUDA is asked for and absent."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FastSSLError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastSSLError(f"device {name!r} asked for, but CUDA is not available: use `device` cpu")
    return dev


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@contextlib.contextmanager
def shutdown_distributed():
    """Under torchrun: after the block, every rank waits for the others, then the process group
    is destroyed (a rank leaving while another still talks to it can abort that one)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        yield
    except BaseException:
        if dist:  # no barrier: the other ranks may never reach it
            torch.distributed.destroy_process_group()
        raise
    if dist:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Start the process group under torchrun; (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    return rank_world()
