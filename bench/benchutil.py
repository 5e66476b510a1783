"""Timing helpers the benchmark scripts share (imported as ``benchutil``: ``python bench/x.py``
puts ``bench/`` first on the path)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` on ``device``: the ceiling a step is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)
