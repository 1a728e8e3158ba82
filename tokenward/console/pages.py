"""The console's page: server-rendered HTML forms, usable with the keyboard alone.

Signing in with an admin key opens a session (see `sessions`); every form carries the session's
CSRF token and a post without it is refused with 403. A new token is shown once through a
one-time slot; "Delete" asks to type DELETE. Values typed into a form are shown again after a
refusal with every token in them as its hint, so no page but the one-time view holds a token.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tokenward.console import actions
from tokenward.console.keys import console_key_digest, is_console_key_shaped
from tokenward.console.sessions import Session, Sessions
from tokenward.core.layouts import LAYOUTS
from tokenward.core.lifetimes import ALL_SERVICES, NEVER, RELATIVE_EXPIRIES
from tokenward.core.tokens import KIND_NAMES, KINDS, redact_tokens

SESSION_COOKIE = "tokenward_session"
SIGNIN_COOKIE = "tokenward_signin"
_EXPIRY_DATE = "date"
_CHOSEN_SERVICES = "chosen"

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("tokenward.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _when(moment: datetime | None, missing: str = "never") -> str:
    return missing if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


_templates.filters["when"] = _when
_templates.filters["path_part"] = lambda text: urllib.parse.quote(text, safe="")
_templates.filters["article"] = _article
_templates.globals["KIND_NAMES"] = KIND_NAMES
_templates.globals["LAYOUTS"] = tuple(LAYOUTS)


class SignInRequired(Exception):
    """The request needs a signed-in session; answered with a redirect to the sign-in page."""


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def _render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("session", None)
    context.setdefault("error", None)
    context.setdefault("notice", None)
    return HTMLResponse(_templates.get_template(template).render(**context), status)


def error_page(status: int, message: str) -> HTMLResponse:
    return _render("error.html", status, title=f"Error {status}", message=message)


def to_sign_in(request: Request) -> RedirectResponse:
    answer = RedirectResponse("/signin", 303)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer


def signed_in(request: Request) -> Session:
    """The request's session, while its admin key still exists; else SignInRequired."""
    session = _sessions(request).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    if actions.store_of(request).console_key_named_by(session.key_digest) is None:
        _sessions(request).close(session.id)
        raise SignInRequired
    return session


SignedIn = Annotated[Session, Depends(signed_in)]
CsrfField = Annotated[str, Form()]


def _forbidden() -> HTMLResponse:
    return error_page(
        403,
        "This form is no longer valid (no or a wrong CSRF token): open the page again.",
    )


def _cookie(answer: Response, request: Request, name: str, value: str) -> None:
    answer.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=bool(request.app.state.secure_cookies),
    )


router = APIRouter(include_in_schema=False)


# --- sign-in -----------------------------------------------------------------------------


def _signin_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    sessions = _sessions(request)
    nonce = sessions.new_signin_nonce()
    answer = _render(
        "signin.html",
        status,
        title="Sign in",
        csrf=sessions.signin_csrf(nonce),
        error=error,
    )
    _cookie(answer, request, SIGNIN_COOKIE, nonce)
    return answer


@router.get("/signin")
def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/signin")
def signin(request: Request, key: Annotated[str, Form()] = "", csrf: CsrfField = "") -> Response:
    sessions = _sessions(request)
    if not sessions.signin_accepts(request.cookies.get(SIGNIN_COOKIE), csrf):
        return _signin_page(request, 403, "The sign-in form expired: try again.")
    key = key.strip()
    found = None
    if is_console_key_shaped(key):
        found = actions.store_of(request).console_key_named_by(console_key_digest(key))
    if found is None:
        return _signin_page(request, 401, "That is not a valid admin key.")
    previous = request.cookies.get(SESSION_COOKIE)
    if previous is not None:
        sessions.close(previous)
    session = sessions.open(found.digest, found.name)
    answer = RedirectResponse("/", 303)
    _cookie(answer, request, SESSION_COOKIE, session.id)
    answer.delete_cookie(SIGNIN_COOKIE, path="/")
    return answer


@router.post("/signout")
def signout(request: Request, session: SignedIn, csrf: CsrfField = "") -> Response:
    if not session.accepts(csrf):
        return _forbidden()
    _sessions(request).close(session.id)
    return to_sign_in(request)


# --- tokens ------------------------------------------------------------------------------


def _expiry_choices() -> list[tuple[str, str]]:
    relative = [(text, f"{span.days} days") for text, span in RELATIVE_EXPIRIES.items()]
    return [*relative, (_EXPIRY_DATE, "A date"), (NEVER, "Never")]


@router.get("/")
def tokens_page(request: Request, session: SignedIn, deleted: str | None = None) -> Response:
    now = datetime.now(UTC)
    records = actions.store_of(request).list_tokens(include_deleted=True)
    notice = None if deleted is None else f"Deleted token {redact_tokens(deleted)!r}."
    return _render(
        "tokens.html",
        title="Access tokens",
        session=session,
        tokens=[(record, record.state(now).value) for record in records],
        kinds=KINDS,
        notice=notice,
    )


def _new_token_page(
    request: Request,
    session: Session,
    kind: str,
    status: int = 200,
    error: str | None = None,
    typed: dict[str, Any] | None = None,
) -> HTMLResponse:
    shown = {"name": "", "expires": "30d", "expires_on": "", "scope": ALL_SERVICES, "services": []}
    # Typed values come back as hints where they hold a token.
    for field, value in (typed or {}).items():
        shown[field] = (
            [redact_tokens(v) for v in value] if isinstance(value, list) else redact_tokens(value)
        )
    return _render(
        "token_new.html",
        status,
        title=f"Add {_article(KIND_NAMES[kind])}",
        session=session,
        kind=kind,
        expiry_choices=_expiry_choices(),
        expiry_date=_EXPIRY_DATE,
        today=date.today().isoformat(),
        services=actions.store_of(request).list_services(),
        shown=shown,
        error=error,
    )


@router.get("/tokens/new")
def new_token_form(request: Request, session: SignedIn, kind: str = "pat") -> Response:
    if kind not in KINDS:
        return error_page(404, f"no token kind {redact_tokens(kind)!r}")
    return _new_token_page(request, session, kind)


@router.post("/tokens")
def create_token(
    request: Request,
    session: SignedIn,
    csrf: CsrfField = "",
    name: Annotated[str, Form()] = "",
    kind: Annotated[str, Form()] = "pat",
    expires: Annotated[str, Form()] = "",
    expires_on: Annotated[str, Form()] = "",
    scope: Annotated[str, Form()] = ALL_SERVICES,
    services: Annotated[list[str] | None, Form()] = None,
) -> Response:
    if not session.accepts(csrf):
        return _forbidden()
    if kind not in KINDS:
        return error_page(400, f"no token kind {redact_tokens(kind)!r}")
    chosen = services or []
    token_scope: str | Sequence[str] = chosen if scope == _CHOSEN_SERVICES else ALL_SERVICES
    expiry = expires_on if expires == _EXPIRY_DATE else expires
    try:
        token, record = actions.create_token(
            actions.store_of(request), name, expiry, kind, token_scope, datetime.now(UTC)
        )
    except actions.Refusal as refusal:
        typed = {
            "name": name,
            "expires": expires,
            "expires_on": expires_on,
            "scope": scope,
            "services": chosen,
        }
        return _new_token_page(request, session, kind, refusal.status, refusal.message, typed)
    slot = _sessions(request).put_once(session, token, record.name, record.hint)
    return RedirectResponse(f"/tokens/shown/{slot}", 303)


@router.get("/tokens/shown/{slot}")
def shown_once(request: Request, session: SignedIn, slot: str) -> Response:
    shown = _sessions(request).take_once(session, slot)
    if shown is None:
        return _render("token_gone.html", 404, title="Shown once", session=session)
    return _render("token_created.html", title="Your new token", session=session, shown=shown)


def _confirm_page(
    request: Request,
    session: Session,
    what: str,
    name: str,
    hint: str | None,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    base = "/tokens" if what == "token" else "/services"
    return _render(
        "confirm_delete.html",
        status,
        title=f"Delete {what} {name}",
        session=session,
        what=what,
        name=name,
        hint=hint,
        action=f"{base}/{urllib.parse.quote(name, safe='')}/delete",
        back="/" if what == "token" else "/services",
        error=error,
    )


@router.get("/tokens/{name}/delete")
def confirm_token_delete(request: Request, session: SignedIn, name: str) -> Response:
    record = actions.store_of(request).get_token(name)
    if record is None:
        return error_page(404, f"no token named {redact_tokens(name)!r}")
    return _confirm_page(request, session, "token", name, record.hint)


@router.post("/tokens/{name}/delete")
def delete_token(
    request: Request,
    session: SignedIn,
    name: str,
    csrf: CsrfField = "",
    confirm: Annotated[str, Form()] = "",
) -> Response:
    if not session.accepts(csrf):
        return _forbidden()
    store = actions.store_of(request)
    try:
        actions.delete_token(store, name, confirm, datetime.now(UTC))
    except actions.Refusal as refusal:
        record = store.get_token(name)
        hint = None if record is None else record.hint
        return _confirm_page(request, session, "token", name, hint, refusal.status, refusal.message)
    return RedirectResponse(f"/?deleted={urllib.parse.quote(name, safe='')}", 303)


# --- services ----------------------------------------------------------------------------


def _services_page(
    request: Request,
    session: Session,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    typed: dict[str, str] | None = None,
) -> HTMLResponse:
    shown = {"name": "", "layout": "generic", "hosts": "", "upstream": ""}
    shown.update({field: redact_tokens(value) for field, value in (typed or {}).items()})
    return _render(
        "services.html",
        status,
        title="Services",
        session=session,
        services=actions.store_of(request).list_services(),
        shown=shown,
        error=error,
        notice=notice,
    )


@router.get("/services")
def services_page(
    request: Request, session: SignedIn, added: str | None = None, removed: str | None = None
) -> Response:
    notice = None
    if added is not None:
        notice = f"Added service {redact_tokens(added)!r}."
    elif removed is not None:
        notice = f"Removed service {redact_tokens(removed)!r}."
    return _services_page(request, session, notice=notice)


@router.post("/services")
def add_service(
    request: Request,
    session: SignedIn,
    csrf: CsrfField = "",
    name: Annotated[str, Form()] = "",
    layout: Annotated[str, Form()] = "",
    hosts: Annotated[str, Form()] = "",
    upstream: Annotated[str, Form()] = "",
) -> Response:
    if not session.accepts(csrf):
        return _forbidden()
    host_names = [host for host in hosts.replace(",", " ").split() if host]
    try:
        service = actions.add_service(
            actions.store_of(request), name, layout, host_names, upstream, datetime.now(UTC)
        )
    except actions.Refusal as refusal:
        typed = {"name": name, "layout": layout, "hosts": hosts, "upstream": upstream}
        return _services_page(request, session, refusal.status, refusal.message, typed=typed)
    return RedirectResponse(f"/services?added={urllib.parse.quote(service.name, safe='')}", 303)


@router.get("/services/{name}/delete")
def confirm_service_delete(request: Request, session: SignedIn, name: str) -> Response:
    if all(service.name != name for service in actions.store_of(request).list_services()):
        return error_page(404, f"no service named {redact_tokens(name)!r}")
    return _confirm_page(request, session, "service", name, None)


@router.post("/services/{name}/delete")
def remove_service(
    request: Request,
    session: SignedIn,
    name: str,
    csrf: CsrfField = "",
    confirm: Annotated[str, Form()] = "",
) -> Response:
    if not session.accepts(csrf):
        return _forbidden()
    try:
        actions.remove_service(actions.store_of(request), name, confirm)
    except actions.Refusal as refusal:
        return _confirm_page(
            request, session, "service", name, None, refusal.status, refusal.message
        )
    return RedirectResponse(f"/services?removed={urllib.parse.quote(name, safe='')}", 303)
