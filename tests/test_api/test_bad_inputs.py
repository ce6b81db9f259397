"""A corpus of bad inputs, generated here, against the API on a real (embedded) Redis: every
one gets a 4xx JSON error that says what was wrong, none a 5xx. And high-bit-depth images are
converted, not clipped."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from api.main import create_app
from api.uploads import decode
from jobs.connection import EmbeddedRedis
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "bad.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(tmp_path_factory.mktemp("store")),
        max_upload_bytes=200_000,
        max_input_pixels=512 * 512,
        max_output_pixels=1024 * 1024,
    )
    with TestClient(create_app(settings)) as client:
        yield client
    redis.stop()


def image(width: int = 32, height: int = 32, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


def animated(format: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=format, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale [H, W] or RGB [H, W, 3], uint16), written chunk by chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def generation_corpus() -> list[tuple[str, bytes, dict[str, str], str]]:
    """(name, body, headers, a word the error must carry)."""
    cases = []
    for field, good in (("guidance", "2.0"), ("seed", "3"), ("steps", "2"), ("class_id", "1")):
        for bad in ("NaN", "Infinity", "-Infinity", "1e400"):
            text = '{"class_id": 1, "FIELD": VALUE}'.replace("FIELD", field)
            if field == "class_id":
                text = '{"class_id": VALUE}'
            cases.append((f"{field}={bad}", text.replace("VALUE", bad).encode(), JSON, field))
        del good
    cases += [
        ("empty", b"", JSON, "empty"),
        ("whitespace", b"  \n ", JSON, "empty"),
        ("no content type", b'{"class_id": 1}', {}, "application/json"),
        ("text/plain", b'{"class_id": 1}', {"content-type": "text/plain"}, "application/json"),
        ("form", b"class_id=1", {"content-type": "application/x-www-form-urlencoded"}, "json"),
        ("xml", b"<class_id>1</class_id>", {"content-type": "application/xml"}, "json"),
        ("array", b"[1, 2]", JSON, "invalid request"),
        ("string", b'"tabby"', JSON, "invalid request"),
        ("null", b"null", JSON, "invalid request"),
        ("number", b"42", JSON, "invalid request"),
        ("truncated", b'{"class_id": 1', JSON, "not valid JSON"),
        ("not utf-8", b'{"class_name": "\xff\xfe"}', JSON, ""),
        ("deep nesting", b"[" * 20000 + b"]" * 20000, JSON, ""),
        ("huge integer", b'{"class_id": 1' + b"0" * 5000 + b"}", JSON, ""),
        ("class_name number", b'{"class_name": 5}', JSON, "class_name"),
        ("class_name long", b'{"class_name": "' + b"x" * 500 + b'"}', JSON, "class_name"),
        ("class_name nul", b'{"class_name": "tab\\u0000by"}', JSON, "class"),
        ("size string", b'{"class_id": 1, "size": "256"}', JSON, "size"),
        ("dry_run string", b'{"class_id": 1, "dry_run": "yes"}', JSON, "dry_run"),
        ("webhook no host", b'{"class_id": 1, "webhook_url": "http://"}', JSON, "webhook_url"),
        ("too large", b'{"class_name": "' + b"x" * 70_000 + b'"}', JSON, "too large"),
    ]
    return cases


def upload_corpus() -> list[tuple[str, dict, list, str]]:
    """(name, form fields, file parts, a word the error must carry)."""
    png = image()
    one = [("file", ("in.png", png, "image/png"))]
    cases: list[tuple[str, dict, list, str]] = [
        ("animated webp", {"scale": "4"}, [("file", ("a.webp", animated("WEBP")))], "animated"),
        ("animated png", {"scale": "4"}, [("file", ("a.png", animated("PNG")))], "animated"),
        ("animated gif", {"scale": "4"}, [("file", ("a.gif", animated("GIF")))], "GIF"),
        ("two files", {"scale": "4"}, one + [("file", ("b.png", png, "image/png"))], "2 times"),
        ("extra file part", {"scale": "4"}, one + [("mask", ("m.png", png))], "mask"),
        ("scale twice", {"scale": ["4", "16"]}, one, "'scale' was sent 2 times"),
        ("bmp", {"scale": "4"}, [("file", ("a.bmp", image(format="BMP")))], "BMP"),
        ("tiff", {"scale": "4"}, [("file", ("a.tif", image(format="TIFF")))], "TIFF"),
        ("truncated png", {"scale": "4"}, [("file", ("t.png", png[: len(png) // 2]))], ""),
        ("text file", {"scale": "4"}, [("file", ("a.txt", b"hello"))], "not an image"),
        ("empty file", {"scale": "4"}, [("file", ("e.png", b""))], "empty"),
        ("no file", {"scale": "4"}, [], "file"),
    ]
    for field, bad in (
        ("fidelity", "nan"),
        ("fidelity", "inf"),
        ("fidelity", "1e400"),
        ("target_size", "1e400"),
        ("seed", "nan"),
        ("steps", "Infinity"),
        ("scale", "NaN"),
    ):
        cases.append((f"{field}={bad}", {field: bad}, one, field))
    return cases


def assert_clear_4xx(response, word: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert word.lower() in body["error"].lower(), body["error"]


def test_corpus_of_bad_inputs_gets_only_clear_4xx(client: TestClient):
    statuses = []
    generations, uploads = generation_corpus(), upload_corpus()
    for name, body, headers, word in generations:
        response = client.post("/v1/generations", content=body, headers=headers)
        statuses.append((name, response.status_code))
        assert_clear_4xx(response, word)
    for name, fields, files, word in uploads:
        response = client.post("/v1/upscales", data=fields, files=files)
        statuses.append((name, response.status_code))
        assert_clear_4xx(response, word)
    raw_uploads = [
        (b'{"scale": 4}', JSON, "multipart/form-data"),
        (b"", {}, "multipart/form-data"),
        (b"--x\r\n", {"content-type": "multipart/form-data"}, ""),
        (b"--x\r\ngarbage", {"content-type": "multipart/form-data; boundary=x"}, ""),
        (b"", {"content-type": "multipart/form-data; boundary=x"}, "empty"),
    ]
    for body, headers, word in raw_uploads:
        response = client.post("/v1/upscales", content=body, headers=headers)
        statuses.append((body[:10], response.status_code))
        assert_clear_4xx(response, word)
    for path in (
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/" + "x" * 5000,
        "/v1/jobs/a/stages/b",
    ):
        for method in ("GET", "DELETE"):
            response = client.request(method, path)
            statuses.append((path[:20], response.status_code))
            assert_clear_4xx(response, "")
    assert len(statuses) >= 40
    assert [case for case in statuses if case[1] >= 500] == []


def test_non_finite_numbers_name_their_field(client: TestClient):
    for bad in ("NaN", "Infinity", "1e400"):
        response = client.post(
            "/v1/generations", content=f'{{"class_id": 1, "guidance": {bad}}}', headers=JSON
        )
        assert response.status_code == 422, response.text
        assert "guidance" in response.json()["error"] and "finite" in response.json()["error"]
    # The connection stays usable (a 500 used to break keep-alive).
    assert client.get("/healthz").status_code == 200


def test_sixteen_bit_grey_png_is_scaled_not_clipped(client: TestClient):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    pixels, carried = decode(png16(ramp))
    expected = np.round(ramp / 257).astype(np.uint8)  # 65535 -> 255: reduced to 8 bits, rounded
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, 0], expected)
    assert (pixels == 255).mean() < 0.01  # was 99.6 % white when clipped
    assert (carried.mode, carried.bits) == ("L", 16)
    response = client.post(
        "/v1/upscales", data={"scale": "4"}, files={"file": ("g.png", png16(ramp), "image/png")}
    )
    assert response.status_code == 202, response.text


def test_sixteen_bit_colour_png_keeps_its_colours():
    rgb = np.random.default_rng(2).integers(0, 65536, (16, 16, 3)).astype(np.uint16)
    pixels, carried = decode(png16(rgb))
    expected = (rgb >> 8).astype(np.uint8)  # the high byte of each channel
    assert pixels.dtype == np.uint8
    assert (carried.mode, carried.bits) == ("RGB", 16)
    np.testing.assert_array_equal(pixels[0].transpose(1, 2, 0), expected)
