"""Tokens shown as hints in every log line of the process, mitmproxy's own included.

mitmproxy logs some requests before any addon hook sees them: a malformed request line is
logged whole ("Bad HTTP request line: b'GET /p sm_pat_… HTTP/1.1'"). The addon cannot stop
those lines, so it changes how log records are made: every record's message (and traceback)
is checked for tokens, also percent-encoded ones, and each is replaced by its hint. The same
goes for the 400 page mitmproxy writes for a request it refuses, where a hook can reach it
(see `TokenWard.requestheaders` in `addons/gateway.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from tokenward.core.placement import redact_text

_MARK = "tokenward_redacts_tokens"


def redact_log_text(text: str) -> str:
    """`text` with every token in it, as written or percent-encoded, shown as its hint.

    A log line is no request: escaping can glue a letter to a token (b'GET /p\\tsm_pat_…' is
    repr's backslash and t), so any run that starts like a token is hidden, and a run encoded
    deeper than tokenward decodes is withheld (`redact_text`). Redacting too much costs
    nothing here.
    """
    return redact_text(text)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:
        return  # logging reports a record that cannot be formatted; nothing to redact yet
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    redacted = redact_log_text(message)
    if redacted != message:
        # The traceback, if any, is now part of the message, redacted with it.
        record.msg, record.args, record.exc_info, record.exc_text = redacted, (), None, None


def install_log_redaction() -> None:
    """Redact every log record this process makes from now on; installing twice is one."""
    current = logging.getLogRecordFactory()
    if getattr(current, _MARK, False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        _redact_record(record)
        return record

    setattr(make_record, _MARK, True)
    make_record.previous = current  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def uninstall_log_redaction() -> None:
    """Undo `install_log_redaction` when it is the factory in use."""
    current = logging.getLogRecordFactory()
    if getattr(current, _MARK, False):
        logging.setLogRecordFactory(current.previous)  # type: ignore[attr-defined]
