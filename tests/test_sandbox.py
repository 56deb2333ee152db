"""The sandbox command line: only the held GPUs' device nodes are bound, with the control
devices, and nothing of the network or environment unless asked."""

import pytest

from runners import sandbox



def test_only_the_held_gpus_device_nodes_are_bound_with_the_control_devices(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert sandbox.device_nodes(["1", "3"], dev=tmp_path) == [
        str(tmp_path / "nvidia1"), str(tmp_path / "nvidia3"), str(tmp_path / "nvidiactl"),
        str(tmp_path / "nvidia-uvm")]
    assert sandbox.device_nodes([], dev=tmp_path) == []  # a run without GPUs sees no GPU at all
    assert sandbox.device_nodes(["0"], dev=tmp_path / "absent") == []  # a machine without the driver


def test_the_command_line_shares_the_network_only_when_the_step_asks(tmp_path):
    closed = sandbox.command(argv=["true"], workdir=tmp_path, env={"A": "1"}, network=False, device_ids=[])
    opened = sandbox.command(argv=["true"], workdir=tmp_path, env={}, network=True, device_ids=[])
    assert "--unshare-all" in closed and "--share-net" not in closed and "--share-net" in opened
    assert "--clearenv" in closed and closed[closed.index("A") - 1:closed.index("A") + 2] == ["--setenv", "A", "1"]
    assert closed[-2:] == ["--", "true"] and "/etc/resolv.conf" not in closed and "/etc/resolv.conf" in opened
