"""Opening the OpenAI Realtime websocket, within a deadline.

GA protocol: `Authorization: Bearer <key>` and nothing else (an `OpenAI-Beta` header now
gets the session closed). Transient failures (refused connections, timeouts, 5xx, 429)
are retried with a short backoff, but never past the deadline: the caller is listening
to silence meanwhile, and the contract allows them at most 5 s of it. Authentication and
"not found" answers are final at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

#: Server events can be large (a full session, a long transcript); audio deltas are small.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_BACKOFF_S = (0.15, 0.4, 0.8)
_FINAL_STATUSES = frozenset({400, 401, 403, 404})

#: A Realtime peer that stops answering (half-open TCP, a black-holed route) is noticed
#: by keepalive pings: no pong within PING_TIMEOUT_S of a ping sent every PING_INTERVAL_S
#: closes the socket (after at most CLOSE_TIMEOUT_S of closing handshake), and the call's
#: media stream with it: about 3.3 s in the worst case, inside the contract's 5 s of
#: silence. The library defaults (20 s + 20 s + 10 s) would leave ~50 s of silence.
PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 0.25

#: No permessage-deflate: base64 mu-law barely compresses, and deflate cost 15-25 % more
#: CPU and twice the memory per call in `make load` (bench/load.py, --no-compression).

#: The websockets library logs the upgrade request's headers at DEBUG, bearer token
#: included. Its logger for our connections never goes below INFO, whatever LOG_LEVEL is.
_WS_LOGGER = logging.getLogger("app.realtime_socket.websockets")
_WS_LOGGER.setLevel(logging.INFO)


class RealtimeUnavailable(Exception):
    """The Realtime socket could not be opened in time; the message says why (no secrets)."""


@dataclass(frozen=True, slots=True)
class RealtimeEndpoint:
    """Where and how to connect. The key never appears in repr or logs."""

    url: str
    api_key: str = field(repr=False)


async def open_realtime(endpoint: RealtimeEndpoint, timeout_s: float) -> ClientConnection:
    """Connect, retrying transient failures, and give up after `timeout_s` in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    reason = "timeout"
    for attempt in range(len(_BACKOFF_S) + 1):
        remaining = deadline - loop.time()
        if remaining <= 0.05:
            break
        try:
            async with asyncio.timeout(remaining):
                return await connect(
                    endpoint.url,
                    additional_headers=headers,
                    open_timeout=None,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    compression=None,
                    max_size=MAX_MESSAGE_BYTES,
                    user_agent_header="twilio-realtime-bridge",
                    logger=_WS_LOGGER,
                )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = f"http_{status}"
            if status in _FINAL_STATUSES:
                raise RealtimeUnavailable(reason) from None
        except TimeoutError:
            reason = "timeout"
        except (OSError, InvalidHandshake) as exc:
            reason = type(exc).__name__
        if attempt < len(_BACKOFF_S):
            await asyncio.sleep(min(_BACKOFF_S[attempt], max(0.0, deadline - loop.time())))
    raise RealtimeUnavailable(reason)
