"""Runner nodes: GPU discovery (declared, or NVML where a GPU exists), registration and
heartbeats, pools by flavor and jurisdiction, and the operators' API."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from runners.discovery import DeclarationInvalid, Device, Discovery, discover, discover_nvml, parse_declared
from runners.models import RunnerNode
from runners.selectors import pools
from runners.services import runner_heartbeat, runner_register
from tenants.errors import Invalid, NotFound

from .test_api import assert_error



@pytest.fixture
def flavor(world):
    from tenants.services import gpu_flavor_create

    return gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")


def declared(text):
    return Discovery("declared", parse_declared(text))


def test_declared_devices_are_parsed_and_checked():
    assert [d.id for d in parse_declared("0, 1,2")] == ["0", "1", "2"]
    assert [d.id for d in parse_declared("GPU-8f1c,MIG-2a")] == ["GPU-8f1c", "MIG-2a"]
    for bad in ("0,0", "0,,1", "first", ""):
        with pytest.raises(DeclarationInvalid):
            parse_declared(bad)


def test_a_declaration_wins_over_nvml():
    found = discover("0,1")
    assert found.source == "declared" and [d.id for d in found.devices] == ["0", "1"]


def test_nvml_on_a_machine_without_a_gpu_finds_nothing_and_says_why():
    found = discover_nvml()
    if found.source == "nvml":  # a GPU machine: the devices are real ones
        assert found.devices and all(d.name and d.memory_mb > 0 for d in found.devices)
    else:
        assert found.source == "none" and found.devices == () and found.detail


@pytest.mark.embedded
def test_a_node_registers_with_its_devices_and_is_audited(flavor):
    node = runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", discovery=declared("0,1,2,3"),
                           region="eu-west1", jurisdiction="eu")
    assert node.device_ids == ["0", "1", "2", "3"] and node.queue == "runner.gpu-eu-1" and node.is_live()
    again = runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", discovery=declared("0,1"),
                            region="eu-west1", jurisdiction="eu")
    assert again.pk == node.pk and again.device_ids == ["0", "1"]
    events = AuditEvent.objects.using("owner").filter(action="runner.register").order_by("id")
    assert [e.data["devices"] for e in events] == [["0", "1", "2", "3"], ["0", "1"]]
    assert events[0].actor_type == "system"


@pytest.mark.parametrize("kwargs, field", [
    ({"discovery": Discovery("none", (), "NVML is unavailable")}, "devices"),
    ({"flavor_name": "a100-40gb"}, "flavor"),
    ({"region": "us-east1"}, "region"),
])
def test_a_registration_that_cannot_hold_is_refused(flavor, kwargs, field):
    arguments = {"hostname": "gpu-eu-1", "flavor_name": "h100-80gb", "discovery": declared("0"),
                 "region": "eu-west1", "jurisdiction": "eu", **kwargs}
    with pytest.raises(Invalid) as refused:
        runner_register(**arguments)
    assert refused.value.field == field
    assert not RunnerNode.objects.using("owner").exists()


def test_pools_count_only_live_nodes_per_flavor_and_jurisdiction(flavor):
    runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", discovery=declared("0,1,2,3"), region="eu",
                    jurisdiction="eu")
    runner_register(hostname="gpu-eu-2", flavor_name="h100-80gb", discovery=declared("0,1"), region="eu-west1",
                    jurisdiction="eu")
    runner_register(hostname="gpu-us-1", flavor_name="h100-80gb", discovery=declared("0,1"), region="us",
                    jurisdiction="us")
    RunnerNode.objects.using("owner").filter(hostname="gpu-eu-2").update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    found = {(p.flavor, p.jurisdiction): p for p in pools()}
    assert found[("h100-80gb", "eu")].capacity == 4 and found[("h100-80gb", "eu")].other_nodes == ["gpu-eu-2"]
    assert found[("h100-80gb", "us")].capacity == 2
    runner_heartbeat(hostname="gpu-eu-2")
    assert {(p.flavor, p.jurisdiction): p.capacity for p in pools()}[("h100-80gb", "eu")] == 6
    with pytest.raises(NotFound):
        runner_heartbeat(hostname="never-registered")


@pytest.mark.embedded
def test_only_platform_admins_see_and_drain_nodes(flavor, world, api):
    runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", discovery=declared("0,1"), region="eu",
                    jurisdiction="eu")
    assert_error(api(world.a.admin).get("/api/v1/runners/"), 403, "permission_denied")
    assert_error(api(world.a.admin).get("/api/v1/pools/"), 403, "permission_denied")
    operator = api(world.platform_admin)
    [node] = operator.get("/api/v1/runners/").json()["results"]
    assert node["hostname"] == "gpu-eu-1" and node["live"] is True and node["device_ids"] == ["0", "1"]
    assert operator.get("/api/v1/pools/").json()["results"][0]["capacity"] == 2
    drained = operator.patch("/api/v1/runners/gpu-eu-1/", {"state": "draining"}).json()
    assert drained["state"] == "draining" and drained["live"] is False
    assert operator.get("/api/v1/pools/").json()["results"][0]["capacity"] == 0
    assert_error(operator.patch("/api/v1/runners/gpu-eu-1/", {"state": "gone"}), 400, "invalid")
    assert AuditEvent.objects.using("owner").get(action="runner.state_change").data == {"from": "ready",
                                                                                        "to": "draining"}


def test_the_runner_command_registers_from_settings(flavor, settings):
    settings.RUNNER_HOSTNAME, settings.RUNNER_FLAVOR = "gpu-eu-7", "h100-80gb"
    settings.RUNNER_REGION, settings.RUNNER_JURISDICTION, settings.RUNNER_GPU_DEVICES = "eu", "eu", "0,1"
    out = io.StringIO()
    call_command("runner", "register", stdout=out)
    assert "Registered gpu-eu-7: 2 x h100-80gb (declared: 0, 1), queue runner.gpu-eu-7." in out.getvalue()
    call_command("runner", "heartbeat", stdout=io.StringIO())
    settings.RUNNER_GPU_DEVICES = "0,0"
    with pytest.raises(CommandError, match="distinct device ids"):
        call_command("runner", "register", stdout=io.StringIO())
    settings.RUNNER_GPU_DEVICES, settings.RUNNER_FLAVOR = "0", ""
    with pytest.raises(CommandError, match="Set RUNNER_FLAVOR"):
        call_command("runner", "register", stdout=io.StringIO())


def test_devices_are_named_for_operators(flavor):
    found = Discovery("nvml", (Device("0", "NVIDIA H200", 143771),), "driver 580")
    node = runner_register(hostname="gpu-eu-9", flavor_name="h100-80gb", discovery=found, region="eu",
                           jurisdiction="eu")
    assert node.device_names == ["NVIDIA H200 143771 MiB"] and node.discovered_by == "nvml"
