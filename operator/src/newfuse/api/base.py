"""The base of every API model: Kubernetes naming conventions, and CEL rules attached to schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

CEL = "x-kubernetes-validations"


def cel(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> JsonDict:
    """One CEL validation rule, attached to a model or field through its JSON schema."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


class KubeModel(BaseModel):
    """Kubernetes conventions: camelCase on the wire, snake_case in Python, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        frozen=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
