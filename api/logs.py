"""Log lines safe to read: in every record the API process writes (its own, uvicorn's, any
library's), CR, LF and other control characters in the message and its arguments are escaped
(`\\n`, `\\x1b`, ...), so text a client sent (a path, a header, a field) cannot start a forged
line or drive a terminal. A traceback keeps its lines, each indented, so only a record's
first line starts at column 0."""

from __future__ import annotations

import logging
import numbers
import re
import traceback
from collections.abc import Callable, Mapping

# C0 controls, DEL, C1 controls (NEL among them) and Unicode's line and paragraph separators:
# everything some reader takes for a line break or a terminal command.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INSTALLED = "_cascade_escapes_controls"  # marks the record factory this module installed


def escape(text: str) -> str:
    """`text` with each control character written as a Python escape."""
    return CONTROL.sub(lambda match: _escaped(match[0]), text)


def _escaped(character: str) -> str:
    code = ord(character)
    return NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class _Escaped:
    """A log argument that formats escaped, by %s or by %r."""

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _argument(value: object) -> object:
    if isinstance(value, numbers.Number):  # formatted by %d, %.3f ...: no text of a client's
        return value
    if isinstance(value, str):
        return escape(value)
    return _Escaped(value)


def _traceback(lines: str) -> str:
    """A traceback's text, its control characters escaped and every line indented (an
    exception's message may hold a client's text, line breaks included)."""
    return "\n".join("  " + escape(line) for line in lines.rstrip("\n").split("\n"))


def make_safe(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message, arguments and traceback escaped (in place)."""
    record.msg = escape(record.msg) if isinstance(record.msg, str) else _Escaped(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {key: _argument(value) for key, value in record.args.items()}
    elif record.args:
        record.args = tuple(_argument(value) for value in record.args)
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = _traceback("".join(traceback.format_exception(*record.exc_info)))
    if record.stack_info:
        record.stack_info = _traceback(record.stack_info)
    return record


def install_safe_records() -> None:
    """Make every log record of this process through `make_safe` (once, however many apps
    are made): a record factory reaches uvicorn's own loggers too, whose handlers are not
    the root logger's."""
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if getattr(previous, _INSTALLED, False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        return make_safe(previous(*args, **kwargs))

    setattr(factory, _INSTALLED, True)
    logging.setLogRecordFactory(factory)
