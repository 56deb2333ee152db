from django import forms

from . import strict

from .models import Tenant
from .roles import SERVICE_ACCOUNT_ROLE_CHOICES, Role


class SignInForm(strict.ExactValues, forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}))
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class OTPForm(strict.ExactValues, forms.Form):
    otp_token = forms.RegexField(
        label="One-time password", regex=r"\A\d{6}\Z", max_length=6,
        error_messages={"invalid": "Enter the 6-digit code from your authenticator app."},
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class TenantCreateForm(strict.ExactValues, forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "jurisdiction"]


class MemberAddForm(strict.ExactValues, forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)


class MemberRoleForm(strict.ExactValues, forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ServiceAccountForm(strict.ExactValues, forms.Form):
    name = forms.SlugField(max_length=64)
    role = forms.ChoiceField(choices=SERVICE_ACCOUNT_ROLE_CHOICES)


class TokenIssueForm(strict.ExactValues, forms.Form):
    name = forms.CharField(max_length=100)
    expires_in_days = forms.IntegerField(min_value=1, max_value=365, initial=90)
    service_account = forms.CharField(max_length=64, required=False,
                                      help_text="Leave empty for a personal token.")
