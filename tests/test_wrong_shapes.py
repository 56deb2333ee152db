"""Wrong shapes get a 400 that names the field, on every write endpoint; nothing a client sends
makes a route answer 500.

Every POST, PUT and PATCH of the published OpenAPI schema whose body is JSON is sent, by
someone allowed to call it, bodies where one field at a time holds a value of the wrong JSON
type. The path is filled with the tenant's real objects (the cross-tenant matrix's scene).
"""

import json

import pytest
from django.test import Client

from tests.support.clients import sign_in
from .test_cross_tenant import PATH_VALUES, build_scene

WRONG = {"string": [17, ["a"], {"a": 1}, True], "integer": ["seven", 1.5, [1], {"a": 1}],
         "number": ["seven", [1], {"a": 1}], "boolean": ["yes", [True], {"a": 1}],
         "array": ["a", 17, {"a": 1}], "object": ["a", 17, ["a"]]}


def write_operations():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]

    def resolve(node):
        return components[node["$ref"].split("/")[-1]] if "$ref" in node else node

    for path, operations in sorted(schema["paths"].items()):
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if method not in ("post", "put", "patch") or "application/json" not in content:
                continue
            body = resolve(content["application/json"]["schema"])
            for name, prop in sorted(body.get("properties", {}).items()):
                prop = resolve(prop)
                kind = prop.get("type")
                if prop.get("readOnly") or kind not in WRONG:
                    continue
                yield method.upper(), path, name, kind


OPERATIONS = sorted(set(write_operations()))


@pytest.fixture(scope="module")
def scene(module_live_db):
    from runners.discovery import Discovery, parse_declared
    from runners.services import runner_register

    scene = build_scene()  # holds the h100-80gb flavor the node offers
    runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", region="eu", jurisdiction="eu",
                    discovery=Discovery("declared", parse_declared("0,1")))
    return scene


def fill(path, scene):
    values = {**{name: PATH_VALUES[name](scene) for name in PATH_VALUES}, "hostname": "gpu-eu-1"}
    for name, value in values.items():
        path = path.replace("{" + name + "}", str(value))
    assert "{" not in path, f"{path}: a path parameter the scene cannot fill"
    return path


def test_the_schema_has_write_operations_with_typed_fields():
    assert len(OPERATIONS) > 40
    assert ("POST", "/api/v1/tenants/{tenant}/runs/", "workflow", "string") in OPERATIONS


@pytest.mark.parametrize("method, path, field, kind", OPERATIONS, ids=lambda value: str(value))
def test_a_field_of_the_wrong_type_is_a_400_naming_it(scene, method, path, field, kind):
    from django.core.cache import cache

    cache.clear()  # throttles
    caller = scene.world.platform_admin if not path.startswith("/api/v1/tenants/{tenant}") else scene.world.a.admin
    client = sign_in(Client(), caller)
    for value in WRONG[kind]:
        response = client.generic(method, fill(path, scene), json.dumps({field: value}),
                                  content_type="application/json")
        said = f"{method} {path} with {field}={value!r}: {response.status_code} {response.content[:400]!r}"
        # The caller may not be allowed to act on this object at all (403, as for an approval by
        # someone who is not an approver): that answer comes first. Otherwise the field is named.
        assert response.status_code in (400, 403), said
        assert response["Content-Type"] == "application/json", said
        body = response.json()
        assert body["code"] and body["detail"], said
        if response.status_code == 400:
            named = {key.split(".")[0].split("[")[0] for key in body.get("fields", {})}
            assert field in named, said


def test_every_operation_of_the_schema_documents_the_errors_it_can_answer():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"code", "detail"}
    operations = [(method, operation) for ops in schema["paths"].values() for method, operation in ops.items()]
    assert len(operations) > 60
    for method, operation in operations:
        wanted = {"400", "401", "403", "404", "429"} | ({"409", "413", "415"} if method != "get" else set())
        assert wanted <= set(operation["responses"]), (method, operation["operationId"])
        assert operation["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
