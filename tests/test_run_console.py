"""The runs console: requesting a run with errors shown next to the field, the live run page
(one journey in a real browser, with a real runner), the quota page, and the operators'
nodes and chargeback pages."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from runners.models import Run, UsageEntry
from tenants.models import GpuFlavor
from workflows.models import WorkflowVersion

from tests.support.clients import sign_in
from tests.support.governance import put_quota

from tests.support.processes import wait_for
from .test_promotion_console import _sign_in
from .test_promotions import Gate
from .test_run_execution import sh, spec_with



@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


def billed_run(gate, number, *, gpu_seconds, days_ago=0):
    """A finished run of the version with its ledger row, as a runner would have left them."""
    version = WorkflowVersion.objects.using("owner").get(workflow__name="fraud-detector", number=number)
    flavor = GpuFlavor.objects.using("owner").get(name="h100-80gb")
    run = Run.objects.using("owner").create(
        tenant=gate.world.a.tenant, version=version, stage="development", requested_by=gate.world.a.developer,
        flavor=flavor, gpus=2, max_runtime_seconds=3600, state="succeeded", fencing_token=1)
    when = timezone.now() - timedelta(days=days_ago)
    UsageEntry.objects.using("owner").create(
        tenant=gate.world.a.tenant, flavor=flavor, run=run, fencing_token=1, month=when.date().replace(day=1),
        gpus=2, seconds=gpu_seconds / 2, gpu_seconds=gpu_seconds, weight=flavor.billing_weight,
        weighted_gpu_seconds=gpu_seconds * flavor.billing_weight, recorded_at=when)
    return run


def test_a_run_request_form_shows_problems_next_to_the_field(gate, world, client):
    number = gate.version()
    sign_in(client, world.a.developer)
    response = client.post("/t/acme-bank/runs/", {"workflow": "fraud-detector", "version": number,
                                                  "stage": "development", "parameters": "{not json"})
    html = response.content.decode()
    assert response.status_code == 400 and 'id="id_parameters-error"' in html and "This is not valid JSON." in html
    response = client.post("/t/acme-bank/runs/", {"workflow": "fraud-detector", "version": number,
                                                  "stage": "staging", "parameters": ""})
    assert response.status_code == 403 and "has not been promoted to staging" in response.content.decode()
    response = client.post("/t/acme-bank/runs/", {"workflow": "fraud-detector", "version": number + 5,
                                                  "stage": "development"})
    assert response.status_code == 400 and f"fraud-detector has no version {number + 5}." in response.content.decode()
    assert not Run.objects.using("owner").exists()
    response = client.post("/t/acme-bank/runs/", {"workflow": "fraud-detector", "version": number,
                                                  "stage": "development", "parameters": '{"seed": 7}'})
    run = Run.objects.using("owner").get()
    assert response.status_code == 302 and response["Location"] == f"/t/acme-bank/runs/{run.public_id}/"
    assert run.parameters == {"seed": 7}
    page = client.get(f"/t/acme-bank/runs/{run.public_id}/").content.decode()
    assert 'id="run-state"' in page and 'id="run-cancel"' in page


def test_another_tenants_run_page_is_404_and_operators_pages_are_for_platform_admins(gate, world, client):
    number = gate.version()
    run_id = gate.developer.post("/api/v1/tenants/acme-bank/runs/", {
        "workflow": "fraud-detector", "version": number, "stage": "development"}).json()["id"]
    assert sign_in(client, world.b.admin).get(f"/t/acme-bank/runs/{run_id}/").status_code == 404
    assert client.get(f"/t/st-mary-hospital/runs/{run_id}/").status_code == 404
    assert client.get("/platform/nodes/").status_code == 403
    assert client.get("/platform/chargeback/?format=csv").status_code == 403


def test_the_quota_page_shows_usage_alerts_and_a_daily_chart(gate, world, client, api):
    put_quota(api, world, {"nominal": 2, "borrowing_limit": 2, "gpu_hours_budget": 10, "budget_mode": "soft"})
    number = gate.version()
    billed_run(gate, number, gpu_seconds=Decimal(7200))
    billed_run(gate, number, gpu_seconds=Decimal(3600), days_ago=3)
    html = sign_in(client, world.a.developer).get("/t/acme-bank/quota/").content.decode()
    assert 'data-flavor="h100-80gb"' in html and "10 (soft)" in html
    assert html.count("<rect") == 30 and ": 2.00 GPU-hours</title>" in html and ": 1.00 GPU-hours</title>" in html


def test_chargeback_per_tenant_and_month_exports_csv_and_the_read_is_audited(gate, world, client, api):
    put_quota(api, world, {"nominal": 2, "borrowing_limit": 2, "gpu_hours_budget": 1, "budget_mode": "soft"})
    number = gate.version()
    billed_run(gate, number, gpu_seconds=Decimal(5400))  # 1.5 GPU-hours against a budget of 1
    sign_in(client, world.platform_admin)
    month = f"{timezone.now():%Y-%m}"
    html = client.get(f"/platform/chargeback/?month={month}").content.decode()
    assert 'data-tenant="acme-bank"' in html
    response = client.get(f"/platform/chargeback/?month={month}&format=csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{"month": month, "tenant": "acme-bank", "flavor": "h100-80gb", "gpu_hours": "1.500",
                     "weighted_gpu_hours": "1.500", "gpu_hours_budget": "1", "budget_mode": "soft",
                     "overrun_gpu_hours": "0.500"}]
    reads = AuditEvent.objects.using("owner").filter(action="platform.chargeback_read")
    assert [e.data["format"] for e in reads.order_by("id")] == ["html", "csv"]
    nodes = client.get("/platform/nodes/")
    assert nodes.status_code == 200 and "No runner node has registered" in nodes.content.decode()


@pytest.mark.browser
@pytest.mark.worker
def test_journey_a_developer_runs_a_workflow_and_watches_it_finish(gate, world, live_server, open_page,
                                                                    celery_worker, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    number = gate.version(spec_changes=spec_with([sh("train", "echo epoch 1; sleep 1; echo epoch 2")]))
    page = open_page()
    _sign_in(page, live_server.url, world.a.developer)
    page.goto(f"{live_server.url}/t/acme-bank/runs/")
    form = page.locator("#run-request")
    form.locator("#id_workflow").select_option("fraud-detector")
    form.locator("#id_version").fill(str(number))
    form.locator("#id_stage").select_option("development")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    page.wait_for_function("document.getElementById('run-state').textContent === 'succeeded'", timeout=60000)
    page.wait_for_function("document.getElementById('run').dataset.done === 'true'", timeout=10000)
    assert "epoch 2" in page.locator("#log").inner_text()
    assert page.locator('#steps tr[data-step="train"]').inner_text().split("\t")[1].strip() == "succeeded"
    assert page.locator("#run-devices").inner_text() == "0, 1"
    wait_for(lambda: UsageEntry.objects.using("owner").exists(), message="the run to be billed")
    page.goto(f"{live_server.url}/t/acme-bank/quota/")
    used = Decimal(page.locator('#quota tr[data-flavor="h100-80gb"] td.used').inner_text())
    assert used > 0
