"""One simulated Twilio media stream (bidirectional `<Connect><Stream>`), as an asyncio
protocol on raw websocket framing, and the counters all callers share.

Uplink: `tick()` (called every 20 ms by the load generator) sends one `media` message of
160 bytes of mu-law whose first 12 bytes are a tag (call, sequence, send time).

Downlink, as Twilio behaves: `media` from the target is timed by the tag in its audio and
queued for playout at 8 bytes per ms, in arrival order; a `mark` is echoed once the audio
queued before it has played (at once if nothing is queued; otherwise from the next tick,
so up to 20 ms late); `clear` empties the queue and echoes every pending mark at once.
Anything the target sends that Twilio would reject (binary frames, bad JSON, another
stream's streamSid) is counted.
"""

from __future__ import annotations

import asyncio
import base64
import os
from array import array
from binascii import a2b_base64
from collections import Counter, deque
from typing import cast

import orjson

from bench import tags
from bench.wire import BINARY, WebSocketPeer, accept_key, parse_head

MEDIA_TEMPLATE = (
    b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    b'"timestamp":"%d","payload":"%s%s"},"streamSid":"%s"}'
)
MARK_TEMPLATE = b'{"event":"mark","sequenceNumber":"%d","streamSid":"%s","mark":{"name":%s}}'
US_PER_BYTE = 125  # playout of 8 kHz mu-law: 8 bytes per ms


class Crowd:
    """State shared by all callers: the clock, what they measured, what went wrong."""

    def __init__(self, epoch_ns: int) -> None:
        self.epoch_ns = epoch_ns
        self.now_us = tags.clock_us(epoch_ns)
        self.counters: Counter[str] = Counter()
        self.unknown_events: Counter[str] = Counter()
        self.down_sent_at = array("I")
        self.down_latency = array("i")
        self.clears: list[tuple[int, int]] = []
        self.in_window = False
        self.sent_in_window = 0


class Caller(WebSocketPeer):
    """One call's media stream, from the upgrade request to the close handshake."""

    is_client = True

    def __init__(
        self,
        crowd: Crowd,
        index: int,
        target: str,
        path: str,
        signature: str,
        start: dict,
    ) -> None:
        super().__init__()
        self.crowd = crowd
        self.index = index
        self.start = start
        self.sid = start["streamSid"]
        self.sid_bytes = self.sid.encode()
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nX-Twilio-Signature: {signature}\r\n"
            "User-Agent: Twilio.TmeWs/1.0\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.upgraded = False
        self.head = b""
        self.streaming = False
        self.stopped = False
        self.seq = 0
        self.msg_seq = 1
        self.play_end_us = 0
        self.marks: deque[tuple[int, bytes]] = deque()

    # -- handshake and teardown -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.feed(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        status, fields = parse_head(self.head[:end])
        rest, self.head = self.head[end + 4 :], b""
        code = status.split(" ", 2)[1] if " " in status else "?"
        if code != "101" or fields.get("sec-websocket-accept") != accept_key(self.key):
            self._fail_open(f"upgrade_{code}" if code != "101" else "bad_accept")
            return
        if fields.get("sec-websocket-extensions"):
            self.crowd.counters["extension_forced_by_target"] += 1
        self.upgraded = True
        self.opened.set_result(None)
        if rest:
            self.feed(rest)

    def _fail_open(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.streaming = False
        self._fail_open("closed_during_upgrade")
        if self.upgraded and not self.stopped:
            self.crowd.counters["calls_dropped_by_target"] += 1
        if not self.closed.done():
            self.closed.set_result(None)

    def on_close_frame(self) -> None:
        self.streaming = False
        if not self.stopped:
            self.crowd.counters["calls_closed_by_target"] += 1
            self.stopped = True
        if self.transport is not None:
            self.transport.close()

    # -- caller -> target -----------------------------------------------------------------

    def begin(self) -> None:
        """Send `connected` and `start`, then stream from the next tick on."""
        self.send_text(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        message = {
            "event": "start",
            "sequenceNumber": "1",
            "start": self.start,
            "streamSid": self.sid,
        }
        self.send_text(orjson.dumps(message))
        self.streaming = True

    def tick(self) -> None:
        """Send one 20 ms frame, with the mark echoes whose audio has finished playing."""
        if not self.streaming or self.close_sent:
            return
        crowd = self.crowd
        now = (tags.mono_ns() - crowd.epoch_ns) // 1000
        self.seq = seq = self.seq + 1
        self.msg_seq = msg_seq = self.msg_seq + 1
        tag = base64.b64encode(tags.UPLINK.pack(tags.MAGIC, self.index, seq, now & 0xFFFFFFFF))
        out = self.text_frame(
            MEDIA_TEMPLATE % (msg_seq, seq, seq * 20, tag, tags.UPLINK_PAD_B64, self.sid_bytes)
        )
        marks = self.marks
        while marks and marks[0][0] <= now:  # due echoes ride in the same write
            out += self._echo(marks.popleft()[1])
        assert self.transport is not None
        self.transport.write(out)
        if crowd.in_window:
            crowd.sent_in_window += 1

    def _echo(self, name_json: bytes) -> bytes:
        self.msg_seq += 1
        self.crowd.counters["marks_echoed"] += 1
        return self.text_frame(MARK_TEMPLATE % (self.msg_seq, self.sid_bytes, name_json))

    def stop(self) -> None:
        """Hang up as Twilio does: `stop`, then the close handshake."""
        self.streaming = False
        self.stopped = True
        self.msg_seq += 1
        stop = {"accountSid": self.start["accountSid"], "callSid": self.start["callSid"]}
        message = {
            "event": "stop",
            "sequenceNumber": str(self.msg_seq),
            "streamSid": self.sid,
            "stop": stop,
        }
        self.send_text(orjson.dumps(message))
        self.send_close(1000)

    # -- target -> caller -----------------------------------------------------------------

    def on_message(self, opcode: int, payload: bytes) -> None:
        crowd = self.crowd
        now = crowd.now_us()
        if opcode == BINARY:
            crowd.counters["binary_frames_from_target"] += 1  # Twilio: warning 31950
        try:
            msg = orjson.loads(payload)
            event = msg["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            crowd.counters["bad_json_from_target"] += 1
            return
        if msg.get("streamSid") != self.sid:
            crowd.counters["wrong_streamsid_from_target"] += 1
        if event == "media":
            self._on_media(msg, now)
        elif event == "mark":
            crowd.counters["marks_from_target"] += 1
            try:
                name = orjson.dumps(msg["mark"]["name"])
            except (KeyError, TypeError):
                crowd.counters["bad_mark_from_target"] += 1
                return
            if self.play_end_us <= now:
                if not self.close_sent:
                    assert self.transport is not None
                    self.transport.write(self._echo(name))
            else:
                self.marks.append((self.play_end_us, name))
        elif event == "clear":
            crowd.counters["clears_from_target"] += 1
            crowd.clears.append((self.index, now))
            if self.marks and not self.close_sent:
                assert self.transport is not None
                self.transport.write(b"".join(self._echo(name) for _, name in self.marks))
            self.marks.clear()
            self.play_end_us = now
        else:
            crowd.unknown_events[str(event)] += 1

    def _on_media(self, msg: dict, now: int) -> None:
        crowd = self.crowd
        try:
            raw = a2b_base64(msg["media"]["payload"])
        except (KeyError, TypeError, ValueError):
            crowd.counters["bad_media_from_target"] += 1
            return
        crowd.counters["media_from_target"] += 1
        self.play_end_us = max(self.play_end_us, now) + len(raw) * US_PER_BYTE
        for i in tags.find_tags(raw):
            _, call, _, _, sent = tags.DOWNLINK.unpack_from(raw, i)
            if call != self.index:
                crowd.counters["downlink_misrouted"] += 1
            crowd.down_sent_at.append(sent)
            crowd.down_latency.append(now - sent)
