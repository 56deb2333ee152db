"""Serializer fields that take a string exactly as it was sent.

DRF trims whitespace from every string by default, so ``"acme-bank\\n"`` reached the slug
validator as ``"acme-bank"`` and was accepted without a word to the caller. Here nothing is
normalised: an identifier with whitespace or a control character fails its whole-value
pattern with a sentence, and free text is kept as written. Every API serializer uses these.
"""

from django import forms
from django.core.exceptions import FieldDoesNotExist
from rest_framework import serializers


def may_be_null(model, source: str) -> bool:
    """Whether a read of ``source`` ("promotion.metrics_artifact.digest") from ``model`` can
    give None: some model field on the way is nullable."""
    for step in source.split("."):
        try:
            field = model._meta.get_field(step)
        except (FieldDoesNotExist, AttributeError):
            return False  # a property or method: its serializer field says for itself
        if field.null:
            return True
        model = field.related_model
        if model is None:
            return False
    return False


class CharField(serializers.CharField):
    """A JSON string, as sent: DRF would also turn 17 into "17"."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class DecimalField(serializers.DecimalField):
    """A decimal as a JSON string, as the schema says ("1.000"): a JSON number would pass through
    binary floating point on the way."""

    default_error_messages = {"not_a_string": "Must be a decimal number written as a string, like \"1.000\"."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class BooleanField(serializers.BooleanField):
    """A JSON true or false: DRF would also take "yes", "on" and 1."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class ModelSerializer(serializers.ModelSerializer):
    def get_fields(self):
        """A read-only field over a nullable column or relation is documented as nullable, as
        it is returned: the schema must say what the API answers."""
        fields = super().get_fields()
        for name, field in fields.items():
            source = field.source or name  # bound (and given its name) only later
            if field.read_only and not field.allow_null and source != "*" and may_be_null(self.Meta.model, source):
                field.allow_null = True
        return fields

    def build_standard_field(self, field_name, model_field):
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        if field_class is serializers.CharField:
            field_class = CharField
        elif field_class is serializers.BooleanField:
            field_class = BooleanField
        elif field_class is serializers.DecimalField:
            field_class = DecimalField
        if issubclass(field_class, serializers.CharField):
            kwargs["trim_whitespace"] = False
        return field_class, kwargs


class ExactValues:
    """For console forms: Django strips every CharField by default; here a value is checked
    as it was typed, and a stray space or newline is shown as an error next to its field."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field, forms.CharField):
                field.strip = False
