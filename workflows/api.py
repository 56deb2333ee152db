"""Workflow API: thin views over the choke point and the domain functions."""

from functools import cached_property

from django.conf import settings
from django.db.models import Max, Prefetch
from django.http import FileResponse, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from audit.keys import platform_keyring
from policies.tenant_api import ProposalSerializer, updated
from tenants.api import TenantScopedAPIView
from tenants.errors import Invalid, NotFound
from tenants.schema import ATTESTATION_UNAVAILABLE

from . import blobs, promotions, services, trust
from .diff import version_diff
from .models import (
    Approval,
    Artifact,
    ArtifactLayout,
    Promotion,
    PromotionOverride,
    Signature,
    StagePointer,
    Workflow,
    WorkflowVersion,
)
from .selectors import promotion_by_id, version_named
from .serializers import (
    ArtifactSerializer,
    AssembleSerializer,
    BlobSerializer,
    OverrideRequestSerializer,
    OverrideSerializer,
    PromotionRequestSerializer,
    PromotionSerializer,
    ReverificationRefusedSerializer,
    ReverificationSerializer,
    SignatureAttachedSerializer,
    SignatureRefusedSerializer,
    SignatureSerializer,
    StepUpSerializer,
    TrustConfigurationSerializer,
    VerificationSerializer,
    VersionRegisterSerializer,
    VersionSerializer,
    WorkflowSerializer,
)
from .store import get_store


class _Workflows:
    model = Workflow
    serializer_class = WorkflowSerializer

    def get_queryset(self):
        return super().get_queryset().annotate(latest_number=Max("versions__number")).prefetch_related(
            Prefetch("stage_pointers", queryset=StagePointer.objects.select_related("version")))


class WorkflowList(_Workflows, TenantScopedAPIView, generics.ListAPIView):
    pass


class WorkflowDetail(_Workflows, TenantScopedAPIView, generics.RetrieveAPIView):
    lookup_field = "name"
    lookup_url_kwarg = "workflow"


class _InWorkflow(TenantScopedAPIView):
    """Base for routes under /workflows/<workflow>/: the workflow is found through the choke point."""

    @cached_property
    def workflow(self) -> Workflow:
        workflow = Workflow.objects.restrict(self.request.user, "view").filter(
            tenant=self.tenant, name=self.kwargs["workflow"]).first()
        if workflow is None:
            raise NotFound("No such workflow.")
        return workflow

    def version(self, number) -> WorkflowVersion:
        version = WorkflowVersion.objects.restrict(self.request.user, "view").filter(
            workflow=self.workflow, number=number).select_related("workflow", "created_by").first()
        if version is None:
            raise NotFound(f"No version {number} of this workflow.")
        return version


class VersionList(_InWorkflow, generics.ListAPIView):
    """Versions of a workflow, newest first. POST registers a version of the workflow the spec
    names (which must match the path); the same content returns the existing version with 200."""

    model = WorkflowVersion
    serializer_class = VersionSerializer

    def get_queryset(self):
        if self.tenant is None:
            return WorkflowVersion.objects.none()
        return super().get_queryset().filter(workflow=self.workflow).select_related("workflow", "created_by")

    @extend_schema(request=VersionRegisterSerializer, responses={201: VersionSerializer, 200: VersionSerializer})
    def post(self, request, tenant, workflow):
        serializer = VersionRegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version, created = services.workflow_version_register(
            actor=request.user, tenant=self.tenant, spec=serializer.validated_data["spec"],
            artifact_digests=serializer.validated_data["artifacts"], workflow_name=workflow)
        return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class VersionDetail(_InWorkflow):
    serializer_class = VersionSerializer

    def get(self, request, tenant, workflow, number):
        return Response(VersionSerializer(self.version(number)).data)


class VersionDiff(_InWorkflow):
    """What changed from another version (by default the one before) to this one."""

    @extend_schema(parameters=[OpenApiParameter("against", int, description="The version to compare with; "
                                                "default: the previous one.")], responses={200: dict})
    def get(self, request, tenant, workflow, number):
        against = request.query_params.get("against")
        if against is not None and not against.isdigit():
            raise Invalid("Give the version to compare with as ?against=<number>.", field="against")
        version = self.version(number)
        if against is not None:
            base = self.version(int(against))
        else:
            base = version.workflow.versions.filter(number__lt=number).order_by("-number").first()
        return Response(version_diff(base, version))


class ArtifactList(TenantScopedAPIView, generics.ListAPIView):
    model = Artifact
    serializer_class = ArtifactSerializer
    filterset_fields = ["name", "kind", "digest"]

    def get_queryset(self):
        return super().get_queryset().select_related("created_by")


class ArtifactUpload(TenantScopedAPIView):
    """``PUT`` the bytes of an artifact (a file, or a model directory as a tar archive) with
    ``?digest=sha256:…&kind=model&region=eu`` and a Content-Length. The server streams them
    to the store, hashes them, and refuses a digest mismatch, a truncated upload or one over
    the size limit. Identical bytes under the same name answer 200 with the existing record."""

    http_method_names = ["get", "put", "post", "head", "options"]
    model = Artifact
    serializer_class = ArtifactSerializer
    pagination_class = None  # GET: every stored version of one name, as a plain array

    @extend_schema(operation_id="tenants_artifacts_by_name", responses=ArtifactSerializer(many=True))
    def get(self, request, tenant, name):
        with self.tenant_reads():  # this view runs outside the request's transaction (for PUT)
            artifacts = list(Artifact.objects.restrict(request.user, "view").filter(
                tenant=self.tenant, name=name).select_related("created_by"))
        if not artifacts:
            raise NotFound("No such artifact.")
        return Response(ArtifactSerializer(artifacts, many=True).data)

    @extend_schema(request={"application/octet-stream": bytes}, responses={201: ArtifactSerializer, 200: ArtifactSerializer},
                   parameters=[OpenApiParameter("digest", str, required=True), OpenApiParameter("kind", str, required=True),
                               OpenApiParameter("region", str, required=True)])
    def put(self, request, tenant, name):
        length = request.META.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            raise Invalid("Send a Content-Length with the upload.", field="content", code="length_required")
        params = request.query_params
        is_archive = request.content_type == "application/x-tar"
        artifact, created = services.artifact_upload(
            actor=request.user, tenant=self.tenant, name=name, kind=params.get("kind", ""),
            region=params.get("region", ""), digest=params.get("digest", ""), declared_size=int(length),
            stream=request._request, layout=ArtifactLayout.DIRECTORY if is_archive else ArtifactLayout.FILE)
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=AssembleSerializer, responses={201: ArtifactSerializer, 200: ArtifactSerializer},
                   parameters=[OpenApiParameter("digest", str, required=True), OpenApiParameter("kind", str, required=True),
                               OpenApiParameter("region", str, required=True)])
    def post(self, request, tenant, name):
        """Assemble a model directory from files uploaded one by one; ``digest`` is the digest
        of its deterministic archive (``neocloud`` computes it)."""
        serializer = AssembleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        params = request.query_params
        artifact, created = blobs.artifact_assemble(
            actor=request.user, tenant=self.tenant, name=name, kind=params.get("kind", ""),
            region=params.get("region", ""), digest=params.get("digest", ""), files=serializer.validated_data["files"])
        return Response(ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class BlobUpload(TenantScopedAPIView):
    """``PUT`` one file of a model directory (raw bytes, with a Content-Length); it is kept
    for this tenant until a directory is assembled from it."""

    http_method_names = ["put", "options"]

    @extend_schema(request={"application/octet-stream": bytes}, responses={201: BlobSerializer, 200: BlobSerializer})
    def put(self, request, tenant, digest):
        length = request.META.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            raise Invalid("Send a Content-Length with the upload.", field="content", code="length_required")
        blob, created = blobs.blob_upload(actor=request.user, tenant=self.tenant, digest=digest,
                                          declared_size=int(length), stream=request._request)
        return Response({"digest": blob.digest, "size_bytes": blob.size_bytes},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class _OneArtifact(TenantScopedAPIView):
    model = Artifact

    def artifact(self) -> Artifact:
        with self.tenant_reads():  # some of these views run outside the request's transaction
            artifact = Artifact.objects.restrict(self.request.user, "view").filter(
                tenant=self.tenant, name=self.kwargs["name"], digest=self.kwargs["digest"],
                stored_at__isnull=False).first()
        if artifact is None:
            raise NotFound("No such artifact.")
        return artifact


class ArtifactDetail(_OneArtifact):
    """One artifact with its signatures and their latest verification."""

    serializer_class = ArtifactSerializer

    def get(self, request, tenant, name, digest):
        artifact = self.artifact()
        signatures = Signature.objects.restrict(request.user, "view").filter(artifact=artifact).select_related(
            "uploaded_by").prefetch_related("verifications")
        return Response({**ArtifactSerializer(artifact).data,
                         "signatures": SignatureSerializer(signatures, many=True).data})


class SignatureList(_OneArtifact):
    """POST a Sigstore bundle (the JSON document as the body) to attach and verify it: 201
    when it verifies, 422 ``signature_not_verified`` with the reason when it does not (the
    bundle and the failed verification are kept on record either way)."""

    serializer_class = SignatureSerializer
    pagination_class = None

    @extend_schema(responses=SignatureSerializer(many=True))
    def get(self, request, tenant, name, digest):
        with self.tenant_reads():
            signatures = list(Signature.objects.restrict(request.user, "view").filter(artifact=self.artifact())
                              .select_related("uploaded_by").prefetch_related("verifications"))
        return Response(SignatureSerializer(signatures, many=True).data)

    @extend_schema(request={"application/json": dict},
                   responses={201: SignatureAttachedSerializer, 422: SignatureRefusedSerializer})
    def post(self, request, tenant, name, digest):
        # Read one byte past the limit, never more: the domain function refuses what is over it.
        bundle = request._request.read(settings.SIGNATURE_BUNDLE_MAX_BYTES + 1)
        verification = trust.signature_attach(actor=request.user, tenant=self.tenant, artifact=self.artifact(),
                                              bundle=bundle)
        return _verification_response(verification, status.HTTP_201_CREATED)


class ArtifactVerify(_OneArtifact):
    """Verify every signature of the artifact again; 200 if any verifies, else 422."""

    serializer_class = VerificationSerializer

    @extend_schema(request=None, responses={200: ReverificationSerializer, 422: ReverificationRefusedSerializer})
    def post(self, request, tenant, name, digest):
        verifications = trust.artifact_verify(actor=request.user, tenant=self.tenant, artifact=self.artifact())
        body = {"verified": any(v.verified for v in verifications),
                "verifications": VerificationSerializer(verifications, many=True).data}
        if not body["verified"]:
            reason = verifications[0].reason if verifications else "The artifact has no signature."
            body = {"code": "signature_not_verified", "detail": reason, **body}
        return Response(body, status=status.HTTP_200_OK if body["verified"] else 422)


def _verification_response(verification, success_status):
    body = {"verification": VerificationSerializer(verification).data}
    if verification.verified:
        return Response(body, status=success_status)
    return Response({"code": "signature_not_verified", "detail": verification.reason, **body}, status=422)


class TrustConfigurationView(TenantScopedAPIView):
    """The tenant's trust configuration; tenant admins replace any part of it with PUT. A change
    that trusts anything more answers 202 with a proposal a second tenant admin confirms."""

    serializer_class = TrustConfigurationSerializer
    http_method_names = ["get", "put", "head", "options"]

    def get(self, request, tenant):
        return Response(TrustConfigurationSerializer(trust.trust_config_of(self.tenant)).data)

    @extend_schema(responses={200: TrustConfigurationSerializer, 202: ProposalSerializer})
    def put(self, request, tenant):
        serializer = TrustConfigurationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = trust.trust_config_update(actor=request.user, tenant=self.tenant, **serializer.validated_data)
        return updated(result, TrustConfigurationSerializer)


class ArtifactContent(_OneArtifact):
    """Download an artifact's bytes (tenant-scoped; the digest is in the ETag)."""

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, tenant, name, digest):
        artifact = self.artifact()
        response = FileResponse(get_store().open(artifact.digest), as_attachment=True, filename=artifact.name,
                                content_type="application/octet-stream")
        response["ETag"] = f'"{artifact.digest}"'
        response["Content-Length"] = str(artifact.size_bytes)
        return response


# Promotions ------------------------------------------------------------------------------


class _Promotions(TenantScopedAPIView):
    model = Promotion
    serializer_class = PromotionSerializer

    def get_queryset(self):
        return super().get_queryset().select_related(
            "tenant", "workflow", "version__created_by", "requested_by", "previous_version",
            "metrics_artifact").prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related("user")),
            Prefetch("overrides", queryset=PromotionOverride.objects.select_related("requested_by", "confirmed_by")))

    def promotion(self) -> Promotion:
        with self.tenant_reads():  # the step-up views run outside the request's transaction
            return promotion_by_id(actor=self.request.user, tenant=self.tenant,
                                              public_id=self.kwargs["promotion"])

    def answer(self, promotion, status_code=status.HTTP_200_OK, *, judged_now=False):
        """The promotion as stored; with ``judged_now``, an open request's approvals are judged
        against its facts as they are now, so one whose facts changed shows void at once."""
        with self.tenant_reads():
            bindings = {promotion.pk: promotions.fresh_binding(promotion)} if judged_now and promotion.is_open else {}
            fresh = self.get_queryset().get(pk=promotion.pk)
            return Response(PromotionSerializer(fresh, context={"fresh_bindings": bindings}).data, status=status_code)


class PromotionList(_Promotions, generics.ListAPIView):
    """Promotion requests, newest first, each open one's approvals judged against its facts as
    they are now. POST asks to move a version into a stage: the policy is evaluated at once and
    the answer shows the state it left the request in."""

    filterset_fields = ["state", "stage", "kind"]

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        bindings = promotions.fresh_bindings([promotion for promotion in page if promotion.is_open])
        return self.get_paginated_response(PromotionSerializer(page, many=True,
                                                               context={"fresh_bindings": bindings}).data)

    @extend_schema(request=PromotionRequestSerializer, responses={201: PromotionSerializer, **ATTESTATION_UNAVAILABLE})
    def post(self, request, tenant):
        serializer = PromotionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = version_named(request.user, self.tenant, data["workflow"], data["version"])
        if version is None:
            raise NotFound(f"No version {data['version']} of workflow {data['workflow']}.")
        promotion = promotions.promotion_request(
            actor=request.user, tenant=self.tenant, version=version, stage=data["stage"], kind=data["kind"],
            justification=data["justification"], metrics_artifact=data["metrics_artifact"])
        return self.answer(promotion, status.HTTP_201_CREATED)


class PromotionDetail(_Promotions):
    def get(self, request, tenant, promotion):
        return self.answer(self.promotion(), judged_now=True)


class _PromotionDecision(_Promotions):
    verdict = ""

    @extend_schema(request=StepUpSerializer, responses={200: PromotionSerializer, **ATTESTATION_UNAVAILABLE})
    def post(self, request, tenant, promotion):
        serializer = StepUpSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        common = {"actor": request.user, "promotion": self.promotion(), "otp_token": data["otp_token"],
                  "comment": data["comment"], "via": "api"}
        if self.verdict == "approve":
            result = promotions.promotion_approve(**common, binding_digest=data["binding_digest"] or None)
        else:
            result = promotions.promotion_reject(**common)
        return self.answer(result)


class PromotionApprove(_PromotionDecision):
    """Approve with a fresh one-time password (step-up). People only: a service-account token
    is refused. The approval binds to the version digest, the policy input and its revision."""

    verdict = "approve"


class PromotionReject(_PromotionDecision):
    """Reject with a fresh one-time password and a reason; the request closes."""

    verdict = "reject"


class PromotionWithdraw(_Promotions):
    @extend_schema(request=None, responses={200: PromotionSerializer})
    def post(self, request, tenant, promotion):
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        return self.answer(promotions.promotion_withdraw(actor=request.user, promotion=self.promotion(),
                                                         reason=str(reason)[:2000]))


class PromotionRecheck(_Promotions):
    @extend_schema(request=None, responses={200: PromotionSerializer, **ATTESTATION_UNAVAILABLE})
    def post(self, request, tenant, promotion):
        return self.answer(promotions.promotion_recheck(actor=request.user, promotion=self.promotion()))


class PromotionOverrideList(_Promotions):
    """A tenant admin asks to override one soft-mandatory violation, with a justification."""

    @extend_schema(request=OverrideRequestSerializer, responses={201: OverrideSerializer})
    def post(self, request, tenant, promotion):
        serializer = OverrideRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        override = promotions.promotion_override_request(actor=request.user, promotion=self.promotion(),
                                                         **serializer.validated_data)
        return Response(OverrideSerializer(override).data, status=status.HTTP_201_CREATED)


class PromotionOverrideConfirm(_Promotions):
    """A second person confirms an override with a fresh one-time password."""

    @extend_schema(request=StepUpSerializer, responses={200: PromotionSerializer, **ATTESTATION_UNAVAILABLE})
    def post(self, request, tenant, promotion, override):
        serializer = StepUpSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        subject = self.promotion()
        with self.tenant_reads():
            found = PromotionOverride.objects.restrict(request.user, "view").filter(
                promotion=subject, pk=override).select_related("promotion__tenant").first()
        if found is None:
            raise NotFound("No such override.")
        result = promotions.promotion_override_confirm(actor=request.user, override=found,
                                                       otp_token=serializer.validated_data["otp_token"])
        return self.answer(result)


class PromotionAttestation(_Promotions):
    """The signed promotion attestation: a Sigstore bundle whose DSSE envelope holds an in-toto
    statement. Verify it offline against ``GET /api/v1/platform/keys``."""

    @extend_schema(responses={200: dict})
    def get(self, request, tenant, promotion):
        found = self.promotion()
        if not found.attestation:
            raise NotFound("This promotion has no attestation: it has not been promoted.")
        response = HttpResponse(found.attestation, content_type="application/json")
        response["ETag"] = f'"{found.attestation_digest}"'
        return response


class PlatformKeys(generics.GenericAPIView):
    """The platform's public signing keys by key id (retired keys included: old attestations
    keep verifying)."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        keys = platform_keyring().keys()
        return Response({key.kid: {"public_key": key.public_pem, "created_at": key.created_at,
                                   "retired_at": key.retired_at} for key in keys})
