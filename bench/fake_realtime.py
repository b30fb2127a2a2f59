"""Lean fake OpenAI Realtime server (GA event names) for the load benchmark.

One process for all calls: uvloop, orjson, raw websocket framing (bench/wire.py), no
validation, so it stays cheap beside the load generator on the second core. Per
connection (one per call):

* sends `session.created`; answers `session.update` with `session.updated`;
* times every `input_audio_buffer.append` by the tags in its audio (uplink latency:
  arrival here minus the caller's send time);
* from the call's first tagged append on, every 4 s streams a 2 s answer framed as the
  API does: response.created, response.output_item.added, response.content_part.added,
  20 x `response.output_audio.delta` of 100 ms (800 bytes mu-law) paced at real time,
  then response.output_audio.done, response.content_part.done, response.output_item.done,
  response.done. Each delta carries a tag with its send time (downlink latency);
* once the measured window opens (SIGUSR1), each call's next answer is barged into
  930 ms in, as server VAD with interrupt_response does: `speech_started` (send time
  recorded), then the answer is closed as cancelled (reason turn_detected);
* `response.cancel` with no answer active gets the response_cancel_not_active error;
  `conversation.item.truncate` gets `conversation.item.truncated`;
* a plain HTTP request (the Twilio REST update, TWILIO_API_BASE_URL points here) gets
  200 with a call JSON.

On SIGTERM (or after --max-seconds) it writes PREFIX.json (counters, barge-in times),
PREFIX.up.bin (uplink send times and latencies) and PREFIX.dsent.bin (delta send times).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import signal
from array import array
from binascii import a2b_base64
from collections import Counter
from typing import Any, cast

import orjson
import uvloop

from bench import tags
from bench.wire import BINARY, WebSocketPeer, accept_key, parse_head

GOLDEN = 0.6180339887498949
DELTA_TEMPLATE = (
    b'{"type":"response.output_audio.delta","event_id":"evt_d%d","response_id":"%s",'
    b'"item_id":"%s","output_index":0,"content_index":0,"delta":"%s%s"}'
)
REST_BODY = orjson.dumps(
    {"sid": "CA" + "0" * 32, "account_sid": "AC" + "0" * 32, "status": "completed"}
)


class Recorder:
    """What the whole process measured and counted, across connections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.now_us = tags.clock_us(args.epoch_ns)
        self.period_us = args.period_ms * 1000
        self.delta_us = args.delta_ms * 1000
        self.barge_at_us = args.barge_at_ms * 1000
        self.armed = False
        self.up_sent_at = array("I")
        self.up_latency = array("i")
        self.delta_sent_at = array("I")
        self.speech_started: list[tuple[int, int]] = []
        self.counters: Counter[str] = Counter()
        self.client_events: Counter[str] = Counter()
        self.event_ids = itertools.count(1)
        self.timer_late_max_us = 0

    def dump(self, prefix: str) -> None:
        """Write the results where the runner reads them."""
        with open(prefix + ".up.bin", "wb") as f:
            self.up_sent_at.tofile(f)
            self.up_latency.tofile(f)
        with open(prefix + ".dsent.bin", "wb") as f:
            self.delta_sent_at.tofile(f)
        summary = {
            "up_n": len(self.up_sent_at),
            "dsent_n": len(self.delta_sent_at),
            "speech_started": self.speech_started,
            "counters": dict(self.counters),
            "client_events": dict(self.client_events),
            "timer_late_max_ms": self.timer_late_max_us / 1000,
        }
        with open(prefix + ".json", "w") as f:
            json.dump(summary, f)


class RealtimeConnection(WebSocketPeer):
    """One bridge's Realtime socket (or one REST request)."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec
        self.loop = asyncio.get_running_loop()
        self.upgraded = False
        self.head = b""
        self.rest_body_len = -1
        self.closed = False
        self.call = -1
        self.last_seq = -1
        self.appended_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.responses = 0
        self.active = False
        self.started_us = 0
        self.next_delta = 0
        self.barge_due_us = -1
        self.barged_once = False
        self.response_id = b""
        self.item_id = b""

    # -- connection and handshake ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def on_close_frame(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.feed(data)
            return
        self.head += data
        if self.rest_body_len >= 0:
            self._maybe_answer_rest()
            return
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        _, fields = parse_head(self.head[:end])
        self.head = self.head[end + 4 :]
        assert self.transport is not None
        if fields.get("upgrade", "").lower() != "websocket":
            self.rest_body_len = int(fields.get("content-length") or 0)
            self._maybe_answer_rest()
            return
        if not fields.get("authorization", "").startswith("Bearer "):
            self.rec.counters["upgrade_without_bearer"] += 1
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n"
            % accept_key(fields.get("sec-websocket-key", "")).encode()
        )
        self.upgraded = True
        self.rec.counters["sessions"] += 1
        self.send_event(
            {
                "type": "session.created",
                "session": {
                    "type": "realtime",
                    "object": "realtime.session",
                    "id": "sess_bench",
                    "model": "gpt-realtime",
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                    },
                },
            }
        )
        rest, self.head = self.head, b""
        if rest:
            self.feed(rest)

    def _maybe_answer_rest(self) -> None:
        if len(self.head) < self.rest_body_len:
            return
        self.rec.counters["rest_requests"] += 1
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(REST_BODY), REST_BODY)
        )
        self.transport.close()

    # -- client events --------------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        event["event_id"] = f"evt_{next(self.rec.event_ids)}"
        self.send_text(orjson.dumps(event))

    def on_message(self, opcode: int, payload: bytes) -> None:
        rec = self.rec
        if opcode == BINARY:
            rec.counters["binary_frames_from_target"] += 1
        try:
            event = orjson.loads(payload)
            kind = event["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            rec.counters["bad_json_from_target"] += 1
            return
        if kind == "input_audio_buffer.append":
            self._on_append(event)
            return
        rec.client_events[kind] += 1
        if kind == "session.update":
            session = event.get("session")
            if isinstance(session, dict):
                session = dict(session, id="sess_bench", object="realtime.session")
            self.send_event({"type": "session.updated", "session": session})
        elif kind == "response.cancel":
            if self.active:
                self._finish("cancelled", "client_cancelled")
                self._schedule(self.started_us + rec.period_us, self._begin)
            else:
                error = {
                    "type": "invalid_request_error",
                    "code": "response_cancel_not_active",
                    "message": "Cancellation failed: no active response found",
                    "param": None,
                    "event_id": event.get("event_id"),
                }
                self.send_event({"type": "error", "error": error})
        elif kind == "conversation.item.truncate":
            truncated = {
                "type": "conversation.item.truncated",
                "item_id": event.get("item_id"),
                "content_index": event.get("content_index", 0),
                "audio_end_ms": event.get("audio_end_ms", 0),
            }
            self.send_event(truncated)
        elif kind == "input_audio_buffer.clear":
            self.send_event({"type": "input_audio_buffer.cleared"})

    def _on_append(self, event: dict[str, Any]) -> None:
        rec = self.rec
        now = rec.now_us()
        try:
            raw = a2b_base64(event["audio"])
        except (KeyError, TypeError, ValueError):
            rec.counters["bad_audio_from_target"] += 1
            return
        self.appended_bytes += len(raw)
        found = tags.find_tags(raw)
        if not found:
            rec.counters["untagged_appends"] += 1
            return
        for i in found:
            _, call, seq, sent = tags.UPLINK.unpack_from(raw, i)
            if self.call < 0:
                self.call = call
                phase = int((call * GOLDEN) % 1.0 * rec.period_us)  # spread calls over a period
                self._schedule(now + 1_000_000 + phase, self._begin)
            elif call != self.call:
                rec.counters["uplink_misrouted"] += 1
            if seq <= self.last_seq:
                rec.counters["uplink_reordered_or_duplicated"] += 1
            self.last_seq = seq
            rec.up_sent_at.append(sent)
            rec.up_latency.append(now - sent)

    # -- the answer cycle -----------------------------------------------------------------

    def _schedule(self, due_us: int, action: Any) -> None:
        """Run `action(due_us)` at `due_us` (replacing whatever was scheduled)."""
        if self.timer is not None:
            self.timer.cancel()
        if self.closed:
            return
        delay = (due_us - self.rec.now_us()) / 1e6
        self.timer = self.loop.call_later(max(0.0, delay), self._fire, due_us, action)

    def _fire(self, due_us: int, action: Any) -> None:
        self.timer = None
        if self.closed:
            return
        late = self.rec.now_us() - due_us
        if late > self.rec.timer_late_max_us:
            self.rec.timer_late_max_us = late
        action(due_us)

    def _begin(self, due_us: int) -> None:
        rec = self.rec
        self.responses += 1
        self.active = True
        self.started_us = due_us
        self.next_delta = 0
        self.response_id = b"resp_%d_%d" % (self.call, self.responses)
        self.item_id = b"item_%d_%d" % (self.call, self.responses)
        barge = rec.armed and not self.barged_once
        self.barge_due_us = due_us + rec.barge_at_us if barge else -1
        rid, iid = self.response_id.decode(), self.item_id.decode()
        self.send_event(
            {
                "type": "response.created",
                "response": {
                    "object": "realtime.response",
                    "id": rid,
                    "status": "in_progress",
                    "output": [],
                },
            }
        )
        item = {
            "id": iid,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": rid, "output_index": 0}
        self.send_event({"type": "response.output_item.added", **where, "item": item})
        self.send_event(
            {
                "type": "response.content_part.added",
                "response_id": rid,
                "item_id": iid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        self._delta(due_us)

    def _delta(self, due_us: int) -> None:
        rec = self.rec
        k = self.next_delta
        sent = rec.now_us()
        tag = tags.DOWNLINK.pack(
            tags.MAGIC, self.call, self.responses & 0xFFFF, k, sent & 0xFFFFFFFF
        )
        payload = DELTA_TEMPLATE % (
            next(rec.event_ids),
            self.response_id,
            self.item_id,
            base64.b64encode(tag),
            tags.DOWNLINK_PAD_B64,
        )
        self.send_text(payload)
        rec.delta_sent_at.append(sent)
        self.next_delta = k = k + 1
        if k >= self.rec.args.deltas:
            self._finish("completed", None)
            self._schedule(self.started_us + rec.period_us, self._begin)
            return
        next_due = self.started_us + k * rec.delta_us
        if 0 <= self.barge_due_us < next_due:
            self._schedule(self.barge_due_us, self._barge_in)
        else:
            self._schedule(next_due, self._delta)

    def _barge_in(self, due_us: int) -> None:
        rec = self.rec
        self.barged_once = True
        self.barge_due_us = -1
        heard_ms = self.appended_bytes // 8
        sent = rec.now_us()  # before the write: the reply can arrive before it returns
        self.send_event(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": max(0, heard_ms - 300),
                "item_id": f"item_user_{self.call}_{self.responses}",
            }
        )
        rec.speech_started.append((self.call, sent))
        self._finish("cancelled", "turn_detected")
        self._schedule(self.started_us + rec.period_us, self._begin)

    def _finish(self, status: str, reason: str | None) -> None:
        """Close the active answer with the four closing events, as the API does."""
        self.active = False
        rid, iid = self.response_id.decode(), self.item_id.decode()
        where = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        part = {"type": "audio", "transcript": ""}
        self.send_event({"type": "response.output_audio.done", **where})
        self.send_event({"type": "response.content_part.done", **where, "part": part})
        item = {
            "id": iid,
            "object": "realtime.item",
            "type": "message",
            "status": "completed" if status == "completed" else "incomplete",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": ""}],
        }
        done = {"type": "response.output_item.done", "response_id": rid, "output_index": 0}
        self.send_event({**done, "item": item})
        details = {"type": status, "reason": reason} if reason else None
        response = {
            "object": "realtime.response",
            "id": rid,
            "status": status,
            "status_details": details,
            "output": [item],
        }
        self.send_event({"type": "response.done", "response": response})


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT or --max-seconds, then write the results."""
    rec = Recorder(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RealtimeConnection(rec), "127.0.0.1", args.port, backlog=4096
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(rec, "armed", True))
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    loop.call_later(args.max_seconds, done.set)
    await done.wait()
    server.close()
    rec.dump(args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--epoch-ns", type=int, required=True)
    parser.add_argument("--out", required=True, help="path prefix of the result files")
    parser.add_argument("--period-ms", type=int, default=4000)
    parser.add_argument("--deltas", type=int, default=20)
    parser.add_argument("--delta-ms", type=int, default=100)
    parser.add_argument("--barge-at-ms", type=int, default=930)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="exit by itself then")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
