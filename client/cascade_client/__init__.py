"""A Python client for the cascade service: submit generations and upscales, follow them
(Server-Sent Events, or polling where a proxy stops the stream), cancel them and download their
images. Torch-free: it needs only httpx.

    from cascade_client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        accepted = client.generate(class_name="tabby", size=256, seed=42)
        job = client.wait(accepted.id, timeout=600)
        client.download(job.id, "tabby.png")
"""

from cascade_client.async_client import AsyncClient
from cascade_client.client import Client
from cascade_client.errors import APIError, CascadeError, WaitTimeout
from cascade_client.events import TERMINAL_EVENTS, Event
from cascade_client.models import Accepted, Job, Links, Stage, StageWeights
from cascade_client.retry import RetryPolicy

__all__ = [
    "APIError",
    "Accepted",
    "AsyncClient",
    "CascadeError",
    "Client",
    "Event",
    "Job",
    "Links",
    "RetryPolicy",
    "Stage",
    "StageWeights",
    "TERMINAL_EVENTS",
    "WaitTimeout",
]
