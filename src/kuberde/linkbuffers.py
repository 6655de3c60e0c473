"""Socket options that keep a mux link's queue in the session, where it is scheduled.

The session sends a new stream's first bytes or a keystroke ahead of bulk data
(`kuberde.mux.schedule`), but only among what it still holds. Whatever it has handed to the
kernel waits in FIFO order: on loopback the send buffer grows to 4 MiB and the receive
buffer to 32 MiB, so with four bulk uploads through `kuberde port-forward` a 1-byte round
trip took ~40 ms (ssh -L: 4 ms; `python -m bench --only loaded`). Capping the unsent part
of the send buffer (TCP_NOTSENT_LOWAT: the socket stops taking writes, the transport
pauses, the session keeps the rest) and the receive buffer (fixed, no autotuning) keeps
that queue to about a megabyte per direction and hop.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Protocol

__all__ = ["NOTSENT_LOWAT", "RECEIVE_BUFFER", "bound_kernel_buffers"]

#: Linux's value where the socket module does not name it (Python < 3.12 on some builds).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
#: Unsent bytes the kernel may hold for us: half a 256 KiB link message.
NOTSENT_LOWAT = 128 * 1024
#: Asked-for receive buffer; Linux doubles it for its bookkeeping (1 MiB in all).
RECEIVE_BUFFER = 512 * 1024


class _HasSocket(Protocol):
    """A transport, or aiohttp's client WebSocket: both name their socket this way."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def bound_kernel_buffers(connection: _HasSocket | None) -> None:
    """Cap what a mux link's TCP socket (TLS or not) queues in the kernel; a platform
    without an option keeps its default."""
    # asyncio and uvloop hand out a stand-in for the socket, with setsockopt and family.
    sock = connection.get_extra_info("socket") if connection is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
