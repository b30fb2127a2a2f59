"""Just enough RFC 6455 for the load generator and the fake Realtime server.

Both share one core and must cost far less than the target they measure, so they speak
websocket straight on asyncio transports: one bytes buffer per connection, no message
objects, no compression (never offered, so never negotiated). Client frames carry the
all-zero masking key: legal on the wire (no server can tell it from a random one) and it
makes masking a no-op for the sender. Frames received with a real key are unmasked with
the C helper that ships in the websockets wheel.

Supported: text and binary data frames, fragmented messages (reassembled), ping -> pong,
the close handshake. This is not a general websocket library.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel without its C extension

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        """XOR `data` with the repeated 4-byte `mask` (pure Python fallback)."""
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_KEY = b"\x00\x00\x00\x00"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1(key.strip().encode() + _GUID).digest()
    return base64.b64encode(digest).decode()


def frame_header(length: int, opcode: int = TEXT, masked: bool = False) -> bytes:
    """Header of a final frame of `length` payload bytes (with the zero key if masked)."""
    first = 0x80 | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 1 << 16:
        head = _LEN16.pack(first, mask_bit | 126, length)
    else:
        head = _LEN64.pack(first, mask_bit | 127, length)
    return head + ZERO_KEY if masked else head


def parse_head(raw: bytes) -> tuple[str, dict[str, str]]:
    """Start line and lower-cased header fields of an HTTP head (without the blank line)."""
    start, *lines = raw.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return start, fields


class WebSocketPeer(asyncio.Protocol):
    """Frame codec over an asyncio transport. Subclasses do their own HTTP handshake,
    then pass frame bytes to `feed()`, and implement `on_message`."""

    is_client = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.close_sent = False
        self._pending = b""
        self._fragments: list[bytes] | None = None
        self._fragment_op = TEXT

    def send_text(self, payload: bytes) -> None:
        """Send one text message (payload must be UTF-8)."""
        if self.transport is not None and not self.close_sent:
            self.transport.write(frame_header(len(payload), TEXT, self.is_client) + payload)

    def text_frame(self, payload: bytes) -> bytes:
        """One text frame as bytes, to be written together with others in one call."""
        return frame_header(len(payload), TEXT, self.is_client) + payload

    def send_close(self, code: int = 1000) -> None:
        """Start (or answer) the closing handshake."""
        if not self.close_sent:
            self._control(CLOSE, struct.pack("!H", code))
            self.close_sent = True

    def _control(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame_header(len(payload), opcode, self.is_client) + payload)

    def feed(self, data: bytes) -> None:
        """Parse complete frames from `data` (plus what an earlier call left over)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        end = len(data)
        pos = 0
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            key = None
            if b1 & 0x80:
                key = data[start : start + 4]
                start += 4
            stop = start + length
            if stop > end:
                break
            payload = data[start:stop]
            pos = stop
            if key is not None and key != ZERO_KEY:
                payload = apply_mask(payload, key)
            self._frame(b0, payload)
        if pos < end:
            self._pending = data[pos:]

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode, final = b0 & 0x0F, b0 & 0x80
        if opcode >= CLOSE:
            self._on_control(opcode, payload)
        elif opcode == CONTINUATION:
            if self._fragments is not None:
                self._fragments.append(payload)
                if final:
                    message, self._fragments = b"".join(self._fragments), None
                    self.on_message(self._fragment_op, message)
        elif not final:
            self._fragment_op, self._fragments = opcode, [payload]
        else:
            self.on_message(opcode, payload)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self._control(PONG, payload)
        elif opcode == CLOSE:
            if not self.close_sent:
                self._control(CLOSE, payload[:2])
                self.close_sent = True
            self.on_close_frame()
            if not self.is_client and self.transport is not None:
                self.transport.close()  # the server closes TCP first (RFC 6455 7.1.1)

    def on_close_frame(self) -> None:
        """The peer sent a close frame (it has already been answered)."""

    def on_message(self, opcode: int, payload: bytes) -> None:
        """One complete data message."""
        raise NotImplementedError
