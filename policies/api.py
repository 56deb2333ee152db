"""Platform-scope policy API: the OPA bundle, and what-if evaluation (which stores nothing)."""

import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse
from django.utils.cache import parse_etags
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers

from tenants import strict
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.access import is_platform_admin
from tenants.authentication import BearerTokenAuthentication, VerifiedSessionAuthentication
from tenants.errors import Forbidden

from . import baseline
from .bundle import PolicySource, build_bundle
from .engines import DEFAULT_ENTRYPOINT
from .models import BaselineRevision
from .whatif import policy_evaluate

BUNDLE_PULL = "policy-bundle-token"  # request.auth of an OPA server that showed POLICY_BUNDLE_TOKEN


class BundleTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <POLICY_BUNDLE_TOKEN>``: an OPA server pulling bundles. It acts
    as no user; any other bearer falls through to the API-token check (which refuses it)."""

    def authenticate(self, request):
        expected = settings.POLICY_BUNDLE_TOKEN
        scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if not expected or scheme.lower() != "bearer":
            return None
        if hmac.compare_digest(credentials.strip().encode(), expected.encode()):
            return AnonymousUser(), BUNDLE_PULL
        return None

    def authenticate_header(self, request):
        return "Bearer"


class BundleTokenScheme(OpenApiAuthenticationExtension):
    target_class = "policies.api.BundleTokenAuthentication"
    name = "policyBundleToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "POLICY_BUNDLE_TOKEN: what an OPA server pulls the policy bundle with."}


class PullsBundles(BasePermission):
    def has_permission(self, request, view):
        return request.auth == BUNDLE_PULL or bool(request.user and request.user.is_authenticated)


def _etag_matches(header: str, etag: str) -> bool:
    # GET compares weakly (RFC 9110): W/"x" matches "x".
    tags = [tag.removeprefix("W/") for tag in parse_etags(header)]
    return "*" in tags or etag in tags


class PolicyBundleView(APIView):
    """The OPA bundle of the platform policies, for OPA's bundle service (polls with If-None-Match)."""

    authentication_classes = [BundleTokenAuthentication, BearerTokenAuthentication, VerifiedSessionAuthentication]
    permission_classes = [PullsBundles]

    @extend_schema(responses={(200, "application/gzip"): OpenApiTypes.BINARY,
                              304: OpenApiResponse(description="The bundle has not changed since that ETag.")})
    def get(self, request):
        if request.auth != BUNDLE_PULL and not is_platform_admin(request.user):
            raise Forbidden("Only a platform admin or the bundle token may pull the policy bundle.")
        source = PolicySource.load()
        etag = f'"{source.revision}"'
        if _etag_matches(request.META.get("HTTP_IF_NONE_MATCH", ""), etag):
            response = HttpResponse(status=304)
        else:
            response = HttpResponse(build_bundle(source), content_type="application/gzip")
        response["ETag"] = etag
        return response


class EvaluateSerializer(serializers.Serializer):
    input = serializers.JSONField()
    entrypoint = strict.CharField(required=False, default=DEFAULT_ENTRYPOINT, max_length=200)
    policy = serializers.DictField(child=strict.CharField(allow_blank=True, trim_whitespace=False),
                                   required=False, help_text="Candidate modules: path ending in .rego -> source.")


class PolicyEvaluateView(APIView):
    """What-if: the decision the configured (or a candidate) policy would make. Stores nothing."""

    @extend_schema(request=EvaluateSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        serializer = EvaluateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        decision = policy_evaluate(actor=request.user, **serializer.validated_data)
        return Response({**decision.as_dict(), "stored": False})


class BaselineAcceptSerializer(serializers.Serializer):
    revision = strict.CharField(max_length=80)
    otp_token = strict.CharField(max_length=8)


class BaselineRevisionSerializer(serializers.ModelSerializer):
    proposed_by = strict.CharField(source="proposed_by.username", read_only=True, allow_null=True, default=None)
    accepted_by = strict.CharField(source="accepted_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = BaselineRevision
        fields = ["revision", "proposed_by", "proposed_at", "accepted_by", "accepted_at"]
        read_only_fields = fields


class BaselineView(APIView):
    """Platform admins: the baseline revision running now, whether two platform admins have
    accepted it (promotions are decided only under an accepted one), and every revision on
    record. POST proposes the running revision; a second platform admin accepts it."""

    serializer_class = BaselineRevisionSerializer

    @extend_schema(responses=inline_serializer("Baseline", {
        "revision": strict.CharField(), "accepted": serializers.BooleanField(),
        "revisions": BaselineRevisionSerializer(many=True)}))
    def get(self, request):
        revision, accepted, revisions = baseline.baseline_status(actor=request.user)
        return Response({"revision": revision, "accepted": accepted,
                         "revisions": BaselineRevisionSerializer(revisions, many=True).data})

    @extend_schema(request=None, responses={201: BaselineRevisionSerializer})
    def post(self, request):
        proposal = baseline.baseline_propose(actor=request.user)
        return Response(BaselineRevisionSerializer(proposal).data, status=201)


class BaselineAcceptView(APIView):
    serializer_class = BaselineRevisionSerializer

    @extend_schema(request=BaselineAcceptSerializer, responses={200: BaselineRevisionSerializer})
    def post(self, request):
        serializer = BaselineAcceptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        accepted = baseline.baseline_accept(actor=request.user, **serializer.validated_data)
        return Response(BaselineRevisionSerializer(accepted).data)
