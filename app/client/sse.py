"""Following a job's live events: server-sent events parsed from lines, and the cursor that lets a
broken stream resume where it stopped.

The server sends each event with its ``seq`` as the SSE id, replays everything after ``Last-Event-ID``
when a client reconnects, and ends the stream after the job's terminal status event. ``EventCursor``
holds the last seq seen, drops an event seen twice, and counts the reconnections that brought nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from app.client.config import Reconnects, Retry
from app.client.errors import ClientError
from app.client.models import JobEvent


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Lines (line endings removed) in, events out, by the rules of the HTML event-stream format."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry:` and unknown fields: the reconnection delay is the client's Retry policy

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data), id=self._id)
        self._event, self._data = "", []
        return event


class EventCursor:
    """Where a job's event stream stands: the last seq delivered, whether the terminal event came, and
    the reconnections in a row that delivered nothing."""

    def __init__(self, job_id: str, after: int, retry: Retry) -> None:
        self.job_id = job_id
        self.last_seq = after
        self.done = False
        self.reconnects = Reconnects(retry, f"the event stream of job {job_id}")

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_seq > 0:
            headers["Last-Event-ID"] = str(self.last_seq)
        return headers

    def take(self, sse: ServerSentEvent) -> JobEvent | None:
        """The job event an SSE message carries, or None for a ping or a repeat of one already seen."""
        if sse.event == "ping":
            return None
        try:
            event = JobEvent.model_validate(json.loads(sse.data))
        except (ValueError, ValidationError) as error:
            raise ClientError(f"job {self.job_id}: an unreadable event in the stream ({error})") from None
        if event.seq <= self.last_seq:
            return None
        self.last_seq = event.seq
        self.reconnects.progressed()
        self.done = event.is_terminal
        return event

    def failed(self, why: str) -> float:
        """A broken or ended connection: the seconds to wait before reconnecting (``ConnectionError``
        once the reconnections are spent)."""
        return self.reconnects.next_delay(f"after seq {self.last_seq}: {why}")
