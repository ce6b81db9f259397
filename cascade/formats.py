"""Image files in and out: what an input carries besides its RGB pixels (alpha, greyscale, an
ICC profile, EXIF, 16 bits per channel), and the one encoder of results (`encode`): PNG written
band by band, WebP or JPEG, with the generation parameters inside.

The models see RGB only. A greyscale input runs as its grey replicated to RGB and comes back
one channel, the luma of the output (ITU-R 601, as Pillow's own conversion); an alpha plane is
upscaled by LANCZOS beside the model. Torch-free: the API decodes uploads with it.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageOps
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from cascade.stages import DEFAULT_QUALITY, LOSSY_FORMATS, MEDIA_TYPES, OutputFormat, StageRun

SOFTWARE = "cascade"
SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L", "I"})  # PNG's 16-bit greyscale
ACCEPTED_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"})
ORIENTATION = 0x0112  # the EXIF tag: applied to the pixels on input, so 1 (upright) on output
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
PARAMETERS_KEY = "parameters"  # the PNG iTXt keyword (and XMP property) holding the parameters
XMP_NAMESPACE = "urn:cascade:parameters:1"
LANCZOS_MARGIN = 4  # input rows a band reaches past its own (LANCZOS enlarging: 3)


class ImageModeError(ValueError):
    """An image whose pixel mode the service does not take."""


@dataclass(frozen=True, eq=False)
class Carried:
    """What an input carries to its output besides RGB: its colour (`mode`: RGB, or L for
    greyscale), its alpha plane (uint8 [h, w] at the input's size), ICC profile and EXIF (with
    the orientation reset: it is applied to the pixels), and its bits per channel (16 are
    reduced to 8)."""

    mode: Literal["RGB", "L"] = "RGB"
    alpha: np.ndarray | None = field(default=None, repr=False)
    icc_profile: bytes | None = field(default=None, repr=False)
    exif: bytes | None = field(default=None, repr=False)
    bits: int = 8
    jpeg_quality: int | None = None  # a JPEG input's quality, from its tables (`jpeg_quality`)

    @property
    def output_mode(self) -> str:
        """The result's Pillow mode: L, LA, RGB or RGBA."""
        return self.mode + ("A" if self.alpha is not None else "")

    @property
    def plain(self) -> bool:
        """Nothing to carry: 8-bit RGB with no alpha, profile or EXIF."""
        return self.output_mode == "RGB" and not self.icc_profile and not self.exif

    def describe(self) -> dict[str, object]:
        """What a job's request says of its input (JSON)."""
        described: dict[str, object] = {"mode": self.output_mode, "bits": self.bits}
        if self.bits > 8:
            described["note"] = f"{self.bits}-bit input reduced to 8 bits per channel"
        if self.icc_profile:
            described["icc_profile"] = True
        if self.exif:
            described["exif"] = True
        if self.jpeg_quality is not None:
            described["jpeg_quality"] = self.jpeg_quality
        return described

    def to_bytes(self) -> bytes:
        """safetensors bytes: the alpha plane as a tensor, the rest as metadata."""
        metadata = {"mode": self.mode, "bits": str(self.bits)}
        if self.jpeg_quality is not None:
            metadata["jpeg_quality"] = str(self.jpeg_quality)
        for name in ("icc_profile", "exif"):
            value = getattr(self, name)
            if value:
                metadata[name] = base64.b64encode(value).decode()
        arrays = {} if self.alpha is None else {"alpha": np.ascontiguousarray(self.alpha)}
        if not arrays:
            arrays = {"none": np.zeros(0, np.uint8)}  # safetensors needs one tensor
        return save_arrays(arrays, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> Carried:
        arrays = load_arrays(data)
        metadata = _metadata(data)
        binary = {
            name: base64.b64decode(metadata[name])
            for name in ("icc_profile", "exif")
            if name in metadata
        }
        mode = "L" if metadata.get("mode") == "L" else "RGB"
        quality = int(metadata["jpeg_quality"]) if "jpeg_quality" in metadata else None
        return cls(
            mode,
            arrays.get("alpha"),
            bits=int(metadata.get("bits", 8)),
            jpeg_quality=quality,
            **binary,
        )


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's `__metadata__` (the header is 8 bytes of length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def _png_bits(data: bytes) -> int:
    """A PNG's bits per channel from its header (IHDR is always the first chunk)."""
    return data[24] if data.startswith(PNG_SIGNATURE) and len(data) > 24 else 8


def _exif(image: Image.Image) -> bytes | None:
    """The image's EXIF with its orientation reset to 1 (None when it has none)."""
    exif = image.getexif()
    if not len(exif):
        return None
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    return exif.tobytes()


def read_image(source: str | Path | bytes) -> tuple[np.ndarray, Carried]:
    """An image file or encoded bytes as uint8 RGB [H, W, 3] (EXIF orientation applied; grey
    replicated to three channels), and what the output should carry of it (`Carried`)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as opened:
        icc_profile = opened.info.get("icc_profile") or None
        bits = 16 if opened.mode in SIXTEEN_BIT_GREY else _png_bits(data)
        image = ImageOps.exif_transpose(opened)  # a loaded copy, turned upright
        exif = _exif(opened)  # after the turn: it resets the tag the turn reads
        quality = jpeg_quality(opened)
    alpha = None
    mode: Literal["RGB", "L"] = "RGB"
    if image.mode in SIXTEEN_BIT_GREY:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
        return np.repeat(grey[..., None], 3, axis=-1), Carried("L", None, icc_profile, exif, 16)
    # (16-bit files are PNG or TIFF, never JPEG: no quality to carry.)
    if image.mode not in ACCEPTED_MODES:
        raise ImageModeError(
            f"images in PIL mode {image.mode} are not accepted: send 8- or 16-bit RGB or "
            "greyscale, with or without alpha"
        )
    if image.mode in ("P", "PA"):  # a palette: its colours, and its transparency as alpha
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("L", "LA", "1"):
        mode = "L"
    if image.mode in ("RGBA", "LA"):
        alpha = np.array(image.getchannel("A"))
    rgb = np.array(image.convert("RGB"))  # writable: torch may share its memory
    return rgb, Carried(mode, alpha, icc_profile, exif, bits, quality)


# The IJG's (libjpeg's) base tables, ITU-T T.81 Annex K, row-major: quality q scales them by
# 5000 / q below 50 and by 200 - 2q from 50, each entry rounded and kept within 1..255.
JPEG_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def ijg_table(quality: int) -> list[int]:
    """The luminance quantisation table libjpeg writes at `quality` (1..100)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (entry * scale + 50) // 100)) for entry in JPEG_LUMA_TABLE]


def jpeg_quality(image: Image.Image) -> int | None:
    """A JPEG's quality on libjpeg's 1..100 scale, from its luminance quantisation table: the
    quality whose IJG table has the nearest sum (order-free, so zigzag or row-major tables
    agree; a camera's own tables get the IJG quality that quantises as coarsely). None for
    other formats or a JPEG without tables."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not tables:
        return None
    luma_table = tables[min(tables)]
    total = sum(luma_table) * 64 / max(1, len(luma_table))
    return min(range(1, 101), key=lambda q: (abs(sum(ijg_table(q)) - total), -q))


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint8 [...] grey: ITU-R 601 weights in 16-bit fixed point, the
    integer formula of Pillow's RGB -> L conversion."""
    wide = rgb.astype(np.uint32)
    grey = wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000
    return (grey >> 16).astype(np.uint8)


class AlphaPlane:
    """An alpha plane (uint8 [h, w]) LANCZOS-resized to `height` x `width`, a band of rows at
    a time. At a whole scale factor each band is resized from a crop of the input rows it
    reaches, equal to the whole plane's resize, so the output plane never exists whole; at any
    other ratio (a target size) the plane is resized whole once."""

    def __init__(self, alpha: np.ndarray, height: int, width: int):
        self.source = Image.fromarray(alpha)
        self.height, self.width = height, width
        small_h, small_w = alpha.shape
        scale = height // small_h
        self.scale = scale if (height, width) == (scale * small_h, scale * small_w) else None
        self.whole = None
        if self.scale is None:
            resized = self.source.resize((width, height), Image.Resampling.LANCZOS)
            self.whole = np.asarray(resized)

    def rows(self, top: int, count: int) -> np.ndarray:
        """Output rows top .. top + count - 1, uint8 [count, width]."""
        if self.whole is not None:
            return self.whole[top : top + count]
        scale, small_h = self.scale, self.source.height
        assert scale is not None
        y0 = max(0, top // scale - LANCZOS_MARGIN)
        y1 = min(small_h, -(-(top + count) // scale) + LANCZOS_MARGIN)
        crop = self.source.crop((0, y0, self.source.width, y1))
        band = crop.resize((self.width, (y1 - y0) * scale), Image.Resampling.LANCZOS)
        offset = top - y0 * scale
        return np.asarray(band)[offset : offset + count]


@dataclass(frozen=True, eq=False)
class Output:
    """How a result is written: its format, the lossy formats' quality (1..100), what the input
    carries (`Carried`) and the generation parameters embedded in the file."""

    format: OutputFormat = "png"
    quality: int | None = None
    carried: Carried = field(default_factory=Carried)
    parameters: dict[str, object] | None = None

    def __post_init__(self) -> None:
        check_output(self.format, self.quality, self.carried.alpha is not None)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def generation_parameters(
    kind: str,
    seed: int,
    stages: Iterable[tuple[str, str | None, StageRun]],
    **request: object,
) -> dict[str, object]:
    """What a result file says of how it was made (JSON, embedded by `encode`): the kind, the
    seed, the request's fields given in `request` (None left out), and each stage's name, model
    id and run (sampler, steps, eta, guidance, colour fix, fidelity, low band; None left out)."""
    return {
        "software": SOFTWARE,
        "kind": kind,
        "seed": seed,
        **{key: value for key, value in request.items() if value is not None},
        "stages": [
            {
                "name": name,
                "model": model,
                **{key: value for key, value in asdict(run).items() if value is not None},
            }
            for name, model, run in stages
        ],
    }


def read_parameters(image: Image.Image) -> dict[str, object] | None:
    """The parameters `encode` embedded in an opened result (None: it holds none)."""
    text = image.info.get(PARAMETERS_KEY)
    if text is None and "xmp" in image.info:
        xmp = image.info["xmp"]
        root = ElementTree.fromstring(xmp.decode() if isinstance(xmp, bytes) else xmp)
        found = root.find(f".//{{{XMP_NAMESPACE}}}{PARAMETERS_KEY}")
        text = None if found is None else found.text
    return None if text is None else json.loads(text)


def check_output(format: str, quality: int | None, alpha: bool = False) -> None:
    """A format, quality and input the encoder can write; ValueError naming what is allowed."""
    if format not in MEDIA_TYPES:
        raise ValueError(f"format must be one of {', '.join(MEDIA_TYPES)}, got {format!r}")
    if quality is not None:
        if format not in LOSSY_FORMATS:
            raise ValueError(
                f"quality applies to {' and '.join(LOSSY_FORMATS)} only; png is lossless: "
                "leave quality out"
            )
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {quality}")
    if alpha and format == "jpeg":
        raise ValueError(
            "the image has an alpha channel, which jpeg cannot hold: ask for png or webp"
        )


def encode(
    out: BinaryIO, height: int, width: int, bands: Iterable[np.ndarray], output: Output
) -> None:
    """Write the result whose RGB rows arrive as uint8 bands [rows, width, 3], top to bottom:
    greyscale as its luma, the carried alpha resized beside it, the ICC profile and EXIF, the
    parameters in an iTXt chunk (PNG) or XMP (WebP, JPEG). PNG is encoded as the bands come;
    WebP and JPEG encode the whole image (its uint8 pixels are assembled first)."""
    carried = output.carried
    alpha = None if carried.alpha is None else AlphaPlane(carried.alpha, height, width)

    def channels() -> Iterator[np.ndarray]:
        top = 0
        for band in bands:
            planes = [luma(band)[..., None]] if carried.mode == "L" else [band]
            if alpha is not None:
                planes.append(alpha.rows(top, band.shape[0])[..., None])
            top += band.shape[0]
            yield np.concatenate(planes, axis=-1) if len(planes) > 1 else planes[0]

    text = json.dumps(output.parameters or {}, sort_keys=True)
    if output.format == "png":
        chunks = [_itxt(PARAMETERS_KEY, text)] if output.parameters else []
        if carried.icc_profile:
            chunks.insert(0, _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(carried.icc_profile)))
        if carried.exif:
            exif = carried.exif.removeprefix(b"Exif\x00\x00")  # PNG's eXIf holds bare TIFF data
            chunks.append(_chunk(b"eXIf", exif))
        write_png(out, height, width, channels(), chunks=chunks)
        return
    pixels, top = None, 0
    for band in channels():  # one uint8 copy of the output, filled band by band
        if pixels is None:
            pixels = np.empty((height, width, band.shape[-1]), np.uint8)
        pixels[top : top + band.shape[0]] = band[: height - top]
        top += band.shape[0]
    if pixels is None or top != height:
        raise ValueError(f"the bands held {top} rows for an image of {height}")
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    options: dict[str, object] = {"quality": output.quality or DEFAULT_QUALITY}
    if output.parameters:
        options["xmp"] = xmp_packet(text)
    if carried.icc_profile:
        options["icc_profile"] = carried.icc_profile
    if carried.exif:
        options["exif"] = carried.exif
    image.save(out, format=output.format.upper(), **options)


def encode_bytes(
    height: int, width: int, bands: Iterable[np.ndarray], output: Output = Output()
) -> bytes:
    buffer = io.BytesIO()
    encode(buffer, height, width, bands, output)
    return buffer.getvalue()


def save_bands(
    path: str | Path, height: int, width: int, bands: Iterable[np.ndarray], output: Output
) -> Path:
    """`encode` into a file (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        encode(out, height, width, bands, output)
    return path


def xmp_packet(parameters: str) -> bytes:
    """An XMP packet holding the parameters' JSON as one property of this project's namespace."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:cascade="{XMP_NAMESPACE}">'
        f"<cascade:{PARAMETERS_KEY}>{escape(parameters)}</cascade:{PARAMETERS_KEY}>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    ).encode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _itxt(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk (UTF-8 text, no language tag)."""
    return _chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode())


def write_png(
    out: BinaryIO,
    height: int,
    width: int,
    bands: Iterable[np.ndarray],
    level: int = 6,
    chunks: Iterable[bytes] = (),
) -> None:
    """Encode an 8-bit PNG from bands of rows (uint8 [rows, width, channels], top to bottom;
    1 to 4 channels: grey, grey+alpha, RGB, RGBA, from the first band) as they arrive, so the
    image never has to exist whole: each band is filtered (PNG's Sub filter) and fed to one
    zlib stream, written as an IDAT chunk. `chunks` (encoded) go between IHDR and the data."""
    out.write(PNG_SIGNATURE)
    compressor = zlib.compressobj(level)
    rows, channels = 0, None
    for band in bands:
        if channels is None:
            channels = band.shape[-1] if band.ndim == 3 else 0
            if channels not in PNG_COLOUR_TYPES:
                raise ValueError(f"a band must be uint8 [rows, {width}, 1..4], got {band.shape}")
            colour = PNG_COLOUR_TYPES[channels]
            out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))
            for chunk in chunks:
                out.write(chunk)
        if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, channels):
            raise ValueError(f"a band must be uint8 [rows, {width}, {channels}], got {band.shape}")
        step = channels
        lines = band.reshape(band.shape[0], width * step)
        filtered = np.empty((lines.shape[0], width * step + 1), dtype=np.uint8)
        filtered[:, 0] = 1  # Sub: each byte minus the same channel of the pixel to its left
        filtered[:, 1 : 1 + step] = lines[:, :step]
        np.subtract(lines[:, step:], lines[:, :-step], out=filtered[:, 1 + step :])
        if data := compressor.compress(filtered.tobytes()):
            out.write(_chunk(b"IDAT", data))
        rows += lines.shape[0]
    if rows != height:
        raise ValueError(f"the bands held {rows} rows for an image of {height}")
    out.write(_chunk(b"IDAT", compressor.flush()))
    out.write(_chunk(b"IEND", b""))
