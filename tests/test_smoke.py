import pytest

pytestmark = pytest.mark.embedded


def test_member_lists_own_tenant_members(world, api):
    response = api(world.a.developer).get(f"/api/v1/tenants/{world.a.tenant.slug}/members/")
    assert response.status_code == 200, response.content
    assert {m["username"] for m in response.json()["results"]} == {
        world.a.developer.username, world.a.approver.username, world.a.approver2.username,
        world.a.auditor.username, world.a.admin.username, world.a.admin2.username}
