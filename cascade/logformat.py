"""How every process of the service logs: plain text (the default) or one JSON object per line
(`CASCADE_LOG_FORMAT=json`, for a log collector), each record carrying the request and the job
it was written for.

The API sets `request_id` on its records (`api.request_id`); a stage worker sets the job and
stage it runs in `JOB_ID` and `STAGE` here, which a filter copies onto every record. A JSON line
holds `time` (UTC, ISO 8601), `level`, `logger`, `message`, those ids when there are any, and
`exception` (the traceback as text) when one was logged.
"""

from __future__ import annotations

import json
import logging
import os
from contextvars import ContextVar
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_ID: ContextVar[str | None] = ContextVar("cascade_job_id", default=None)
STAGE: ContextVar[str | None] = ContextVar("cascade_stage", default=None)
IDS = ("request_id", "job_id", "stage")


class ContextFilter(logging.Filter):
    """Adds `job_id` and `stage` (None outside a stage run) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = JOB_ID.get()
        if getattr(record, "stage", None) is None:
            record.stage = STAGE.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (control characters escaped by json)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in IDS:
            value = getattr(record, name, None)
            if value not in (None, "", "-"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def log_format() -> str:
    """`CASCADE_LOG_FORMAT` (text or json); anything else is an error that says what is allowed."""
    chosen = os.environ.get("CASCADE_LOG_FORMAT", "").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ValueError(f"CASCADE_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


def formatter(text: str = TEXT) -> logging.Formatter:
    """The formatter the configured format asks for (`text`: this %-style format)."""
    return JsonFormatter() if log_format() == "json" else logging.Formatter(text)


def configure(level: int = logging.INFO, text: str = TEXT) -> None:
    """Log to stderr in the configured format, with the context filter on the handler. Once
    per process: later calls (an app made twice) only add the filter to new handlers."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(text))
        root.addHandler(handler)
        root.setLevel(level)
    use_format(root.handlers)


def use_format(handlers: list[logging.Handler], text: str | None = None) -> None:
    """Give `handlers` the context filter and, in JSON mode (or with `text`), the formatter."""
    for handler in handlers:
        if not any(isinstance(existing, ContextFilter) for existing in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format() == "json":
            handler.setFormatter(JsonFormatter())
        elif text is not None:
            handler.setFormatter(logging.Formatter(text))
