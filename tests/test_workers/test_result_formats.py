"""Result formats and the pixels users care about, through the service: an upload or a request
posted to the API, its stages run in-process by the worker's stage job on a real (embedded)
Redis, and the result downloaded: its content type, file name, format, parameters, alpha,
greyscale, ICC profile and EXIF."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from api.main import create_app
from cascade.formats import read_parameters
from jobs.connection import EmbeddedRedis
from jobs.record import tensor_key
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import run_stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


@pytest.fixture
def service(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[TestClient, Runtime]]:
    """The API and a worker's runtime on one Redis and one result folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    redis_server.client().flushdb()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), **TINY)
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    with TestClient(create_app(settings)) as client:
        yield client, runtime
    runtime_module.install(None)  # type: ignore[arg-type]
    torch.set_num_threads(threads)


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def photo(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // width], -1).astype(
        np.uint8
    )


def disc(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    inside = ((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 < 1
    return np.where(inside, 255, 0).astype(np.uint8)


def upscale(client: TestClient, runtime: Runtime, data: bytes, **fields: object):
    """Post an upscale, run its stages as the workers would, and download its result."""
    form = {key: str(value) for key, value in {"scale": 4, "steps": 1, **fields}.items()}
    response = client.post("/v1/upscales", data=form, files={"file": ("in.png", data)})
    assert response.status_code == 202, response.text
    accepted = response.json()
    for stage in accepted["stages"]:
        run_stage(accepted["id"], stage)
    job = client.get(accepted["links"]["self"]).json()
    assert job["status"] == "succeeded", job
    return job, client.get(job["result_url"])


def test_rgba_upload_comes_back_rgba_as_webp_with_its_parameters(service):
    client, runtime = service
    alpha = disc(24, 32)
    rgba = np.dstack([photo(24, 32), alpha])
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = png(Image.fromarray(rgba, "RGBA"), icc_profile=profile)
    job, result = upscale(client, runtime, data, format="webp", quality=95, seed=5)
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/webp"
    assert f'filename="{job["id"]}.webp"' in result.headers["content-disposition"]
    assert job["request"]["input"] == {
        "height": 24,
        "width": 32,
        "mode": "RGBA",
        "bits": 8,
        "icc_profile": True,
    }
    folder = Path(runtime.settings.store) / job["id"]
    assert {path.name for path in folder.iterdir()} == {"sr256.png", "result.webp", "job.json"}
    assert "result_url" in json.loads((folder / "job.json").read_text())  # job.json as before
    assert runtime.connection.get(tensor_key(job["id"], "carried")) is None  # freed at the end
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.format == "WEBP" and image.mode == "RGBA" and image.size == (128, 96)
        assert image.info["icc_profile"] == profile
        parameters = read_parameters(image)
        out_alpha = np.asarray(image.getchannel("A")).astype(int)
    expected = np.asarray(Image.fromarray(alpha).resize((128, 96), Image.Resampling.LANCZOS))
    assert np.abs(out_alpha - expected).max() <= 2  # WebP keeps alpha losslessly at q95
    assert parameters["kind"] == "upscale" and parameters["seed"] == 5
    assert parameters["scale"] == 4 and parameters["filename"] == "in.png"
    [stage] = parameters["stages"]
    assert stage["name"] == "sr256" and stage["model"] == job["stages"][0]["model"]
    assert (stage["sampler"], stage["steps"], stage["fidelity"]) == ("dpmpp_2m", 1, 0.6)


def test_greyscale_upload_comes_back_one_channel(service):
    client, runtime = service
    grey = photo(24, 24)[..., 0]
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 8, "Test camera"  # stored turned: 90° counter-clockwise
    job, result = upscale(client, runtime, png(Image.fromarray(grey), exif=exif))
    assert result.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.mode == "L" and image.size == (96, 96)
        assert image.getexif()[0x0112] == 1 and image.getexif()[0x010F] == "Test camera"
        assert json.loads(image.text["parameters"])["stages"][0]["steps"] == 1


def test_generation_as_jpeg_with_its_parameters(service):
    client, runtime = service
    body = {"class_id": 1, "size": 64, "seed": 3, "steps": 1, "format": "jpeg", "quality": 80}
    accepted = client.post("/v1/generations", json=body).json()
    run_stage(accepted["id"], "base64")
    result = client.get(accepted["links"]["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    assert result.headers["content-disposition"].endswith('.jpg"')
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
        parameters = read_parameters(image)
    assert parameters["class_id"] == 1 and parameters["class_name"] == "goldfish"
    assert parameters["seed"] == 3 and parameters["stages"][0]["sampler"] == "ddim"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"format": "gif"}, ["format", "'png', 'webp' or 'jpeg'"]),
        ({"format": "png", "quality": 80}, ["quality applies to webp and jpeg only"]),
        ({"format": "webp", "quality": 101}, ["quality", "less than or equal to 100"]),
        ({"format": "jpeg", "quality": 0}, ["quality", "greater than or equal to 1"]),
    ],
)
def test_bad_formats_and_qualities_name_what_is_allowed(service, fields, words):
    client, _ = service
    generation = client.post("/v1/generations", json={"class_id": 1, **fields})
    data = png(Image.fromarray(photo(16, 16)))
    upload = client.post(
        "/v1/upscales", data={k: str(v) for k, v in fields.items()}, files={"file": ("a", data)}
    )
    for response in (generation, upload):
        assert response.status_code == 422, response.text
        for word in words:
            assert word in response.json()["error"]


def test_jpeg_of_an_image_with_alpha_is_refused(service):
    client, _ = service
    data = png(Image.fromarray(np.dstack([photo(16, 16), disc(16, 16)]), "RGBA"))
    response = client.post("/v1/upscales", data={"format": "jpeg"}, files={"file": ("a.png", data)})
    assert response.status_code == 422
    assert "alpha channel, which jpeg cannot hold: ask for png or webp" in response.json()["error"]


def test_a_jpeg_upload_is_cleaned_for_its_quality_before_the_upscaler(service):
    """The file's quality (from its tables) reaches the job's record, and the first stage's
    pre-clean sees it; the same pixels sent as PNG run as they are."""
    from cascade.deblock import DeblockConfig, Deblocker

    client, runtime = service
    brighten = Deblocker(DeblockConfig(width=8, blocks=1))
    with torch.no_grad():
        brighten.tail.bias.fill_(0.5)  # +0.5 of [-1, 1]: about 64 grey levels, plain to see
    runtime.stage("sr256").deblocker = brighten.eval()
    buffer = io.BytesIO()
    Image.fromarray(photo(24, 32) // 2).save(buffer, format="JPEG", quality=70)
    jpeg_bytes = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
    jpeg_job, jpeg_result = upscale(client, runtime, jpeg_bytes, seed=3)
    png_job, png_result = upscale(client, runtime, png(Image.fromarray(decoded)), seed=3)
    assert jpeg_job["request"]["input"]["jpeg_quality"] == 70
    assert "jpeg_quality" not in png_job["request"]["input"]
    cleaned = np.asarray(Image.open(io.BytesIO(jpeg_result.content)), dtype=np.float64)
    plain = np.asarray(Image.open(io.BytesIO(png_result.content)), dtype=np.float64)
    assert cleaned.shape == plain.shape == (96, 128, 3)
    assert 40 < cleaned.mean() - plain.mean() < 80
