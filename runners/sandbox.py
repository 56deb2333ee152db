"""The step sandbox: bubblewrap, as an unprivileged user, with only the run's directory writable.

What a step sees: the system's /usr (read-only), a few files of /etc that programs need, its
run directory at /workspace (with /tmp inside it), and, when the run holds GPUs, only the held
devices' /dev/nvidiaN with nvidiactl and nvidia-uvm. Nothing of the platform's environment
is passed, no other run's directory exists in its mount namespace, and it has no network
unless its spec step says ``network: true``.
"""

import ctypes
import os
import shutil
import signal
from pathlib import Path

from django.conf import settings

WORKSPACE = "/workspace"
SCRATCH = ".tmp"  # the step's /tmp, inside the run's directory
PATH = "/usr/local/bin:/usr/bin:/bin"
# Read-only files a program commonly needs; the rest of /etc (and any secret in it) stays out.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf",
             "ssl", "ca-certificates", "ca-certificates.conf", "passwd", "group", "hosts")
NETWORK_ETC_FILES = ("resolv.conf", "gai.conf")
GPU_CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


class SandboxUnavailable(Exception):
    """bubblewrap is missing; a runner refuses to execute steps without it."""


def bwrap_path() -> str:
    found = shutil.which(settings.RUNNER_BWRAP)
    if found is None:
        raise SandboxUnavailable(f"bubblewrap ({settings.RUNNER_BWRAP}) is not installed; install the Debian package "
                                 "bubblewrap on every runner node.")
    return found


def device_nodes(device_ids: list[str], dev: Path = Path("/dev")) -> list[str]:
    """The device nodes to bind for the held GPUs: /dev/nvidiaN for each held index, with the
    control devices, where they exist. A machine without a GPU driver has none."""
    held = [dev / f"nvidia{d}" for d in device_ids if str(d).isdigit()]
    nodes = [str(path) for path in held if path.exists()]
    if nodes:
        nodes += [str(dev / name) for name in GPU_CONTROL_DEVICES if (dev / name).exists()]
    return nodes


def command(*, argv: list[str], workdir: Path, env: dict[str, str], network: bool,
            device_ids: list[str]) -> list[str]:
    """The bwrap command line that runs ``argv`` for one step."""
    line = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
            "--bind", str(workdir), WORKSPACE, "--bind", str(workdir / SCRATCH), "/tmp", "--chdir", WORKSPACE]
    for name in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / name
        if target.is_symlink():  # Debian's merged /usr
            line += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            line += ["--ro-bind", str(target), str(target)]
    for name in ETC_FILES + (NETWORK_ETC_FILES if network else ()):
        line += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if network:
        line.append("--share-net")
    for node in device_nodes(device_ids):
        line += ["--dev-bind", node, node]
    line += ["--remount-ro", "/"]  # the sandbox's own root too: only the run's directory is writable
    for key, value in {"PATH": PATH, "HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8", **env}.items():
        line += ["--setenv", key, value]
    return [*line, "--", *argv]


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_worker() -> None:
    """In the child, before bwrap starts: if the worker dies (even by SIGKILL), so does the
    step, rather than running on, unbilled, on devices the reaper gives to someone else."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def popen_options() -> dict:
    """How the sandbox process starts: its own process group (so a kill reaches everything
    the step started), dying with the worker, and as RUNNER_SANDBOX_UID when the worker is
    root (a worker that runs as an unprivileged user runs steps as itself)."""
    options = {"start_new_session": True, "preexec_fn": _die_with_worker}
    if os.geteuid() == 0:
        options.update(user=settings.RUNNER_SANDBOX_UID, group=settings.RUNNER_SANDBOX_GID, extra_groups=[])
    return options
