"""Workflow spec validation: every problem has a JSON path and a plain reason."""

import json

import pytest

from workflows.spec import SPEC_MAX_BYTES, SpecInvalid, parse, validate


FLAVORS = {"h100-80gb", "h100-1g.10gb"}
DIGEST = "sha256:" + "ab" * 32

GOOD = f"""
name: fraud-detector
description: Fraud model fine-tune
base_model: {{name: llama-3-8b, digest: "{DIGEST}"}}
parameters: {{learning_rate: 0.0002, epochs: 3, tag: nightly}}
inputs:
  - {{name: transactions, digest: "{DIGEST}", region: eu, uri: "s3://bank-data/tx.parquet"}}
steps:
  - name: prepare
    command: [python, prepare.py]
    timeout_seconds: 600
  - name: train
    command: [python, train.py, --epochs, "3"]
    env: {{WANDB_MODE: offline}}
    gpu: {{flavor: h100-80gb, count: 2}}
    retries: 1
    depends_on: [prepare]
  - name: evaluate
    image: registry.bank.example/eval:1.4
    gpu: {{flavor: h100-1g.10gb, count: 1}}
    depends_on: [train]
outputs:
  - {{name: model, kind: model, path: out/model}}
  - {{name: scores, kind: metrics}}
"""


def problems(text, flavors=FLAVORS):
    with pytest.raises(SpecInvalid) as caught:
        validate(parse(text), known_flavors=flavors)
    return [(p.path, p.reason) for p in caught.value.problems]


def spec_with(**step_changes):
    document = parse(GOOD)
    document["steps"][1].update(step_changes)
    return json.dumps(document)


def test_a_good_spec_validates_from_yaml_and_from_json():
    document = validate(parse(GOOD), known_flavors=FLAVORS)
    assert [step["name"] for step in document["steps"]] == ["prepare", "train", "evaluate"]
    assert validate(parse(json.dumps(document)), known_flavors=FLAVORS) == document


def test_unknown_keys_are_named_with_their_path():
    assert problems(spec_with(gpus=2)) == [
        ("$.steps[1].gpus", "unknown key 'gpus'; allowed: command, depends_on, env, gpu, image, name, network, retries, timeout_seconds")]
    document = parse(GOOD)
    document["schedule"] = "nightly"
    assert problems(json.dumps(document))[0][0] == "$.schedule"


def test_a_cycle_is_named():
    document = parse(GOOD)
    document["steps"][0]["depends_on"] = ["evaluate"]
    assert problems(json.dumps(document)) == [
        ("$.steps[0].depends_on", "dependency cycle: prepare -> evaluate -> train -> prepare")]


def test_unknown_dependency_and_self_dependency():
    assert problems(spec_with(depends_on=["prepare", "deploy"])) == [
        ("$.steps[1].depends_on[1]", "depends on unknown step 'deploy'")]
    assert problems(spec_with(depends_on=["train"])) == [
        ("$.steps[1].depends_on[0]", "a step cannot depend on itself")]


def test_duplicate_step_names():
    document = parse(GOOD)
    document["steps"][2]["name"] = "prepare"
    document["steps"][2]["depends_on"] = []
    assert problems(json.dumps(document)) == [("$.steps[2].name", "duplicate step name 'prepare' (also $.steps[0])")]


@pytest.mark.parametrize("count, reason", [
    (-1, "must be at least 0"),
    (1.5, "must be a whole number"),
    ("2", "'2' is not of type 'integer'"),
])
def test_gpu_count_must_be_a_whole_non_negative_number(count, reason):
    assert problems(spec_with(gpu={"flavor": "h100-80gb", "count": count})) == [("$.steps[1].gpu.count", reason)]


def test_unknown_gpu_flavor_lists_the_known_ones():
    assert problems(spec_with(gpu={"flavor": "a100-40gb", "count": 1})) == [
        ("$.steps[1].gpu.flavor", "unknown GPU flavor 'a100-40gb' (known: h100-1g.10gb, h100-80gb)")]


@pytest.mark.parametrize("digest", ["sha256:XYZ", "md5:" + "a" * 32, "sha256:" + "A" * 64, "ab" * 32])
def test_malformed_digest(digest):
    document = parse(GOOD)
    document["inputs"][0]["digest"] = digest
    assert problems(json.dumps(document)) == [
        ("$.inputs[0].digest", "a digest is 'sha256:' followed by 64 lowercase hex digits")]


def test_a_spec_over_the_size_limit_is_refused_before_parsing():
    text = GOOD + "#" + "x" * SPEC_MAX_BYTES
    assert problems(text) == [("$", f"the spec is {len(text.encode())} bytes; the limit is {SPEC_MAX_BYTES}")]


def test_a_step_needs_a_command_or_an_image():
    document = parse(GOOD)
    del document["steps"][0]["command"]
    assert problems(json.dumps(document)) == [("$.steps[0]", "a step needs a 'command' or an 'image'")]


def test_yaml_errors_give_line_and_column():
    [(path, reason)] = problems("name: w\nsteps:\n  - name: a\n    command: [x\n")
    assert path == "$" and reason.startswith("not valid YAML or JSON (line ")


def test_yaml_aliases_are_refused():
    text = "name: w\nsteps:\n  - &s {name: a, command: [x]}\n  - *s\n"
    [(path, reason)] = problems(text)
    assert path == "$" and "aliases are not allowed" in reason


@pytest.mark.parametrize("text", ["[]", "just a string", "", "42"])
def test_a_spec_must_be_a_mapping(text):
    assert problems(text) == [("$", "the spec must be a mapping with a 'name' and a 'steps' list")]


def test_every_problem_is_reported_at_once():
    document = parse(GOOD)
    document["steps"][1]["gpu"] = {"flavor": "nope", "count": 1}
    document["steps"][2]["depends_on"] = ["ghost"]
    assert {path for path, _ in problems(json.dumps(document))} == {"$.steps[1].gpu.flavor", "$.steps[2].depends_on[0]"}


def test_the_published_json_schema_matches_the_validator():
    from pathlib import Path

    from workflows.spec import SCHEMA

    published = json.loads((Path(__file__).resolve().parent.parent / "docs" / "workflow-spec.schema.json").read_text())
    assert published == SCHEMA


def test_json_text_is_read_as_json_not_yaml():
    document = parse('{"name": "w", "parameters": {"big": 1e+20}, "steps": [{"name": "a", "command": ["x"]}]}')
    assert document["parameters"]["big"] == 1e20


def test_json_nan_is_refused():
    [(path, reason)] = problems('{"name": "w", "parameters": {"x": NaN}, "steps": [{"name": "a", "command": ["x"]}]}')
    assert path == "$" and "NaN is not a number JSON allows" in reason
