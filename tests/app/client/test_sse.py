"""The event-stream parser, on the edge cases the HTML spec allows a server."""

from __future__ import annotations

from app.client.sse import ServerSentEvent, SSEDecoder


def decode(lines: list[str]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for line in lines if (event := decoder.feed(line)) is not None]


def test_events_comments_and_multiline_data():
    lines = [": ping - 2025-01-01", "", "id: 3", "event: epoch", 'data: {"a":', "data:1}", "", "retry: 10", ""]
    assert decode(lines) == [ServerSentEvent(event="epoch", data='{"a":\n1}', id="3")]


def test_an_event_without_data_is_not_dispatched_and_the_id_carries_over():
    lines = ["id: 7", "event: status", "", "data: x", ""]
    assert decode(lines) == [ServerSentEvent(event="message", data="x", id="7")]
