from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"

    def ready(self):
        from django.db.models.signals import post_migrate

        from . import db, schema  # noqa: F401  (schema registers OpenAPI extensions)

        post_migrate.connect(db.apply_role_grants, sender=self)
