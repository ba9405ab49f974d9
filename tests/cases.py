"""The semantic case lists shared by every runtime's tests (asyncio, trio, blocking).

Each case: a name, the frame a raw-socket *client* sends after b"prior" data
(``build_frame`` keyword arguments; masked unless ``mask=False``), and the close
code our server must answer with. The reader must return b"prior", then fail
with a ProtocolError carrying that code.
"""

from __future__ import annotations

import pytest

from .rawpeer import BINARY, CLOSE, CONT, PING, close_payload

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

VIOLATION_PARAMS = [
    pytest.param(frame, code, id=name) for name, frame, code in VIOLATIONS_TO_A_SERVER
]
