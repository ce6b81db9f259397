"""What a request body must be, checked before its fields are: the content type each route
reads, a body that is not empty, text that is Unicode (no lone surrogates, in JSON or in form
fields), numbers short enough to read, and one value per multipart field (one `file` part)."""

from __future__ import annotations

import email.message
import json
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

GENERATION_EXAMPLE = '{"class_name": "tabby", "size": 256}'
NOT_UNICODE = "holds a lone surrogate, which is not Unicode text: send valid UTF-8"


class TooManyDigits:
    """A JSON integer longer than Python reads (`sys.get_int_max_str_digits`), kept so that the
    error can name its field."""

    def __init__(self, digits: int):
        self.digits = digits


def _integer(digits: str) -> int | TooManyDigits:
    try:
        return int(digits)
    except ValueError:
        return TooManyDigits(len(digits.lstrip("-")))


def is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (JSON's "\\ud800"): it cannot be stored, logged
    or sent back as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """Text quoted for an error message: escaped to ASCII, cut to a readable length."""
    shown = ascii(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _problems(value: object) -> Iterator[str]:
    """What is wrong with a parsed JSON document, field by field, in document order (walked
    with a queue, not recursion: the parser already accepted its depth)."""
    pending: deque[tuple[tuple[str, ...], object]] = deque([((), value)])
    while pending:
        path, item = pending.popleft()
        where = ".".join(path) or "the body"
        if isinstance(item, dict):
            for key, child in item.items():
                if not is_unicode(key):
                    yield f"field name {ascii(key)} " + NOT_UNICODE
                    continue
                pending.append(((*path, key), child))
        elif isinstance(item, list):
            pending.extend(((*path, str(index)), child) for index, child in enumerate(item))
        elif isinstance(item, str) and not is_unicode(item):
            yield f"{where}: the text {_shown(item)} " + NOT_UNICODE
        elif isinstance(item, TooManyDigits):
            yield f"{where}: the number has {item.digits} digits; no field takes one that long"


def parse_json(body: bytes) -> object:
    """The body as JSON; 422 naming the field where it holds text that is not Unicode or a
    number too long to read (json.JSONDecodeError where it is not JSON at all)."""
    try:
        # Decoded here, strictly: json.loads on bytes lets encoded surrogates through.
        text = body.decode(json.detect_encoding(body))
    except UnicodeDecodeError as error:
        raise HTTPException(
            422, f"the body is not valid JSON: byte {error.start} is not {error.encoding} text"
        ) from None
    try:
        value = json.loads(text, parse_int=_integer)
    except RecursionError:
        raise HTTPException(422, "the body is nested too deeply to read as JSON") from None
    problems = list(_problems(value))
    if problems:
        raise HTTPException(422, "invalid request: " + "; ".join(problems))
    return value


class CheckedJsonRequest(Request):
    """A request whose JSON body is read by `parse_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class CheckedJsonRoute(APIRoute):
    """A route whose JSON body FastAPI reads through `parse_json` (the route class of every
    router that takes JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedJsonRequest(request.scope, request.receive))

        return checked


def _media_type(request: Request) -> str | None:
    header = request.headers.get("content-type")
    if not header:
        return None
    message = email.message.Message()
    message["content-type"] = header
    return message.get_content_type()


def _form_problem(name: str, value: str | UploadFile) -> str | None:
    """What is not Unicode in a form part: its name, its text or its file name (a part's
    charset parameter picks its decoder, and some decoders make lone surrogates)."""
    if not is_unicode(name):
        return f"field name {ascii(name)} " + NOT_UNICODE
    if isinstance(value, UploadFile):
        what, text = "the file name", value.filename or ""
    else:
        what, text = "the text", value
    if not is_unicode(text):
        return f"{name}: {what} {_shown(text)} " + NOT_UNICODE
    return None


async def json_object(request: Request) -> None:
    """A JSON body: said to be JSON, and not empty."""
    media_type = _media_type(request)
    body = await request.body()  # read once; FastAPI's own parsing reuses it
    if not body.strip():
        raise HTTPException(
            422, f"the request body is empty: send a JSON object such as {GENERATION_EXAMPLE}"
        )
    if media_type is None or not (media_type == "application/json" or media_type.endswith("+json")):
        raise HTTPException(
            415,
            f"the body's content type is {media_type or 'missing'}: send "
            f"'Content-Type: application/json' with a JSON object such as {GENERATION_EXAMPLE}",
        )


async def multipart_upload(request: Request) -> None:
    """A multipart form with one `file` part and each field at most once."""
    media_type = _media_type(request)
    if media_type == "application/x-www-form-urlencoded":  # a form, but one that has no file
        raise HTTPException(
            422,
            "no 'file' part: send multipart/form-data with the image in a 'file' part "
            "(curl -F file=@in.png -F scale=4)",
        )
    if media_type != "multipart/form-data":
        raise HTTPException(
            415,
            f"the body's content type is {media_type or 'missing'}: send multipart/form-data "
            "with the image in a 'file' part (curl -F file=@in.png -F scale=4)",
        )
    form = await request.form()  # parsed once; FastAPI reads the same form
    if not form:
        raise HTTPException(422, "the request body is empty: send the image in a 'file' part")
    for name, value in form.multi_items():
        problem = _form_problem(name, value)
        if problem is not None:
            raise HTTPException(422, f"invalid request: {problem}")
    for name in form:
        values = form.getlist(name)
        if len(values) > 1:
            raise HTTPException(
                422,
                f"field {name!r} was sent {len(values)} times: send it once (one image per job)",
            )
        if name != "file" and isinstance(values[0], UploadFile):
            raise HTTPException(
                422, f"unexpected file part {name!r}: send the image as the one 'file' part"
            )


JsonObject = Annotated[None, Depends(json_object)]
MultipartUpload = Annotated[None, Depends(multipart_upload)]
