"""`tokenward console`: a web page and a JSON API for tokens and services on the token store.

- `keys`: the admin keys (issued here, kept by the store as digests);
- `actions`: what the page and the API both do to the store, and how refusals are answered;
- `api`: the JSON API under `/api` (its OpenAPI document at `/api/openapi.json`);
- `sessions`: the page's sign-in sessions, CSRF tokens and one-time slots for new tokens;
- `pages`: the server-rendered page (templates in `templates/`, the copy button in `static/`);
- `app`: the ASGI application that puts them together, with its gates (admin key, body size);
- `command`: the `tokenward console` command group, registered by `tokenward.cli`.
"""
