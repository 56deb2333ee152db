"""The commands that talk to the server: workflow push and versions, artifact push."""

import re
import sys
from pathlib import Path

from . import local_files, uploads
from .client import Api
from .client import path as api_path
from .errors import NOT_VERIFIED, OK, CliError, input_error, usage_error
from .output import Output
from .signing_commands import signed_bundle

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # fullmatch: the whole value
PAGE_SIZE = 500  # the API's largest page
VERSION_SUMMARY = ("workflow", "number", "digest", "artifacts", "created_by", "created_at")


def tenant_of(api: Api, override: str | None) -> str:
    """--tenant, or the tenant the token is scoped to."""
    if override:
        return override
    token = api.get("/api/v1/me").get("token") or {}
    if not token.get("tenant"):
        raise usage_error("The credential in NEOCLOUD_TOKEN names no tenant; pass --tenant.")
    return token["tenant"]


# workflow push -------------------------------------------------------------------------------


def workflow_push(args, out: Output) -> int:
    raw = local_files.read_bytes(args.spec, "spec file")
    document = checked_spec(raw, args.spec)
    digests = checked_digests(args.artifact)
    api = Api.from_environment(args.url)
    tenant = tenant_of(api, args.tenant)
    status, version = api.call("POST", api_path("tenants", tenant, "workflows", document["name"], "versions"),
                               json={"spec": raw.decode("utf-8"), "artifacts": digests})
    created = status == 201
    summary = {key: version.get(key) for key in VERSION_SUMMARY}
    name, number, digest = summary["workflow"], summary["number"], summary["digest"]
    line = (f"Registered {name} version {number} ({digest}) in {tenant}." if created
            else f"{name} version {number} already exists with this content ({digest}); nothing new was registered.")
    out.result({"tenant": tenant, "created": created, **summary}, [line])
    return OK


def checked_spec(raw: bytes, source: str) -> dict:
    """The parsed spec, validated locally so that problems show before any call.

    GPU flavors are left to the server, which knows which are active."""
    from workflows.spec import SpecInvalid, parse, validate

    try:
        document = parse(raw)
        validate(document, known_flavors=_flavors_named(document))
    except SpecInvalid as exc:
        fields = {}
        for problem in exc.problems:
            fields.setdefault(problem.path, []).append(problem.reason)
        first = exc.problems[0]
        details = [f"{problem.path}: {problem.reason}" for problem in exc.problems[1:]]
        raise input_error(f"The spec {source} is invalid at {first.path}: {first.reason}.", code="invalid_spec",
                          details=details, fields=fields) from None
    return document


def _flavors_named(document: dict) -> set[str]:
    steps = document.get("steps") if isinstance(document.get("steps"), list) else []
    gpus = [step.get("gpu") for step in steps if isinstance(step, dict)]
    return {gpu["flavor"] for gpu in gpus if isinstance(gpu, dict) and isinstance(gpu.get("flavor"), str)}


def checked_digests(digests: list[str]) -> list[str]:
    for digest in digests:
        if not DIGEST.fullmatch(digest):
            raise input_error(f"The artifact digest {digest!r} is not 'sha256:' followed by 64 lowercase hex digits.")
    return list(digests)


# workflow versions ---------------------------------------------------------------------------

VERSION_COLUMNS = ("number", "digest", "created_by", "created_at")


def workflow_versions(args, out: Output) -> int:
    api = Api.from_environment(args.url)
    tenant = tenant_of(api, args.tenant)
    versions = list_all(api, api_path("tenants", tenant, "workflows", args.name, "versions"))
    rows = [{column: version.get(column) for column in VERSION_COLUMNS} for version in versions]
    lines = table(rows, VERSION_COLUMNS) if rows else [f"{args.name} has no versions."]
    out.result({"tenant": tenant, "workflow": args.name, "versions": rows}, lines)
    return OK


def list_all(api: Api, list_path: str) -> list[dict]:
    items, offset = [], 0
    while True:
        page = api.get(list_path, limit=PAGE_SIZE, offset=offset)
        items += page.get("results", [])
        if not page.get("next"):
            return items
        offset += PAGE_SIZE


def table(rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    """Left-aligned columns under upper-case headings."""
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}

    def line(values) -> str:
        return "  ".join(str(value).ljust(widths[column]) for column, value in zip(columns, values)).rstrip()

    return [line(column.upper() for column in columns), *(line(row[column] for column in columns) for row in rows)]


# artifact push -------------------------------------------------------------------------------


def artifact_push(args, out: Output) -> int:
    path = local_files.existing_path(args.path)
    _check_sign_options(args)
    # Signed before anything is sent: a bad key fails fast, offline.
    bundle = signed_bundle(path, args) if args.sign else None
    api = Api.from_environment(args.url)
    progress = (args.progress or sys.stderr.isatty()) and not out.json_mode
    tenant, status, artifact = _upload_artifact(api, path, args, progress)
    data = {"tenant": tenant, "created": status == 201, "artifact": artifact}
    lines = [_upload_line(tenant, artifact, created=status == 201)]
    if bundle is None:
        out.result(data, lines)
        return OK
    data["signature"] = verification = _submit_signature(api, tenant, args.name, artifact["digest"], bundle)
    lines.append(f"The server verified the signature: {verification.get('reason')}" if verification.get("verified")
                 else f"The server did not verify the signature: {verification.get('reason')}")
    out.result(data, lines)
    return OK if verification.get("verified") else NOT_VERIFIED


def _upload_artifact(api: Api, path: Path, args, progress: bool) -> tuple[str, int, dict]:
    """Pack and hash locally first (local problems show before any call), then upload.

    Returns (tenant, HTTP status, the server's artifact record)."""
    with uploads.upload_source(path) as (source, content_type):
        digest = uploads.sha256_of(source, progress=progress)
        tenant = tenant_of(api, args.tenant)
        region = args.region or api.get(api_path("tenants", tenant))["jurisdiction"]
        with uploads.upload_body(source, progress=progress) as (body, size):
            status, artifact = api.call(
                "PUT", api_path("tenants", tenant, "artifacts", args.name),
                params={"digest": digest, "kind": args.kind, "region": region}, data=body,
                headers={"Content-Type": content_type, "Content-Length": str(size)})
    return tenant, status, artifact


def _check_sign_options(args) -> None:
    if args.sign and not args.key:
        raise usage_error("--sign needs --key: the private key to sign with.")
    if not args.sign and (args.key or args.cert or args.chain or args.password_env):
        raise usage_error("--key, --cert, --chain and --password-env are for signing: add --sign.")


def _upload_line(tenant: str, artifact: dict, *, created: bool) -> str:
    what = f"{artifact.get('name')} ({artifact.get('kind')}, {human_size(artifact.get('size_bytes') or 0)})"
    if created:
        return f"Uploaded {what} to {tenant} in region {artifact.get('region')}: {artifact.get('digest')}."
    return f"{what} was already stored as {artifact.get('digest')}; nothing new was kept."


def _submit_signature(api: Api, tenant: str, name: str, digest: str, bundle: str) -> dict:
    """The server's verification of the bundle; a 422 is an answer (not verified), not a failure."""
    try:
        _, body = api.call("POST", api_path("tenants", tenant, "artifacts", name, digest, "signatures"),
                           data=bundle.encode("utf-8"), headers={"Content-Type": "application/json"})
    except CliError as error:
        if error.code != "signature_not_verified":
            raise
        return error.body.get("verification") or {"verified": False, "reason": error.detail}
    return body.get("verification") or {"verified": False, "reason": "The server's answer holds no verification."}


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = float(size), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"
