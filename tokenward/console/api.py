"""The JSON API under `/api`: tokens and services, described by `/api/openapi.json`.

Every call needs `Authorization: Bearer KEY` (checked by the app's gate before anything reads
the body). Bodies are checked strictly: wrong types and unknown fields get 400; refusals are
`{"error", "message"}` with 400, 404 or 409. `POST /api/tokens` is the only answer that holds a
token; everything else shows its hint.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from tokenward.cli import CONFIRM_WORD
from tokenward.console import actions
from tokenward.core.layouts import LAYOUTS
from tokenward.core.lifetimes import ALL_SERVICES, EXPIRY_FORMS, NEVER, RELATIVE_EXPIRIES
from tokenward.core.records import ServiceRecord, TokenRecord, TokenState
from tokenward.core.tokens import KINDS

_NAME_MAX_LENGTH = 64
_EXPIRY_PATTERN = "^(" + "|".join([*RELATIVE_EXPIRIES, NEVER, "[0-9]{4}-[0-9]{2}-[0-9]{2}"]) + ")$"

# "all", or the names of registered services.
_SCOPE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": [ALL_SERVICES]},
        {"type": "array", "items": {"type": "string"}},
    ],
    "description": f"{ALL_SERVICES!r} (every service) or a list of registered service names.",
}
Scope = Annotated[str | list[str], WithJsonSchema(_SCOPE_SCHEMA)]


class ErrorOut(BaseModel):
    error: str = Field(description="A short code, e.g. invalid_request, not_found, conflict.")
    message: str = Field(description="A sentence for a person; never a full token.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TokenIn(_Strict):
    name: str = Field(max_length=_NAME_MAX_LENGTH, description="A unique label.")
    expires: str = Field(
        description=f"{EXPIRY_FORMS}; can never be changed.", pattern=_EXPIRY_PATTERN
    )
    kind: str = Field("pat", json_schema_extra={"enum": list(KINDS)})
    scope: Scope = ALL_SERVICES


class TokenPatch(_Strict):
    scope: Scope | None = None
    expires: str | None = Field(None, description="Refused with 409: an expiry is final.")


class TokenOut(BaseModel):
    name: str
    kind: str
    owner: str
    hint: str = Field(description="The token's prefix and last four characters.")
    created_at: datetime
    expires_at: datetime | None = Field(description="null: never.")
    scope: Scope
    last_used_at: datetime | None
    revoked_at: datetime | None
    state: TokenState

    @classmethod
    def of(cls, record: TokenRecord, now: datetime) -> Self:
        return cls(
            name=record.name,
            kind=record.kind,
            owner=record.owner,
            hint=record.hint,
            created_at=record.created_at,
            expires_at=record.expires_at,
            scope=ALL_SERVICES if record.scope is None else sorted(record.scope),
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
            state=record.state(now),
        )


class CreatedTokenOut(TokenOut):
    token: str = Field(description="The token itself: shown here once, never again.")


class ServiceIn(_Strict):
    name: str = Field(max_length=253)
    layout: str = Field(json_schema_extra={"enum": list(LAYOUTS)})
    upstream: str = Field(description="The node's http(s):// or ws(s):// URL.")
    hosts: list[str] = Field(default_factory=list, description="Default: the service's name.")


class ServiceOut(BaseModel):
    name: str
    hosts: list[str]
    layout: str
    upstream: str

    @classmethod
    def of(cls, service: ServiceRecord) -> Self:
        return cls(
            name=service.name,
            hosts=list(service.hosts),
            layout=service.layout,
            upstream=service.upstream,
        )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The refusals an operation documents: 401 always, and `statuses`."""
    described = {
        400: "Bad input: wrong types, unknown fields, invalid values, no confirmation.",
        401: "No admin key, or not a valid one.",
        404: "No such token or service.",
        409: "A clash with what is stored (a duplicate, an expiry change, a service in use).",
        413: "The body is too large.",
    }
    return {
        status: {"model": ErrorOut, "description": described[status]} for status in (401, *statuses)
    }


Confirm = Annotated[
    str,
    Query(
        description="The word that confirms a delete.", json_schema_extra={"enum": [CONFIRM_WORD]}
    ),
]


def _now() -> datetime:
    return datetime.now(UTC)


router = APIRouter(prefix="/api")


@router.get("/tokens", responses=_errors(), summary="List tokens, deleted ones included")
def list_tokens(request: Request) -> list[TokenOut]:
    now = _now()
    return [TokenOut.of(record, now) for record in actions.store_of(request).list_tokens(True)]


@router.post(
    "/tokens",
    status_code=201,
    responses=_errors(400, 409, 413),
    summary="Create a token (shown once)",
)
def create_token(request: Request, body: Annotated[TokenIn, Body()]) -> CreatedTokenOut:
    now = _now()
    token, record = actions.create_token(
        actions.store_of(request), body.name, body.expires, body.kind, body.scope, now
    )
    return CreatedTokenOut(token=token, **TokenOut.of(record, now).model_dump())


@router.patch(
    "/tokens/{name}", responses=_errors(400, 404, 409, 413), summary="Change a token's scope"
)
def change_token(request: Request, name: str, body: Annotated[TokenPatch, Body()]) -> TokenOut:
    store = actions.store_of(request)
    if body.expires is not None:
        actions.refuse_expiry_change(store, name)
    if body.scope is None:  # nothing to change: the token as it is
        return TokenOut.of(actions.live_token(store, name), _now())
    return TokenOut.of(actions.change_scope(store, name, body.scope), _now())


@router.delete("/tokens/{name}", responses=_errors(400, 404), summary="Delete (revoke) a token")
def delete_token(request: Request, name: str, confirm: Confirm) -> TokenOut:
    now = _now()
    return TokenOut.of(actions.delete_token(actions.store_of(request), name, confirm, now), now)


@router.get("/services", responses=_errors(), summary="List the registered services")
def list_services(request: Request) -> list[ServiceOut]:
    return [ServiceOut.of(service) for service in actions.store_of(request).list_services()]


@router.post(
    "/services", status_code=201, responses=_errors(400, 409, 413), summary="Register a service"
)
def add_service(request: Request, body: Annotated[ServiceIn, Body()]) -> ServiceOut:
    service = actions.add_service(
        actions.store_of(request), body.name, body.layout, body.hosts, body.upstream, _now()
    )
    return ServiceOut.of(service)


@router.delete("/services/{name}", responses=_errors(400, 404, 409), summary="Unregister a service")
def remove_service(request: Request, name: str, confirm: Confirm) -> ServiceOut:
    return ServiceOut.of(actions.remove_service(actions.store_of(request), name, confirm))
