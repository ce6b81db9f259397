"""Log records made safe: control characters escaped in messages, arguments and tracebacks,
numbers still formatted as numbers, uvicorn's access formatter still working."""

from __future__ import annotations

import logging
import sys

from uvicorn.logging import AccessFormatter

from api.logs import escape, make_safe

FORMAT = "%(levelname)s %(name)s: %(message)s"


def record(msg: object, args: object = (), exc_info: object = None) -> logging.LogRecord:
    made = logging.LogRecord("api.test", logging.INFO, __file__, 1, msg, args, exc_info)
    return make_safe(made)


def test_control_characters_are_escaped():
    assert escape("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape("\x00\x1b[31m\x7f") == "\\x00\\x1b[31m\\x7f"
    assert escape("next\x85line\u2028and\u2029more") == "next\\x85line\\u2028and\\u2029more"
    assert escape("plain text, ünïcode and a \\ backslash") == (
        "plain text, ünïcode and a \\ backslash"
    )


def test_messages_and_arguments_are_escaped_numbers_kept():
    line = record("%s %s %d %.3f s", ("GET", "/foo\nFORGED", 404, 0.25)).getMessage()
    assert line == "GET /foo\\nFORGED 404 0.250 s"
    assert record("user said\r\nFORGED").getMessage() == "user said\\r\\nFORGED"
    error = ConnectionError("refused\nFORGED")
    assert record("redis: %s (%r)", (error, ["a\nb"])).getMessage() == (
        "redis: refused\\nFORGED (['a\\nb'])"
    )
    assert record("%(path)s", ({"path": "/x\x1b[2J"},)).getMessage() == "/x\\x1b[2J"


def test_a_traceback_keeps_its_lines_indented():
    try:
        raise ValueError("bad input\nFORGED: looks like a record")
    except ValueError:
        made = record("unhandled error in %s", ("GET /x",), sys.exc_info())
    text = logging.Formatter(FORMAT).format(made)
    first, *rest = text.split("\n")
    assert first == "INFO api.test: unhandled error in GET /x"
    assert rest[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in rest), rest
    assert "  FORGED: looks like a record" in rest


def test_uvicorns_access_lines_still_format():
    made = record('%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5000", "GET", "/a\nFORGED", "1.1", 404))
    line = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(made)
    assert line == "127.0.0.1:5000 GET /a\\nFORGED HTTP/1.1 404 Not Found"
