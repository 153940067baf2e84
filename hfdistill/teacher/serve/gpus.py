"""Which GPUs this machine shows, and how they split into replicas of N GPUs (one vLLM server each).

Found without importing torch: the CUDA_VISIBLE_DEVICES the caller read, else `nvidia-smi`, else the count
the CUDA driver reports (libcuda through ctypes). None of them: no GPU, and one CPU server.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence

from hfdistill.core.errors import ConfigError

__all__ = ["parse_gpu_list", "split_replicas", "visible_gpus"]


def parse_gpu_list(text: str, *, what: str = "--serve-gpus") -> tuple[str, ...]:
    """`0,1,3` (or GPU UUIDs) as ids; as CUDA reads CUDA_VISIBLE_DEVICES, a `-1` hides those after it."""
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part.startswith("-"):
            break
        if not part:
            raise ConfigError(f"{what} has an empty entry: {text!r}; list GPU ids like 0,1,2,3")
        if part in ids:
            raise ConfigError(f"{what} lists GPU {part} twice: {text!r}")
        ids.append(part)
    return tuple(ids)


def visible_gpus(cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The GPUs a server may use: CUDA_VISIBLE_DEVICES when set (an empty value hides every GPU), else every
    GPU nvidia-smi lists, else those the CUDA driver counts."""
    if cuda_visible_devices is not None:
        return parse_gpu_list(cuda_visible_devices, what="CUDA_VISIBLE_DEVICES") if cuda_visible_devices.strip() \
            else ()
    found = _nvidia_smi()
    return found if found is not None else tuple(str(i) for i in range(_driver_count()))


def _nvidia_smi() -> tuple[str, ...] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:  # a driver that does not answer: ask libcuda
        return None
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())


def _driver_count() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def split_replicas(gpus: Sequence[str], tensor_parallel: int) -> list[tuple[str, ...]]:
    """Consecutive groups of `tensor_parallel` GPUs, one per server; no GPU at all: one CPU server (`()`)."""
    if tensor_parallel < 1:
        raise ConfigError(f"--serve-tensor-parallel must be >= 1, got {tensor_parallel}")
    if not gpus:
        if tensor_parallel > 1:
            raise ConfigError(f"--serve-tensor-parallel {tensor_parallel} needs GPUs, and none is visible (no "
                              "CUDA_VISIBLE_DEVICES, nvidia-smi or CUDA driver); pass --serve-gpus")
        return [()]
    if len(gpus) % tensor_parallel:
        raise ConfigError(f"{len(gpus)} GPUs ({','.join(gpus)}) do not split into replicas of {tensor_parallel}; pass "
                          f"--serve-gpus with a multiple of {tensor_parallel} GPUs, or another --serve-tensor-parallel")
    return [tuple(gpus[i:i + tensor_parallel]) for i in range(0, len(gpus), tensor_parallel)]
