"""Server-Sent Events as the job's events route sends them: `id`, `event` and JSON `data`
lines, a blank line ending each event, comment lines (`:` pings) ignored."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TERMINAL_EVENTS = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Event:
    """One event of a job's log: its id (send it back as Last-Event-ID), type and data."""

    id: str | None
    type: str
    data: Any

    @property
    def terminal(self) -> bool:
        """The job's last event: its data is the job's view at its end."""
        return self.type in TERMINAL_EVENTS


class EventParser:
    """Feed it the stream's lines one at a time; it returns each event as its blank line
    arrives (the SSE spec's field rules, for the fields this service sends)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            self._type = ""
            return None
        text = "\n".join(self._data)
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        event = Event(self._id, self._type or "message", data)
        self._type, self._data = "", []  # the id persists, as the spec says
        return event
