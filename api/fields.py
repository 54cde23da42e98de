"""Serializer fields that accept exactly what the OpenAPI schema says, no more, no less.

DRF's fields are lenient where a schema is strict (``CharField`` stores the number
5 as ``"5"``, ``BooleanField`` takes ``"yes"``, ``IntegerField`` takes ``"7"``) and
strict where the schema is lenient (``JSONField`` documents "any value" and refuses
``null``). A client reading the schema must be able to predict every answer, so the
request bodies use these instead.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_UP, Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from steps.jsonvalues import INT64_MAX

INT32_MAX = 2**31 - 1


class StrictCharField(serializers.CharField):
    """Text only: a number or a boolean is refused, not turned into text."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (``5``); ``5.0``, ``"5"`` and ``true`` are refused, as OpenAPI 3.0's ``integer`` does."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """``true`` or ``false``; ``"yes"``, ``1`` and ``"true"`` are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObjectField(serializers.JSONField):
    """A JSON object (``{}`` and up); any other JSON value is refused."""

    default_error_messages = {"not_object": "must be a JSON object, got {kind}"}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            self.fail("not_object", kind="null" if data is None else type(data).__name__)
        return super().to_internal_value(data)


@extend_schema_field({})
class AnyJSONField(serializers.JSONField):
    """Any JSON value, ``null`` included (documented as such)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)


# A positive amount with at most 8 digits before the point (DECIMAL(14, 6) columns).
MONEY_MAX = Decimal("99999999.999999")
MONEY_PATTERN = r"^([1-9][0-9]{0,7}(\.[0-9]{1,6})?|0\.0{0,5}[1-9][0-9]{0,5})$"
_MONEY = re.compile(MONEY_PATTERN)


@extend_schema_field({"oneOf": [
    {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": float(MONEY_MAX)},
    {"type": "string", "pattern": MONEY_PATTERN},
], "description": "US dollars, greater than 0 and below 10^8: a JSON number or a decimal string; "
                  "rounded up to 6 decimal places."})
class MoneyField(serializers.Field):
    default_error_messages = {
        "invalid": "must be a number greater than 0 and at most 99999999.999999 (a JSON number or a decimal "
                   "string such as \"12.50\")",
    }

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, str):
            if not _MONEY.match(data):
                self.fail("invalid")
            value = Decimal(data)
        elif isinstance(data, (int, float)):
            if not (math.isfinite(data) and 0 < data <= float(MONEY_MAX)):
                self.fail("invalid")
            value = Decimal(str(data))
        else:
            self.fail("invalid")
        value = value.quantize(Decimal("0.000001"), rounding=ROUND_UP)
        if not Decimal(0) < value <= MONEY_MAX:
            self.fail("invalid")
        return value

    def to_representation(self, value: Any) -> str:
        return str(value)


@extend_schema_field({"oneOf": [{"type": "string", "maxLength": 255}, {"type": "integer"}]})
class TextOrIntegerField(serializers.Field):
    """A correlation key: text, or an integer (an order number) that is stored as its text."""

    default_error_messages = {"invalid": "must be a string or an integer",
                              "max_length": "must be at most {max_length} characters"}

    def __init__(self, max_length: int = 255, **kwargs: Any) -> None:
        self.max_length = max_length
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, bool) or not isinstance(data, (str, int)):
            self.fail("invalid")
        text = str(data)
        if len(text) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return text

    def to_representation(self, value: Any) -> str:
        return str(value)


class QuerySerializer(serializers.Serializer):
    """Query parameters: a parameter given with an empty value is refused, not ignored.

    The schema says ``workflow`` is a non-empty string; ``?workflow=`` used to list
    every workflow's runs. Fields that allow blank (``allow_blank=True``) are exempt.
    """

    def to_internal_value(self, data: Any) -> Any:
        blank = {}
        for name, field in self.fields.items():
            if hasattr(data, "get") and name in data and data.get(name) == "" and not getattr(
                    field, "allow_blank", False):
                blank[name] = ["must not be empty; leave the parameter out instead"]
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)


__all__ = ["INT32_MAX", "INT64_MAX", "AnyJSONField", "JSONObjectField", "MoneyField", "QuerySerializer",
           "StrictBooleanField", "StrictCharField", "StrictIntegerField", "TextOrIntegerField"]
