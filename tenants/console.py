"""The web console: sign-in with TOTP, tenants, members, service accounts and tokens."""

import segno
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import Actor, Target, record, record_denial

from . import services
from .access import actor_for, can, is_platform_admin, tenant_for
from .db import bind_rls
from .errors import DomainError, NotFound
from .forms import (
    MemberAddForm,
    MemberRoleForm,
    OTPForm,
    ServiceAccountForm,
    SignInForm,
    TenantCreateForm,
    TokenIssueForm,
)
from .models import ApiToken, Membership, ServiceAccount, Tenant


def _safe_next(request):
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return reverse("home")


def signin_locked_out(request, credentials, *args, **kwargs):
    """django-axes calls this when an address and username have failed too often.

    The sign-in view calls it, and AxesMiddleware calls it again for the same request:
    the refusal is recorded once."""
    username = (credentials or {}).get("username", "") if isinstance(credentials, dict) else ""
    if not getattr(request, "neocloud_lockout_recorded", False):
        request.neocloud_lockout_recorded = True
        record_denial(action="auth.locked_out", actor=Actor.anonymous(username), target=Target("user", username))
    return render(request, "auth/locked_out.html", status=429)


class SignInView(View):
    def get(self, request):
        if request.user.is_authenticated and request.user.is_verified():
            return redirect("home")
        return render(request, "auth/login.html", {"form": SignInForm(), "next": request.GET.get("next", "")})

    def post(self, request):
        form = SignInForm(request.POST)
        if form.is_valid():
            user = authenticate(request, username=form.cleaned_data["username"], password=form.cleaned_data["password"])
            if user is not None:
                login(request, user)
                has_device = TOTPDevice.objects.devices_for_user(user, confirmed=True).exists()
                target = "login-verify" if has_device else "login-enrol"
                return redirect(f"{reverse(target)}?next={_safe_next(request)}")
            if getattr(request, "axes_locked_out", False):
                return signin_locked_out(request, {"username": form.cleaned_data["username"]})
            record_denial(action="auth.login_failed", actor=Actor.anonymous(form.cleaned_data["username"]),
                          target=Target("user", form.cleaned_data["username"]))
            form.add_error(None, "That username and password do not match.")
        return render(request, "auth/login.html", {"form": form, "next": request.POST.get("next", "")}, status=400)


def _finish_signin(request, device):
    otp_login(request, device)
    record(action="auth.login", actor=actor_for(request.user), target=Target("user", request.user.username),
           data={"device": device.name})


class VerifyView(LoginRequiredMixin, View):
    def _device(self, request):
        return TOTPDevice.objects.devices_for_user(request.user, confirmed=True).first()

    def get(self, request):
        if request.user.is_verified():
            return redirect("home")
        if self._device(request) is None:
            return redirect("login-enrol")
        return render(request, "auth/verify.html", {"form": OTPForm(), "next": request.GET.get("next", "")})

    def post(self, request):
        device = self._device(request)
        if device is None:
            return redirect("login-enrol")
        form = OTPForm(request.POST)
        if form.is_valid():
            allowed, why = device.verify_is_allowed()
            if allowed and device.verify_token(form.cleaned_data["otp_token"]):
                _finish_signin(request, device)
                return redirect(_safe_next(request))
            record_denial(action="auth.otp_failed", actor=actor_for(request.user),
                          target=Target("user", request.user.username), data={"throttled": not allowed})
            if not allowed:
                wait = (why or {}).get("locked_until")
                form.add_error("otp_token", "Too many wrong codes. Wait a little and try again."
                               if wait is None else f"Too many wrong codes. Try again after {wait:%H:%M:%S} UTC.")
            else:
                form.add_error("otp_token", "That code is not valid. Check your authenticator's clock and try again.")
        return render(request, "auth/verify.html", {"form": form, "next": request.POST.get("next", "")}, status=400)


class EnrolView(LoginRequiredMixin, View):
    """Add a first TOTP device. A session that already has a confirmed device must verify
    it instead: a stolen password alone must not be enough to enrol a new one."""

    def _pending_device(self, request):
        device = TOTPDevice.objects.devices_for_user(request.user, confirmed=False).first()
        if device is None:
            device = TOTPDevice.objects.create(user=request.user, name="authenticator", confirmed=False)
        return device

    def _context(self, request, device, form):
        qr = segno.make(device.config_url, error="m")
        secret = device.config_url.split("secret=")[1].split("&")[0]
        return {"form": form, "qr_svg": qr.svg_inline(scale=5), "secret": secret, "next": request.GET.get("next", "")}

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and not request.user.is_verified() and \
                TOTPDevice.objects.devices_for_user(request.user, confirmed=True).exists():
            return redirect("login-verify")
        return super().dispatch(request, *args, **kwargs)

    def get(self, request):
        return render(request, "auth/enrol.html", self._context(request, self._pending_device(request), OTPForm()))

    def post(self, request):
        device = self._pending_device(request)
        form = OTPForm(request.POST)
        if form.is_valid():
            if device.verify_token(form.cleaned_data["otp_token"]):
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                record(action="otp.device_enrol", actor=actor_for(request.user),
                       target=Target("user", request.user.username), data={"device": device.name})
                _finish_signin(request, device)
                return redirect(_safe_next(request))
            form.add_error("otp_token", "That code does not match. Scan the code again and enter the current 6 digits.")
        return render(request, "auth/enrol.html", self._context(request, device, form), status=400)


class SignOutView(View):
    def post(self, request):
        if request.user.is_authenticated:
            record(action="auth.logout", actor=actor_for(request.user), target=Target("user", request.user.username))
        logout(request)
        return redirect("login")


class HomeView(LoginRequiredMixin, View):
    def get(self, request, form=None, status=200):
        user = request.user
        tenants = list(Tenant.objects.restrict(user, "view"))
        bind_rls(user_id=user.pk)
        roles = dict(Membership.objects.filter(user=user).values_list("tenant_id", "role"))
        rows = [{"tenant": t, "role": roles.get(t.pk, "platform admin" if is_platform_admin(user) else "granted")}
                for t in tenants]
        context = {"rows": rows, "platform_admin": is_platform_admin(user),
                   "form": form or TenantCreateForm()}
        return render(request, "console/home.html", context, status=status)

    def post(self, request):
        form = TenantCreateForm(request.POST)
        if form.is_valid():
            try:
                tenant = services.tenant_create(actor=request.user, **form.cleaned_data)
            except DomainError as exc:
                form_error(form, exc)
            else:
                messages.success(request, f"Tenant {tenant.slug} created.")
                return redirect("tenant", tenant=tenant.slug)
        return self.get(request, form=form, status=400)


def form_error(form, exc: DomainError):
    form.add_error(exc.field if exc.field in form.fields else None, exc.detail)


class TenantConsoleMixin(LoginRequiredMixin):
    """Base for every console page under /t/<tenant>/: resolves the tenant through the
    choke point before any method runs, so another tenant's page is a 404 for every method."""

    tenant = None

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        try:
            self.tenant = tenant_for(request.user, kwargs["tenant"], "view",
                                     context={"method": request.method, "path": request.path})
        except NotFound:
            record_denial(actor=actor_for(request.user), target=Target("route", request.path[:150]),
                          data={"method": request.method, "status": 404, "requested_tenant": kwargs["tenant"]})
            raise Http404("No such tenant.")
        return super().dispatch(request, *args, **kwargs)

    def can(self, action):
        return can(self.request.user, self.tenant, action)

    def refuse_if_forbidden(self, exc: DomainError):
        """A 403 from a domain function is a refusal, not a mistake in a form: record it and
        answer with the 403 page."""
        if exc.status == 403:
            request = self.request
            record_denial(actor=actor_for(request.user), tenant=self.tenant.slug,
                          target=Target("route", request.path[:150]),
                          data={"method": request.method, "status": 403, "code": exc.code})
            raise PermissionDenied(exc.detail) from None


class TenantView(TenantConsoleMixin, View):
    def get(self, request, tenant, forms=None, issued=None, status=200):
        forms = forms or {}
        user = request.user
        members = Membership.objects.restrict(user, "view").filter(tenant=self.tenant).select_related("user")
        accounts = ServiceAccount.objects.restrict(user, "view").filter(tenant=self.tenant).select_related("owner")
        tokens = ApiToken.objects.restrict(user, "view").filter(tenant=self.tenant).select_related("user", "service_account")
        if not self.can("admin"):
            tokens = tokens.filter(user=user)
        context = {
            "tenant": self.tenant,
            "members": members,
            "accounts": accounts,
            "tokens": tokens,
            "is_admin": self.can("admin"),
            "can_audit": self.can("audit"),
            "member_form": forms.get("member") or MemberAddForm(auto_id="member_%s"),
            "account_form": forms.get("account") or ServiceAccountForm(auto_id="account_%s"),
            "token_form": forms.get("token") or TokenIssueForm(auto_id="token_%s"),
            "role_form": MemberRoleForm(),
            "issued": issued,
        }
        return render(request, "console/tenant.html", context, status=status)


class _TenantAction(TenantConsoleMixin, View):
    """A POST-only console action that calls one domain function."""

    http_method_names = ["post"]
    form_class = None
    form_key = None

    def post(self, request, tenant, **kwargs):
        form = self.form_class(request.POST, auto_id=f"{self.form_key}_%s") if self.form_class else None
        if form is None or form.is_valid():
            try:
                result = self.perform(request, form.cleaned_data if form else {}, **kwargs)
            except DomainError as exc:
                self.refuse_if_forbidden(exc)
                if form is None:
                    messages.error(request, exc.detail)
                    return redirect("tenant", tenant=self.tenant.slug)
                form_error(form, exc)
            else:
                if isinstance(result, dict):
                    return TenantView.get(self, request, tenant, issued=result)
                return redirect("tenant", tenant=self.tenant.slug)
        return TenantView.get(self, request, tenant, forms={self.form_key: form}, status=400)


class MemberAddView(_TenantAction):
    form_class, form_key = MemberAddForm, "member"

    def perform(self, request, data):
        user = services.user_by_username(data["username"])
        services.membership_grant(actor=request.user, tenant=self.tenant, user=user, role=data["role"])
        messages.success(request, f"{user.username} is now {data['role']} in {self.tenant.slug}.")


def _member(view, username):
    membership = Membership.objects.restrict(view.request.user, "view").filter(
        tenant=view.tenant, user__username=username).select_related("user").first()
    if membership is None:
        raise Http404("No such member.")
    return membership


class MemberRoleView(_TenantAction):
    form_class, form_key = MemberRoleForm, "member"

    def perform(self, request, data, username):
        member = _member(self, username)
        services.membership_grant(actor=request.user, tenant=self.tenant, user=member.user, role=data["role"])
        messages.success(request, f"{username} is now {data['role']}.")


class MemberRemoveView(_TenantAction):
    def perform(self, request, data, username):
        member = _member(self, username)
        services.membership_revoke(actor=request.user, tenant=self.tenant, user=member.user)
        messages.success(request, f"{username} no longer belongs to {self.tenant.slug}.")


class ServiceAccountCreateView(_TenantAction):
    form_class, form_key = ServiceAccountForm, "account"

    def perform(self, request, data):
        services.service_account_create(actor=request.user, tenant=self.tenant, **data)
        messages.success(request, f"Service account {data['name']} created.")


class TokenIssueView(_TenantAction):
    form_class, form_key = TokenIssueForm, "token"

    def perform(self, request, data):
        account = services.service_account_named(actor=request.user, tenant=self.tenant,
                                                 name=data["service_account"])
        token, plaintext = services.token_issue(actor=request.user, tenant=self.tenant, name=data["name"],
                                                expires_in_days=data["expires_in_days"], service_account=account)
        return {"token": token, "plaintext": plaintext}


class TokenRevokeView(_TenantAction):
    def perform(self, request, data, token_id):
        tokens = ApiToken.objects.restrict(request.user, "view").filter(tenant=self.tenant, public_id=token_id)
        token = tokens.select_related("tenant").first()
        if token is None:
            raise Http404("No such token.")
        services.token_revoke(actor=request.user, token=token)
        messages.success(request, f"Token {token_id} revoked.")
