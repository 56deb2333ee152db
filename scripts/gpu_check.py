"""Check a runner node's GPUs for real: discovery finds them through NVML, and a step run the
way the executor runs it (bubblewrap, only the held device's nodes bound, CUDA_VISIBLE_DEVICES
set to it, as the sandbox user when run as root) sees exactly that one device through CUDA.

    python scripts/gpu_check.py [--device N]

It needs nvidia-ml-py, Django (for the sandbox's settings) and bubblewrap, but no database:
on a bare GPU machine, `PYTHONPATH=<folder with django and nvidia-ml-py> RUNNER_BWRAP=<bwrap>
python3 scripts/gpu_check.py`. It prints what it did and saw, and exits 0 when every check holds,
1 otherwise. docs/operators.md ("Checking a GPU node") records a run on an NVIDIA H200 node.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Inside the sandbox: what CUDA itself reports, through the driver API (no framework needed).
PROBE = r'''
import ctypes, glob, json, os
cuda = ctypes.CDLL("libcuda.so.1")
result = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "dev_nodes": sorted(glob.glob("/dev/nvidia*")), "cuInit": cuda.cuInit(0)}
count = ctypes.c_int(0)
result["cuDeviceGetCount"] = cuda.cuDeviceGetCount(ctypes.byref(count))
result["count"], result["devices"] = count.value, []
for ordinal in range(count.value):
    device, name, uuid = ctypes.c_int(0), ctypes.create_string_buffer(256), ctypes.create_string_buffer(16)
    cuda.cuDeviceGet(ctypes.byref(device), ordinal)
    cuda.cuDeviceGetName(name, 256, device)
    cuda.cuDeviceGetUuid(uuid, device)
    raw = uuid.raw.hex()
    result["devices"].append({"name": name.value.decode(), "uuid": "GPU-%s-%s-%s-%s-%s" % (
        raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:])})
if count.value:  # real work on the device: a context, a 64 MiB allocation, a memset, read back
    context, pointer, byte = ctypes.c_void_p(), ctypes.c_uint64(0), ctypes.c_ubyte(0)
    device = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    calls = [cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device),
             cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(64 << 20)),
             cuda.cuMemsetD8_v2(pointer, ctypes.c_ubyte(0x5A), ctypes.c_size_t(64 << 20)),
             cuda.cuMemcpyDtoH_v2(ctypes.byref(byte), ctypes.c_uint64(pointer.value + (64 << 20) - 1),
                                  ctypes.c_size_t(1))]
    calls += [cuda.cuMemFree_v2(pointer), cuda.cuCtxDestroy_v2(context)]
    result["work"] = {"results": calls, "byte_read_back": byte.value}
print(json.dumps(result))
'''


def configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(RUNNER_BWRAP=os.environ.get("RUNNER_BWRAP", "bwrap"),
                           RUNNER_SANDBOX_UID=int(os.environ.get("RUNNER_SANDBOX_UID", "65534")),
                           RUNNER_SANDBOX_GID=int(os.environ.get("RUNNER_SANDBOX_GID", "65534")))


def nvml_uuid(index: int) -> str:
    import pynvml

    pynvml.nvmlInit()
    try:
        value = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
        return value.decode() if isinstance(value, bytes) else value
    finally:
        pynvml.nvmlShutdown()


def run_probe(workdir: Path, held: str | None) -> dict | None:
    """Run the probe as the executor runs a step: holding ``held`` (an index) or no GPU."""
    from runners import sandbox

    line = sandbox.command(argv=["python3", "probe.py"], workdir=workdir,
                           env={"CUDA_VISIBLE_DEVICES": held} if held is not None else {},
                           network=False, device_ids=[held] if held is not None else [])
    print("$ " + " ".join(line))
    step = subprocess.run(line, capture_output=True, text=True, timeout=120, **sandbox.popen_options())
    print(f"exit {step.returncode}\n{step.stdout.rstrip()}\n{step.stderr.rstrip()}".rstrip())
    if step.returncode != 0:
        return None
    return json.loads(step.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, help="the device index to hold (default: the last one)")
    options = parser.parse_args(argv)
    configure_django()
    from runners import sandbox
    from runners.discovery import discover

    found = discover(None)
    print(f"$ discovery (NVML): source={found.source} detail={found.detail!r}")
    for device in found.devices:
        print(f"  device {device.id}: {device.name}, {device.memory_mb} MiB")
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        print("$ nvidia-smi -L\n" + listing.stdout.rstrip())
    if found.source != "nvml" or not found.devices:
        print("FAIL: NVML discovery found no GPU.")
        return 1
    held = str(options.device if options.device is not None else len(found.devices) - 1)
    expected_uuid = nvml_uuid(int(held))
    print(f"Holding device {held} ({expected_uuid}); the step gets CUDA_VISIBLE_DEVICES={held} and only its nodes.")

    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    (workdir / sandbox.SCRATCH).mkdir()
    (workdir / "probe.py").write_text(PROBE)
    if os.geteuid() == 0:
        for path in (workdir, workdir / sandbox.SCRATCH, workdir / "probe.py"):
            os.chown(path, int(os.environ.get("RUNNER_SANDBOX_UID", "65534")),
                     int(os.environ.get("RUNNER_SANDBOX_GID", "65534")))
    seen = run_probe(workdir, held)
    unheld = run_probe(workdir, None)  # the same step holding no GPU
    if seen is None or unheld is None:
        print("FAIL: the sandboxed step did not run.")
        return 1
    nodes = {Path(node).name for node in seen["dev_nodes"]}
    other_gpus = {n for n in nodes if n.removeprefix("nvidia").isdigit()} - {f"nvidia{held}"}
    checks = {
        "CUDA sees exactly one device": seen["count"] == 1,
        "it is the held device (same UUID as NVML's)": [d["uuid"] for d in seen["devices"]] == [expected_uuid],
        "the step used it: context, 64 MiB allocation, memset read back":
            seen.get("work", {}).get("results") == [0] * 6 and seen["work"]["byte_read_back"] == 0x5A,
        "no other GPU's device node is in the sandbox": not other_gpus,
        "CUDA_VISIBLE_DEVICES is the held device": seen["CUDA_VISIBLE_DEVICES"] == held,
        "a step holding no GPU has no GPU device node and sees no device":
            not unheld["dev_nodes"] and unheld["count"] == 0,
    }
    for name, held_true in checks.items():
        print(f"{'ok  ' if held_true else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
