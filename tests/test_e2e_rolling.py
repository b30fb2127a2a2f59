"""Scale-out proof: three app processes behind a real HAProxy on one PostgreSQL, restarted
one by one while 30 calls run; no call is dropped or cut, and each is recorded once.

Everything is the real thing but Twilio and OpenAI: `uvicorn app.main:app` processes (as the
image runs them), HAProxy with the deploy's own config (`deploy/compose/haproxy.cfg`, see
`tests/haproxy.py`), a PostgreSQL server of the test session. Each simulated call is what
Twilio does: the signed webhook through the balancer, then the media stream opened from the
TwiML it answered (its URL, its parameters) through the balancer too, so the webhook and the
stream of one call may land on different processes, as they do in production. The caller
asks a question in real time, hears the bot's whole answer played out at 8 bytes/ms with
every mark echoed, and hangs up.

The rolling restart is what a deploy does, one slot at a time: SIGTERM the old process (it
turns `/readyz` to 503 and drains), start its replacement on a fresh slot, wait until it is
ready and HAProxy has taken it in, next. Calls are placed all along: right after the SIGTERM
(before HAProxy has noticed: they may reach the draining process, which serves them), once
HAProxy has marked it down (they must not reach it), and once the replacement is in. One
call is still talking when its process's drain time runs out: it ends through the media
stream, where Twilio plays the TwiML's fallback, as the README says.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import xml.etree.ElementTree as ET
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import AUTH_TOKEN
from tests.fakes.audio import silence, speech, tone
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.twilio_outbound import parse_stream_twiml
from tests.haproxy import Haproxy
from tests.test_e2e_call import twilio_post
from tests.test_e2e_shutdown import PUBLIC, SIGNED, ServerProcess, server_on

pytestmark = pytest.mark.e2e

KEY = "operator-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}
DRAIN_S = 12
FALLBACK_MESSAGE = "Sorry, we are moving you to a colleague."
FALLBACK_NUMBER = "+15550009999"
CALLS = 30
ANSWER = tone(1500)  # the bot's answer: 1.5 s the caller must hear to the last byte


@dataclass
class Slot:
    name: str
    sock: socket.socket
    proc: ServerProcess | None = None
    down_seen_at: float | None = None


@dataclass
class Call:
    """One simulated call and what happened to it."""

    n: int
    linger: bool = False
    direct: Slot | None = None  # straight to this process, as a balancer that lags would
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    placed_at: float = 0.0
    twiml: str = ""
    twilio: FakeTwilioCall | None = None
    ended_by: str = ""  # "caller" (hung up after the answer) or "bridge" (closed the stream)


def reserve_port() -> socket.socket:
    """A loopback port of our own, bound but not listening: connections to it are refused
    (HAProxy sees the slot down) until a process is started on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Rollout:
    """The balancer, the slots, the calls; everything the test checks at the end."""

    def __init__(self, realtime: FakeRealtime, tmp: Path, pg_url: str, question: bytes) -> None:
        self.realtime = realtime
        self.tmp = tmp
        self.question = question
        self.env = {
            "DATABASE_URL": pg_url,
            "OPERATOR_API_KEY": KEY,
            "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_S),
            "FALLBACK_MESSAGE": FALLBACK_MESSAGE,
            "FALLBACK_NUMBER": FALLBACK_NUMBER,
            "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the balancer's address, as the README says
            "SILENCE_REPROMPT_SECONDS": "0",  # the lingering caller's silence is not the point
        }
        self.slots = {name: Slot(name, reserve_port()) for name in ("a1", "a2", "a3")}
        self.slots |= {name: Slot(name, reserve_port()) for name in ("b1", "b2", "b3")}
        ports = {s.name: s.sock.getsockname()[1] for s in self.slots.values()}
        (tmp / "haproxy").mkdir()
        self.haproxy = Haproxy(tmp / "haproxy", ports)
        self.calls: list[Call] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.lingering_home: Slot | None = None
        self.stack = AsyncExitStack()
        self.stack.callback(lambda: [s.sock.close() for s in self.slots.values()])
        self.stack.push_async_callback(self.cancel_calls)
        self.loop = asyncio.get_running_loop()

    async def cancel_calls(self) -> None:
        """On the way out (a failure midway too): no call task outlives the test."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def start_process(self, slot: Slot) -> None:
        workdir = self.tmp / slot.name
        workdir.mkdir()
        slot.proc = await self.stack.enter_async_context(
            server_on(slot.sock, self.realtime, workdir, self.env)
        )

    async def ready(self, slot: Slot) -> None:
        assert slot.proc is not None
        await slot.proc.wait_event("startup.ready", within=60)
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{slot.proc.port}/readyz")
        assert reply.status_code == 200, reply.text

    # ------------------------------------------------------------------ one call

    def place(self, *, linger: bool = False, direct: Slot | None = None) -> Call:
        call = Call(len(self.calls) + 1, linger=linger, direct=direct)
        self.calls.append(call)
        self.tasks.append(asyncio.ensure_future(self.run_call(call)))
        return call

    async def run_call(self, call: Call) -> None:
        call.placed_at = self.loop.time()
        params = {
            "CallSid": call.call_sid,
            "AccountSid": "AC" + "0" * 32,
            "From": f"+1555010{call.n:04d}",
            "To": "+15559870000",
        }
        base = self.haproxy.url
        if call.direct is not None:
            assert call.direct.proc is not None
            base = f"http://127.0.0.1:{call.direct.proc.port}"
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.send(twilio_post(base, PUBLIC, params, AUTH_TOKEN))
        assert reply.status_code == 200, (call.n, reply.status_code, reply.text)
        call.twiml = reply.text
        stream_url, parameters, _after = parse_stream_twiml(reply.text)
        assert stream_url is not None, reply.text
        url = urlsplit(stream_url)
        assert f"{url.scheme}://{url.netloc}" == PUBLIC.replace("https", "wss")
        # Twilio opens the stream at the TwiML's URL: the public name is the balancer.
        twilio = FakeTwilioCall(
            base.replace("http", "ws") + url.path,
            headers=SIGNED,
            call_sid=call.call_sid,
            custom_parameters=parameters,
            open_timeout=30,
            keep_sent_media=False,
        )
        call.twilio = twilio
        async with twilio:
            await twilio.start()
            await twilio.say(self.question)
            await twilio.wait_for_heard(len(ANSWER), timeout=60)
            await twilio.wait_for_playout_idle(timeout=30)
            if call.linger:  # still on the line, silent, until the bridge ends the call
                await twilio.wait_closed(timeout=DRAIN_S + 120)
                call.ended_by = "bridge"
            else:
                assert not twilio.closed.is_set(), f"call {call.n} cut: {twilio.close_code}"
                await twilio.hangup()
                call.ended_by = "caller"

    async def place_staggered(self, n: int, gap_s: float = 0.3) -> None:
        for _ in range(n):
            self.place()
            await asyncio.sleep(gap_s)  # pacing the callers, not waiting for anything

    # ------------------------------------------------------------------ the deploy

    async def restart(self, old: Slot, new: Slot) -> None:
        assert old.proc is not None
        old.proc.proc.send_signal(signal.SIGTERM)
        await self.place_staggered(2)  # HAProxy may not have noticed yet
        # One that certainly reaches a draining process, as from a balancer that hasn't
        # noticed yet: sent straight to the one the lingering call keeps alive (a process
        # with no call left exits at once).
        late = old is self.lingering_home
        if late:
            await old.proc.wait_event("shutdown.draining")
            self.place(direct=old)
        await self.haproxy.wait_states({old.name: "DOWN"})
        old.down_seen_at = self.loop.time()
        await self.place_staggered(1 if late else 2)  # must not reach `old`
        await self.start_process(new)
        await self.ready(new)
        await self.haproxy.wait_states({new.name: "UP"})
        await self.place_staggered(2)

    async def logged(self, event: str, call_sid: str, within: float = 30.0) -> None:
        """Until some process has logged `event` for `call_sid`."""
        procs = [s.proc for s in self.slots.values() if s.proc is not None]
        waits = [
            asyncio.ensure_future(
                p.wait_for(
                    lambda e: e.get("event") == event and e.get("call_sid") == call_sid, within
                )
            )
            for p in procs
        ]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            assert any(not w.exception() for w in done), f"no {event} for {call_sid}"
        finally:
            for w in waits:
                w.cancel()

    async def records(self, want: int, within: float = 30.0) -> list[dict[str, Any]]:
        """The operator API's list through the balancer, once it holds `want` calls (the last
        records are written a moment after their calls end)."""
        records: list[dict[str, Any]] = []
        async with httpx.AsyncClient() as client, asyncio.timeout(within):
            while len(records) < want:
                reply = await client.get(
                    self.haproxy.url + "/calls", params={"limit": 200}, headers=BEARER
                )
                assert reply.status_code == 200, reply.text
                records = reply.json()["calls"]
                if len(records) < want:
                    await asyncio.sleep(0.2)  # no event to wait on from outside the store
        return records

    def handled_by(self, event: str) -> dict[str, str]:
        """CallSid -> the slot whose process logged `event` for it."""
        seen: dict[str, str] = {}
        for slot in self.slots.values():
            for line in slot.proc.events if slot.proc else []:
                sid = line.get("call_sid")
                if line.get("event") == event and sid:
                    assert sid not in seen, f"{sid}: {event} on {seen[sid]} and {slot.name}"
                    seen[sid] = slot.name
        return seen


@pytest.fixture
def question() -> bytes:
    return speech("Can I move my appointment to Friday?") + silence(300)


async def test_a_rolling_restart_behind_haproxy_drops_no_call_and_records_each_once(
    realtime: FakeRealtime, tmp_path: Path, pg_url: str, question: bytes
) -> None:
    realtime.add_responses(
        *[ScriptedResponse(audio=ANSWER, transcript="Friday at ten works.")] * (CALLS + 10)
    )
    rollout = Rollout(realtime, tmp_path, pg_url, question)
    slots = rollout.slots
    async with rollout.stack, asyncio.timeout(300):
        for name in ("a1", "a2", "a3"):
            await rollout.start_process(slots[name])
        for name in ("a1", "a2", "a3"):
            await rollout.ready(slots[name])
        await rollout.haproxy.start()
        rollout.stack.push_async_callback(rollout.haproxy.stop)
        up = {"a1": "UP", "a2": "UP", "a3": "UP"}
        await rollout.haproxy.wait_states(up | {"b1": "DOWN", "b2": "DOWN", "b3": "DOWN"})

        # Calls running on all three: one that will still be on the line at its drain's end.
        lingering = rollout.place(linger=True)
        await rollout.logged("call.started", lingering.call_sid)
        rollout.lingering_home = slots[rollout.handled_by("call.started")[lingering.call_sid]]
        await rollout.place_staggered(9)
        before_restart = list(rollout.calls)

        for old, new in (("a1", "b1"), ("a2", "b2"), ("a3", "b3")):
            await rollout.restart(slots[old], slots[new])
        await rollout.place_staggered(CALLS - len(rollout.calls))
        assert len(rollout.calls) == CALLS

        results = await asyncio.gather(*rollout.tasks, return_exceptions=True)
        failures = [(c.n, repr(r)) for c, r in zip(rollout.calls, results, strict=True) if r]
        assert failures == []
        for name in ("a1", "a2", "a3"):  # each old process drained and exited cleanly
            proc = slots[name].proc
            assert proc is not None
            assert await asyncio.wait_for(proc.proc.wait(), DRAIN_S + 30) == 0
            assert "shutdown.drained" in proc.names()

        for c in rollout.calls:  # a process logs its summary once the call is over
            await rollout.logged("call.summary", c.call_sid)
        streams = rollout.handled_by("call.summary")
        webhooks = rollout.handled_by("webhook.incoming_call")
        assert set(streams) == set(webhooks) == {c.call_sid for c in rollout.calls}

        # Spread: before the restart, every process carried calls...
        first = [streams[c.call_sid] for c in before_restart]
        spread = {name: first.count(name) for name in up}
        assert min(spread.values()) >= 2, spread
        # ...and each replacement took calls once it was in.
        assert {"b1", "b2", "b3"} <= set(streams.values())

        # New calls reach ready processes only: once HAProxy had a draining process down,
        # neither the webhook nor the stream of a later call went to it.
        for c in rollout.calls:
            for slot in slots.values():
                if (
                    c.direct is None
                    and slot.down_seen_at is not None
                    and c.placed_at > slot.down_seen_at
                ):
                    where = (webhooks[c.call_sid], streams[c.call_sid])
                    assert slot.name not in where, (c.n, slot.name, where)
        # Calls placed between a SIGTERM and HAProxy's check may reach the draining process:
        # it serves them, and they finish like any other (checked below with the rest). One
        # was sent there directly, after the process had logged that it was draining.
        (late,) = [c for c in rollout.calls if c.direct is not None]
        home = rollout.lingering_home
        assert home is not None and late.direct is home
        assert (webhooks[late.call_sid], streams[late.call_sid]) == (home.name, home.name)

        # No sticky routing needed: many calls had their webhook on one process and their
        # media stream on another, and went just as well.
        assert sum(webhooks[sid] != streams[sid] for sid in streams) >= 3

        # No call cut: each heard the whole answer and hung up itself...
        for c in rollout.calls:
            assert c.twilio is not None
            assert c.twilio.violations == [], (c.n, c.twilio.violations)
            assert bytes(c.twilio.heard[: len(ANSWER)]) == ANSWER, c.n
            if c is not lingering:
                assert c.ended_by == "caller", c.n
        # ...but the one still talking past its process's drain time, ended by the bridge
        # through the media stream (a normal close): Twilio goes on with the TwiML's fallback.
        assert lingering.ended_by == "bridge"
        assert lingering.twilio is not None and lingering.twilio.close_code == 1000
        assert streams[lingering.call_sid] == home.name
        assert home.name in ("a1", "a2", "a3") and home.proc is not None
        # Ended by the drain's end: the process gave up waiting (the drain time was over
        # with calls still live), then the call was over.
        ends = [
            e.get("event")
            for e in home.proc.events
            if e.get("event") == "shutdown.ending_calls"
            or (e.get("event") == "call.summary" and e.get("call_sid") == lingering.call_sid)
        ]
        assert ends == ["shutdown.ending_calls", "call.summary"]
        after = [(el.tag, (el.text or "").strip()) for el in ET.fromstring(lingering.twiml)][1:]
        assert after == [("Say", FALLBACK_MESSAGE), ("Dial", FALLBACK_NUMBER)]

        # Every call recorded exactly once, in the shared store, read through the balancer.
        records = await rollout.records(CALLS)
        sids = [r["call_sid"] for r in records]
        assert sorted(sids) == sorted(c.call_sid for c in rollout.calls)
        outcomes = {r["call_sid"]: r["outcome"] for r in records}
        assert outcomes.pop(lingering.call_sid) == "shutdown"
        assert set(outcomes.values()) == {"caller_hung_up"}
