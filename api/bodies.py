"""What a request body must be, checked before its fields are: the content type each route
reads, a body that is not empty, and one value per multipart field (one `file` part)."""

from __future__ import annotations

import email.message
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import UploadFile

GENERATION_EXAMPLE = '{"class_name": "tabby", "size": 256}'


def _media_type(request: Request) -> str | None:
    header = request.headers.get("content-type")
    if not header:
        return None
    message = email.message.Message()
    message["content-type"] = header
    return message.get_content_type()


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
