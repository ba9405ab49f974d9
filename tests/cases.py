"""The semantic case lists shared by every runtime's tests (asyncio, trio, blocking).

Each case: a name, the frame a raw-socket *client* sends after b"prior" data
(``build_frame`` keyword arguments; masked unless ``mask=False``), and the close
code our server must answer with. The reader must return b"prior", then fail
with a ProtocolError carrying that code.
"""

from __future__ import annotations

import pytest

from .rawpeer import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload

# (name, bytes the peer sends after b"prior" data, expected close code).
# Frames from a client must be masked: the builder masks unless told otherwise.
VIOLATIONS_TO_A_SERVER = [
    ("rsv1 without extension", dict(opcode=BINARY, payload=b"x", rsv=4), 1002),
    ("rsv2", dict(opcode=BINARY, payload=b"x", rsv=2), 1002),
    ("rsv3", dict(opcode=BINARY, payload=b"x", rsv=1), 1002),
    ("reserved opcode 0x3", dict(opcode=0x3, payload=b"x"), 1002),
    ("reserved opcode 0xB", dict(opcode=0xB, payload=b"x"), 1002),
    ("ping over 125 bytes", dict(opcode=PING, payload=b"p" * 126), 1002),
    ("fragmented ping", dict(opcode=PING, payload=b"p", fin=False), 1002),
    ("unmasked frame to a server", dict(opcode=BINARY, payload=b"x", mask=False), 1002),
    ("continuation with nothing to continue", dict(opcode=CONT, payload=b"x"), 1002),
    ("close payload of 1 byte", dict(opcode=CLOSE, payload=b"\x03"), 1002),
    ("close code 999", dict(opcode=CLOSE, payload=close_payload(999)), 1002),
    ("close code 1005 on the wire", dict(opcode=CLOSE, payload=close_payload(1005)), 1002),
    ("close code 5000", dict(opcode=CLOSE, payload=close_payload(5000)), 1002),
    ("invalid UTF-8 close reason", dict(opcode=CLOSE, payload=b"\x03\xe8\xff\xfe"), 1007),
    ("message over max_size", dict(opcode=BINARY, payload=b"m" * 2000), 1009),
]

# Issue 9: every reserved opcode, every control-frame limit, every close code
# RFC 6455 forbids on the wire (1004 reserved; 1005, 1006 and 1015 are for
# reporting only; codes outside 1000-4999).
VIOLATIONS_TO_A_SERVER += [
    *(
        (f"reserved opcode {op:#x}", dict(opcode=op, payload=b"x"), 1002)
        for op in (0x4, 0x5, 0x6, 0x7, 0xC, 0xD, 0xE, 0xF)
    ),
    ("empty frame with a reserved opcode", dict(opcode=0x3), 1002),
    ("pong over 125 bytes", dict(opcode=PONG, payload=b"p" * 126), 1002),
    ("close over 125 bytes", dict(opcode=CLOSE, payload=close_payload(1000, "r" * 124)), 1002),
    ("fragmented pong", dict(opcode=PONG, payload=b"p", fin=False), 1002),
    ("fragmented close", dict(opcode=CLOSE, payload=close_payload(1000), fin=False), 1002),
    ("rsv bits on a ping", dict(opcode=PING, payload=b"p", rsv=4), 1002),
    ("all three rsv bits", dict(opcode=BINARY, payload=b"x", rsv=7), 1002),
    ("unmasked ping to a server", dict(opcode=PING, payload=b"p", mask=False), 1002),
    (
        "unmasked close to a server",
        dict(opcode=CLOSE, payload=close_payload(1000), mask=False),
        1002,
    ),
    *(
        (f"close code {c} on the wire", dict(opcode=CLOSE, payload=close_payload(c)), 1002)
        for c in (0, 1004, 1006, 1015, 1016, 2999, 65535)
    ),
    ("close code 999 with a reason", dict(opcode=CLOSE, payload=close_payload(999, "r")), 1002),
    ("truncated UTF-8 close reason", dict(opcode=CLOSE, payload=b"\x03\xe8\xc3"), 1007),
    (
        "UTF-16 surrogate in a close reason",
        dict(opcode=CLOSE, payload=b"\x03\xe8\xed\xa0\x80"),
        1007,
    ),
]

VIOLATION_PARAMS = [
    pytest.param(frame, code, id=name) for name, frame, code in VIOLATIONS_TO_A_SERVER
]


# The same violations sent by a raw-socket *server* to our client: a server must
# not mask, so each frame's masking is flipped ("unmasked frame to a server"
# becomes "masked frame to a client"). The client is opened with max_size=1000.
def _to_a_client(name: str, frame: dict[str, object]) -> tuple[str, dict[str, object]]:
    masked = not frame.get("mask", True)
    if name == "unmasked frame to a server":
        name = "masked frame to a client"
    return name, {**frame, "mask": masked}


VIOLATIONS_TO_A_CLIENT = [
    (*_to_a_client(name, frame), code) for name, frame, code in VIOLATIONS_TO_A_SERVER
]

CLIENT_VIOLATION_PARAMS = [
    pytest.param(frame, code, id=name) for name, frame, code in VIOLATIONS_TO_A_CLIENT
]

# Violations that take more than one frame: (name, frames sent after b"prior"
# (``build_frame`` keyword arguments, masking left to the sender's side), the
# bytes the reader returns after b"prior" and before the error, the close code).
# A fragment is stream data as soon as it arrives, so the fragments before the
# violation are delivered.
SEQUENCE_VIOLATIONS = [
    (
        "new data frame inside a fragmented message",
        [dict(opcode=BINARY, payload=b"start", fin=False), dict(opcode=BINARY, payload=b"again")],
        b"start",
        1002,
    ),
    (
        "text frame inside a fragmented binary message",
        [dict(opcode=BINARY, payload=b"start", fin=False), dict(opcode=TEXT, payload=b"t")],
        b"start",
        1002,
    ),
    (
        "continuation after the final fragment",
        [
            dict(opcode=BINARY, payload=b"ab", fin=False),
            dict(opcode=CONT, payload=b"cd"),
            dict(opcode=CONT, payload=b"ef"),
        ],
        b"abcd",
        1002,
    ),
    (
        "close frame inside a fragmented message",
        [
            dict(opcode=BINARY, payload=b"start", fin=False),
            dict(opcode=CLOSE, payload=close_payload(1000)),
        ],
        b"start",
        1002,
    ),
    (
        "fragmented message growing over max_size",
        [
            dict(opcode=BINARY, payload=b"a" * 600, fin=False),
            dict(opcode=PING, payload=b"between"),
            dict(opcode=CONT, payload=b"b" * 600),
        ],
        b"a" * 600,
        1009,
    ),
    (
        "fragmented ping inside a fragmented message",
        [
            dict(opcode=BINARY, payload=b"start", fin=False),
            dict(opcode=PING, payload=b"p", fin=False),
        ],
        b"start",
        1002,
    ),
]

SEQUENCE_PARAMS = [
    pytest.param(frames, data, code, id=name) for name, frames, data, code in SEQUENCE_VIOLATIONS
]
