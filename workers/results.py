"""A job's result file: the last stage's image encoded in the request's format, carrying what
the upload carried (alpha, greyscale, ICC profile, EXIF) and the parameters that made it."""

from __future__ import annotations

import logging

from torch import Tensor

from cascade.formats import Carried, Output, generation_parameters
from cascade.images import encode_image
from jobs.record import CARRIED, JobRecord
from jobs.store import result_name
from workers.runtime import Runtime

log = logging.getLogger(__name__)
# The request's fields a result file repeats (each stage's settings follow them); no job id, so
# the same request and seed make the same file, byte for byte.
REQUEST_FIELDS = ("class_id", "class_name", "size", "scale", "target_size", "filename")


def carried(runtime: Runtime, record: JobRecord) -> Carried:
    """What the result carries of the upload; plain RGB for a generation (or where it expired,
    which is logged: the result then lacks the upload's alpha, grey or metadata)."""
    data = runtime.jobs.get_tensor(record.id, CARRIED)
    if data is not None:
        return Carried.from_bytes(data)
    described = record.request.get("input") or {}
    if not isinstance(described, dict):
        return Carried()
    if described.get("mode", "RGB") != "RGB" or any(
        described.get(name) for name in ("icc_profile", "exif")
    ):
        log.warning(
            "job %s: what its upload carries (%s) expired before the last stage; the result "
            "is plain RGB",
            record.id,
            described.get("mode"),
        )
    return Carried()


def output(runtime: Runtime, record: JobRecord, stage: str) -> Output:
    """How the result of `record`, made by `stage` here, is written: the running stage's run as
    it applies to its model, earlier stages' as planned (None: that stage's default)."""
    latest = runtime.jobs.get(record.id) or record
    running = runtime.stage(stage)
    stages = [
        (planned.name, running.model.id, running.effective(planned.run))
        if planned.name == stage
        else (planned.name, latest.stage(planned.name, "model"), planned.run)
        for planned in record.plan
    ]
    request = record.request
    fields = {key: request.get(key) for key in REQUEST_FIELDS}
    parameters = generation_parameters(record.kind, record.seed, stages, **fields)
    quality = request.get("quality")
    return Output(
        record.output_format,  # type: ignore[arg-type]
        int(quality) if isinstance(quality, int) else None,
        carried(runtime, record),
        parameters,
    )


def encode_result(
    runtime: Runtime, record: JobRecord, stage: str, image: Tensor
) -> tuple[str, bytes, str]:
    """The result's file name in the job's folder, its bytes and its media type."""
    written = output(runtime, record, stage)
    return result_name(written.format), encode_image(image, written), written.media_type
