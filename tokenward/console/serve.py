"""Running the console: uvicorn, a production ASGI server, on a socket bound by the command."""

from __future__ import annotations

import socket
from pathlib import Path

import uvicorn

from tokenward.console.app import create_app
from tokenward.log_redaction import install_log_redaction
from tokenward.store import Store

READY_LINE = "tokenward console at"
# uvicorn's own formatters rebuild access lines from a record's arguments, which the log
# redaction folds into the message; plain formatters print the message as redacted.
_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}


def serve(
    store: Store, listener: socket.socket, certfile: Path | None, keyfile: Path | None
) -> int:
    """Serve until stopped (SIGINT, SIGTERM); the exit status."""
    # Access and error lines show tokens as hints, whatever a client put in a URL.
    install_log_redaction()
    host, port = listener.getsockname()[:2]
    scheme = "https" if certfile is not None else "http"
    shown_host = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        create_app(store, secure_cookies=certfile is not None),
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        server_header=False,
        proxy_headers=False,
        log_config=_LOG_CONFIG,
    )
    server = uvicorn.Server(config)
    print(f"{READY_LINE} {scheme}://{shown_host}:{port}/", flush=True)
    try:
        server.run(sockets=[listener])
    finally:
        store.close()
    return 0 if server.started else 1
