"""Stream multiplexing (yamux v0) over one WebSocket: sans-I/O codec plus asyncio session.

No aiohttp here: the WebSocket adapter is `kuberde.wslink`.
"""

from kuberde.mux.frame import Flag, Frame, FrameDecoder, FrameType, GoAwayCode, ProtocolError
from kuberde.mux.preamble import (
    Preamble,
    PreambleError,
    PreambleReader,
    encode_preamble,
    read_preamble,
)
from kuberde.mux.session import (
    BULK_FRAME,
    BULK_WINDOW,
    INITIAL_WINDOW,
    Link,
    Session,
    SessionClosed,
    SessionConfig,
    Stream,
    StreamReset,
    StreamSink,
)

__all__ = [
    "BULK_FRAME",
    "BULK_WINDOW",
    "INITIAL_WINDOW",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayCode",
    "Link",
    "Preamble",
    "PreambleError",
    "PreambleReader",
    "ProtocolError",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "Stream",
    "StreamReset",
    "StreamSink",
    "encode_preamble",
    "read_preamble",
]
