"""The API is what its published schema says: every operation, fuzzed.

Each operation of the OpenAPI document that ``/api/v1/schema/`` serves is fed cases that a
pinned, property-based fuzzer (Schemathesis on Hypothesis) derives from the document itself:
valid bodies and parameters, and invalid ones. The answers must hold:

- no server error, whatever was sent;
- a status the operation documents, with the documented content type;
- a body inside the documented response schema;
- no success for a caller of one tenant on another tenant's objects.

Three callers send cases: the first tenant's admin on its own objects (the documented success
shapes), the same admin with generated identifiers, and the second tenant's admin naming the
first tenant's objects, where anything but a refusal is a leak. The cases are derandomised,
so a run is repeatable, and small, so the whole fuzz stays within its share of ``make test``.
"""

import json

import pytest
import schemathesis
from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from neocloud.wsgi import application
from tests.test_cross_tenant import PATH_VALUES, build_scene

# Cases per operation and caller. Small on purpose: the fuzz covers every operation in
# every run, and more examples per operation found nothing new in longer runs.
EXAMPLES = {"own": 20, "generated": 8, "foreign": 8}
PLATFORM_OBJECTS = {"flavor", "hostname"}  # path parameters naming platform-wide objects, not a tenant's


def published_schema(token) -> dict:
    response = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content[:200]
    return json.loads(response.content)


@pytest.fixture(scope="module")
def scene(module_live_db):
    return build_scene()


@pytest.fixture(scope="module")
def schema(scene):
    return schemathesis.openapi.from_dict(published_schema(scene.own_token))


def _operation_ids():
    # Collected from the URL configuration: the schema itself needs the database-backed scene.
    from drf_spectacular.generators import SchemaGenerator

    document = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(f"{method.upper()} {path}" for path, methods in document["paths"].items() for method in methods)


def refused_for_a_stranger(ctx, response, case):
    """No success for one tenant's caller on another tenant's object."""
    assert not 200 <= response.status_code < 300, (
        f"{case.method} {case.formatted_path} answered {response.status_code} to the other tenant's admin")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def own_values(scene, operation) -> dict:
    """The scene's objects for the path; a platform object the scene lacks (a runner) is generated."""
    return {p.name: PATH_VALUES[p.name](scene) for p in operation.path_parameters if p.name in PATH_VALUES}


def fuzz(operation, *, token, path_parameters, generation_modes, checks, examples):
    """Send ``examples`` cases drawn for ``operation`` and check each answer."""
    strategies = [operation.as_strategy(generation_mode=generation, path_parameters=path_parameters)
                  for generation in generation_modes]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def send(case):
        cache.clear()  # throttle counters: the fuzz measures answers, not rate limits
        response = case.call(app=application, headers={"Authorization": f"Bearer {token}"})
        case.validate_response(response, checks=checks)

    send()


@pytest.mark.parametrize("label", _operation_ids())
def test_every_operation_answers_as_its_schema_says(scene, schema, label):
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    tenant_parameters = {p.name for p in operation.path_parameters} - PLATFORM_OBJECTS
    fuzz(operation, token=scene.own_token, path_parameters=own_values(scene, operation),
         generation_modes=both, checks=CHECKS, examples=EXAMPLES["own"])
    if operation.path_parameters:
        fuzz(operation, token=scene.own_token, path_parameters=None,
             generation_modes=both, checks=CHECKS, examples=EXAMPLES["generated"])
    if tenant_parameters:
        fuzz(operation, token=scene.foreign_token, path_parameters=own_values(scene, operation),
             generation_modes=both, checks=[*CHECKS, refused_for_a_stranger], examples=EXAMPLES["foreign"])
