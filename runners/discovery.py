"""Which GPUs this machine has: declared by the operator (``RUNNER_GPU_DEVICES``), or found
through NVML (nvidia-ml-py) when a GPU and its driver exist.

A declaration wins when it is set: it is how an operator keeps devices back from the
platform, and how machines without a GPU run the same code in tests.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    id: str  # the value CUDA_VISIBLE_DEVICES takes: an index, or a GPU-/MIG- UUID
    name: str = ""
    memory_mb: int = 0


@dataclass(frozen=True)
class Discovery:
    source: str  # declared, nvml, or none
    devices: tuple[Device, ...]
    detail: str = ""


class DeclarationInvalid(ValueError):
    """RUNNER_GPU_DEVICES is not a comma-separated list of distinct device ids."""


def parse_declared(text: str) -> tuple[Device, ...]:
    ids = [part.strip() for part in text.split(",")]
    if not all(ids) or len(set(ids)) != len(ids):
        raise DeclarationInvalid(f"RUNNER_GPU_DEVICES must list distinct device ids separated by commas, "
                                 f"such as 0,1 or GPU-<uuid>; got {text!r}.")
    if not all(i.isdigit() or i.startswith(("GPU-", "MIG-")) for i in ids):
        raise DeclarationInvalid(f"Each device id is an index (0, 1, ...) or a GPU-/MIG- UUID; got {text!r}.")
    return tuple(Device(id=i) for i in ids)


def discover_nvml() -> Discovery:
    try:
        import pynvml
    except ImportError:
        return Discovery("none", (), "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver, no GPU: a machine without GPUs
        return Discovery("none", (), f"NVML is unavailable: {exc}")
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            devices.append(Device(id=str(index), name=name.decode() if isinstance(name, bytes) else name,
                                  memory_mb=int(memory)))
        return Discovery("nvml", tuple(devices), f"driver {_driver_version(pynvml)}")
    finally:
        pynvml.nvmlShutdown()


def _driver_version(pynvml) -> str:
    version = pynvml.nvmlSystemGetDriverVersion()
    return version.decode() if isinstance(version, bytes) else version


def discover(declared: str | None) -> Discovery:
    if declared:
        return Discovery("declared", parse_declared(declared), "from RUNNER_GPU_DEVICES")
    return discover_nvml()
