"""The policy core driven by frames alone: no sockets, no event loop (h11-style)."""

from __future__ import annotations

import pytest
from websockets.exceptions import PayloadTooBig
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Close, Opcode

from ws_stream import AbnormalClosureError, ProtocolError, StreamOptions, TextFrameError
from ws_stream._options import split_options
from ws_stream._policy import EventHub, State, Step, StreamPolicy
from ws_stream.events import Closed, CloseReceived, Error, PingReceived, PongReceived

B, T, C = Opcode.BINARY, Opcode.TEXT, Opcode.CONT


def test_binary_frames_are_data_and_empty_ones_nothing() -> None:
    p = StreamPolicy()
    assert p.receive_frame(B, b"abc", True) == Step(b"abc")
    assert p.receive_frame(B, b"", True) == Step()
    assert p.receive_frame(B, b"x", False) == Step(b"x")
    assert p.receive_frame(C, b"y", True) == Step(b"y")
    assert p.state is State.OPEN


def test_text_frame_fails_with_1003() -> None:
    p = StreamPolicy()
    step = p.receive_frame(T, b"hi", True)
    assert step.data is None
    assert step.failure is not None and step.failure.code == 1003
    assert step.failure.reason == "text frames are not supported"
    assert isinstance(step.failure.error, TextFrameError)
    assert step.event == Error(step.failure.error)
    assert p.state is State.FAILED
    # Everything after a failure is discarded.
    assert p.receive_frame(B, b"late", True) == Step()
    assert p.receive_frame(Opcode.PING, b"", True) == Step()


def test_text_as_bytes_validates_utf8_across_fragments() -> None:
    p = StreamPolicy(on_text="bytes")
    euro = "€".encode()
    assert p.receive_frame(T, euro[:1], False) == Step(euro[:1])
    assert p.receive_frame(C, euro[1:], True) == Step(euro[1:])
    # A continuation of a binary message after a text one is binary again.
    assert p.receive_frame(B, b"\xff", False) == Step(b"\xff")
    assert p.receive_frame(C, b"\xfe", True) == Step(b"\xfe")
    bad = p.receive_frame(T, b"\xff", True)
    assert bad.failure is not None and bad.failure.code == 1007
    assert isinstance(bad.failure.error, ProtocolError)


def test_truncated_utf8_at_end_of_text_message_is_1007() -> None:
    p = StreamPolicy(on_text="bytes")
    step = p.receive_frame(T, "€".encode()[:2], True)
    assert step.failure is not None and step.failure.code == 1007


def test_control_frames_are_events() -> None:
    p = StreamPolicy()
    assert p.receive_frame(Opcode.PING, b"p", True) == Step(event=PingReceived(b"p"))
    assert p.receive_frame(Opcode.PONG, b"q", True) == Step(event=PongReceived(b"q"))
    close = Close(4001, "bye").serialize()
    step = p.receive_frame(Opcode.CLOSE, close, True)
    assert step == Step(event=CloseReceived(4001, "bye"), eof=True)
    assert p.state is State.ENDED
    assert p.receive_frame(Opcode.CLOSE, close, True) == Step()


def test_empty_close_frame_reports_1005() -> None:
    p = StreamPolicy()
    assert p.receive_frame(Opcode.CLOSE, b"", True).event == CloseReceived(1005, "")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (WsProtocolError("reserved bits must be 0"), 1002),
        (PayloadTooBig(2000, 1000), 1009),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 1007),
    ],
)
def test_violations_caught_by_websockets(exc: Exception, code: int) -> None:
    p = StreamPolicy()
    p.receive_frame(B, b"before", True)
    step = p.parser_failed(exc, code)
    assert step.failure is None  # websockets already sent the close frame
    assert isinstance(step.event, Error)
    assert isinstance(p.error, ProtocolError) and p.error.code == code
    assert p.error.__cause__ is exc
    assert f"closed with {code}" in str(p.error)


def test_eof_in_a_frame_is_not_a_violation_but_an_abnormal_closure() -> None:
    p = StreamPolicy()
    assert p.parser_failed(EOFError("unexpected end of stream"), 1006) == Step()
    ending = p.connection_lost(None, None, EOFError("unexpected end of stream"))
    assert isinstance(ending.error, AbnormalClosureError)
    assert isinstance(ending.error, ConnectionResetError)
    assert ending.events == (Error(ending.error), Closed(1006, "", clean=False))


def test_clean_and_unclean_endings() -> None:
    p = StreamPolicy()
    p.receive_frame(Opcode.CLOSE, Close(1000, "").serialize(), True)
    ending = p.connection_lost(Close(1000, ""), Close(1000, ""))
    assert ending.error is None
    assert ending.events == (Closed(1000, "", clean=True),)

    p = StreamPolicy()
    p.receive_frame(T, b"x", True)  # we failed with 1003; the peer never answered
    ending = p.connection_lost(None, Close(1003, "text frames are not supported"))
    assert ending.error is None  # the reader already ends with TextFrameError
    assert ending.events == (Closed(1006, "", clean=False),)


def test_event_hub_bounds_each_subscriber_and_keeps_closed_last() -> None:
    hub = EventHub(maxlen=2)
    woken: list[int] = []
    fast = hub.subscribe(lambda: woken.append(1))
    slow = hub.subscribe(lambda: None)
    hub.publish(PingReceived(b"1"))
    assert fast.pop() == PingReceived(b"1")
    for i in range(2, 6):
        hub.publish(PingReceived(str(i).encode()))
    hub.publish(Closed(1000, "", True))
    hub.publish(PingReceived(b"after"))  # nothing after Closed
    assert list(slow.queue) == [PingReceived(b"5"), Closed(1000, "", True)]
    assert slow.dropped == 4
    assert fast.dropped == 3
    assert len(woken) == 6
    late = hub.subscribe(lambda: None)
    assert late.pop() == Closed(1000, "", True)
    assert late.finished()


def test_unsubscribe_stops_delivery() -> None:
    hub = EventHub()
    sub = hub.subscribe(lambda: None)
    hub.unsubscribe(sub)
    hub.publish(PingReceived(b""))
    assert sub.pop() is None


@pytest.mark.parametrize(
    "bad",
    [
        {"limit": 0},
        {"max_frame_size": 0},
        {"max_size": 0},
        {"close_timeout": -1},
        {"close_timeout": None},
        {"open_timeout": -0.5},
        {"compression": "gzip"},
        {"on_text": "latin-1"},
        {"max_events": 0},
    ],
)
def test_options_reject_bad_values_with_a_clear_message(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        StreamOptions(**bad)  # type: ignore[arg-type]


def test_split_options_passes_unknown_ones_to_websockets() -> None:
    ours, rest = split_options({"limit": 10, "user_agent_header": "x", "max_size": None})
    assert ours.limit == 10 and ours.max_size is None
    assert rest == {"user_agent_header": "x"}
    assert ours.websockets_kwargs()["compression"] is None
