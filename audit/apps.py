from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        from .keys import KeyringError, platform_keyring

        if settings.PRODUCTION:  # production refuses to start without its signing identity
            try:
                platform_keyring()
            except KeyringError as exc:
                raise ImproperlyConfigured(str(exc)) from None
