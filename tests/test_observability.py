"""Structured logging: both formats, call context, quoting and secret scrubbing."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from app import observability
from app.observability import (
    bind_call,
    clear_call,
    configure_logging,
    current_call,
    log_event,
    register_secret,
)


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """Configure kv logging into a buffer, restoring the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_secrets = observability._secrets
    buffer = io.StringIO()
    configure_logging("kv", "DEBUG", stream=buffer)
    clear_call()
    yield buffer
    clear_call()
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    observability._secrets = saved_secrets


def lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line]


def test_kv_line_shape(out: io.StringIO) -> None:
    log = logging.getLogger("app.bridge")
    bind_call(call_sid="CA111", stream_sid="MZ222")
    log_event(log, logging.INFO, "call.started", key="value", n=3, ok=True, none=None)
    [line] = lines(out)
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info logger=app\.bridge "
        r"event=call\.started call_sid=CA111 stream_sid=MZ222 key=value n=3 ok=true none=null",
        line,
    ), line


def test_kv_quotes_ambiguous_values(out: io.StringIO) -> None:
    log_event(
        logging.getLogger("t"),
        logging.INFO,
        "e",
        text="two words",
        quote='say "hi"',
        eq="a=b",
        empty="",
        nl="a\nb",
        items=[1, 2],
    )
    [line] = lines(out)
    assert 'text="two words"' in line
    assert r'quote="say \"hi\""' in line
    assert 'eq="a=b"' in line
    assert 'empty=""' in line
    assert r'nl="a\nb"' in line
    assert "items=[1,2]" in line
    assert "\n" not in line


def test_plain_log_calls_render_msg(out: io.StringIO) -> None:
    logging.getLogger("some.library").warning("Started %s on %d", "server", 8000)
    [line] = lines(out)
    assert 'logger=some.library msg="Started server on 8000"' in line
    assert "event=" not in line


# -- uvicorn's own lines -------------------------------------------------------------------

ACCESS = '%s - "%s %s HTTP/%s" %d'  # uvicorn's access line (h11 and httptools)


def access_line(method: str, path: str, status: int = 200) -> None:
    logging.getLogger("uvicorn.access").info(ACCESS, "127.0.0.1:5000", method, path, "1.1", status)


def test_uvicorns_other_lines_are_server_log_events(out: io.StringIO) -> None:
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer)
    error = logging.getLogger("uvicorn.error")
    error.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", "http", "0.0.0.0", 80)
    error.error(OSError(98, "address already in use"))  # how uvicorn logs a bind failure
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        error.exception("Exception in ASGI application\n")
    running, bind, crash = map(json.loads, lines(buffer))
    assert running["event"] == "server.log" and running["logger"] == "uvicorn.error"
    assert running["msg"] == "Uvicorn running on http://0.0.0.0:80 (Press CTRL+C to quit)"
    assert (bind["event"], bind["level"]) == ("server.log", "error")
    assert bind["msg"] == "[Errno 98] address already in use"
    assert crash["event"] == "server.log" and "RuntimeError: boom" in crash["exc"]
    configure_logging("kv", "INFO", stream=out)
    logging.getLogger("uvicorn").warning("Started %s on %d", "server", 8000)
    [line] = lines(out)
    assert 'logger=uvicorn event=server.log msg="Started server on 8000"' in line


def test_access_lines_become_http_access_events_in_both_formats(out: io.StringIO) -> None:
    access_line("POST", "/incoming-call?x=1", 403)
    [line] = lines(out)
    assert line.endswith(
        " level=info logger=uvicorn.access event=http.access client=127.0.0.1:5000 "
        'method=POST path="/incoming-call?x=1" http_version=1.1 status=403'
    ), line
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer)
    access_line("GET", "/a b", 404)
    logging.getLogger("uvicorn.access").info("an access line of %s shape", "another")
    fielded, other = map(json.loads, lines(buffer))
    assert {k: v for k, v in fielded.items() if k != "ts"} == {
        "level": "info",
        "logger": "uvicorn.access",
        "event": "http.access",
        "client": "127.0.0.1:5000",
        "method": "GET",
        "path": "/a b",
        "http_version": "1.1",
        "status": 404,
    }
    assert other["event"] == "http.access" and other["msg"] == "an access line of another shape"


def test_websocket_handshake_lines_carry_their_fields(out: io.StringIO) -> None:
    error = logging.getLogger("uvicorn.error")
    error.info('%s - "WebSocket %s" [accepted]', "10.0.0.1:7", "/media-stream")
    error.info('%s - "WebSocket %s" 403', "10.0.0.1:8", "/media-stream")
    error.info('%s - "WebSocket %s" %d', "10.0.0.1:9", "/media-stream", 503)
    error.info("connection open")
    accepted, refused, answered, opened = lines(out)
    assert "event=ws.access" in accepted and " status=accepted" in accepted
    assert 'msg="10.0.0.1:7 - \\"WebSocket /media-stream\\" [accepted]"' in accepted
    assert " client=10.0.0.1:8 path=/media-stream status=403" in refused
    assert " status=503" in answered
    assert opened.endswith('event=server.log msg="connection open"')


def test_a_secret_in_a_query_string_is_masked_in_access_lines(out: io.StringIO) -> None:
    register_secret("query-secret-123456")
    access_line("GET", "/incoming-call?token=query-secret-123456")
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/media-stream?t=query-secret-123456"
    )
    text = out.getvalue()
    assert "query-secret" not in text
    assert 'path="/incoming-call?token=***" ' in text and 'path="/media-stream?t=***" ' in text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/healthz?probe=lb"])
def test_probe_access_lines_are_debug(out: io.StringIO, path: str) -> None:
    configure_logging("kv", "INFO", stream=out)
    access_line("GET", path, 200)
    access_line("GET", path, 503)
    assert lines(out) == []  # a probe a second adds no line at INFO
    configure_logging("kv", "DEBUG", stream=out)
    access_line("GET", path, 503)
    [line] = lines(out)
    assert " level=debug logger=uvicorn.access event=http.access " in line
    shown = f'"{path}"' if "=" in path else path  # kv quotes a value holding `=`
    assert f" path={shown} " in line and line.endswith(" status=503")


def test_other_access_lines_stay_info(out: io.StringIO) -> None:
    configure_logging("kv", "INFO", stream=out)
    access_line("POST", "/healthz", 405)  # not a probe: a probe is a GET
    access_line("GET", "/healthzz")
    access_line("GET", "/incoming-call/healthz")
    access_line("GET", "/")
    assert [line.split(" path=")[1].split()[0] for line in lines(out)] == [
        "/healthz",
        "/healthzz",
        "/incoming-call/healthz",
        "/",
    ]
    assert all(" level=info " in line for line in lines(out))


def test_the_probe_filter_is_installed_once(out: io.StringIO) -> None:
    configure_logging("kv", "INFO", stream=out)
    configure_logging("json", "INFO", stream=out)
    filters = logging.getLogger("uvicorn.access").filters
    assert len([f for f in filters if isinstance(f, observability.ProbeAccessFilter)]) == 1


def test_uvicorns_no_access_log_is_honoured(out: io.StringIO) -> None:
    access = logging.getLogger("uvicorn.access")
    access.propagate = False  # what `uvicorn --no-access-log` leaves: no handler, no propagation
    try:
        configure_logging("kv", "DEBUG", stream=out)
        access_line("GET", "/incoming-call")
        assert not access.propagate and lines(out) == []
    finally:
        access.propagate = True


def test_json_format(out: io.StringIO) -> None:
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer)
    bind_call(call_sid="CA9")
    log_event(logging.getLogger("app.x"), logging.WARNING, "openai.retry", attempt=2, obj=object())
    [line] = lines(buffer)
    record = json.loads(line)
    assert record["event"] == "openai.retry"
    assert record["level"] == "warning"
    assert record["logger"] == "app.x"
    assert record["call_sid"] == "CA9"
    assert "stream_sid" not in record
    assert record["attempt"] == 2
    assert record["obj"].startswith("<object object")
    assert record["ts"].endswith("Z")
    assert out.getvalue() == ""  # the earlier handler was replaced, not duplicated


def test_configure_is_idempotent(out: io.StringIO) -> None:
    configure_logging("kv", "DEBUG", stream=out)
    configure_logging("kv", "DEBUG", stream=out)
    logging.getLogger("x").info("once")
    assert len(lines(out)) == 1
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_bridge_handler", False)]
    assert len(marked) == 1


def test_level_filters_and_skips_work(out: io.StringIO) -> None:
    configure_logging("kv", "warning", stream=out)
    log = logging.getLogger("hot")
    log_event(log, logging.DEBUG, "media.frame", size=160)
    log_event(log, logging.INFO, "call.started")
    log_event(log, logging.ERROR, "call.failed")
    assert [line.split("event=")[1].split()[0] for line in lines(out)] == ["call.failed"]


def test_uvicorn_loggers_propagate(out: io.StringIO) -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        assert logger.propagate
        assert logger.handlers == []


async def test_call_context_inherited_by_child_task(out: io.StringIO) -> None:
    log = logging.getLogger("app.call")

    async def child() -> None:
        log_event(log, logging.INFO, "child.event")

    async def call(call_sid: str, stream_sid: str) -> None:
        bind_call(call_sid=call_sid)
        bind_call(stream_sid=stream_sid)  # None leaves call_sid in place
        await asyncio.create_task(child())

    await asyncio.gather(call("CA1", "MZ1"), call("CA2", "MZ2"))
    found = sorted(
        (re.search(r"call_sid=(\S+)", x)[1], re.search(r"stream_sid=(\S+)", x)[1])  # type: ignore[index]
        for x in lines(out)
        if "event=child.event" in x
    )
    assert found == [("CA1", "MZ1"), ("CA2", "MZ2")]
    assert current_call() == {}  # the tasks' bindings did not leak into this task


def test_clear_call_removes_context(out: io.StringIO) -> None:
    bind_call(call_sid="CA5", stream_sid="MZ5")
    assert current_call() == {"call_sid": "CA5", "stream_sid": "MZ5"}
    clear_call()
    logging.getLogger("x").info("after")
    assert "call_sid" not in out.getvalue()


def test_secrets_are_scrubbed_in_both_formats(out: io.StringIO) -> None:
    register_secret("sk-live-abcdef123456")
    register_secret('tok"with\\quote')
    register_secret("short")  # too short to scrub safely
    log = logging.getLogger("sec")
    log_event(log, logging.INFO, "leak", header="Bearer sk-live-abcdef123456", t='tok"with\\quote')
    log.info("short text stays")
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer)
    log_event(log, logging.INFO, "leak", key="sk-live-abcdef123456", t='x tok"with\\quote')
    text = out.getvalue() + buffer.getvalue()
    assert "sk-live-abcdef123456" not in text
    assert "with" not in text
    assert text.count("***") == 4
    assert "short text stays" in text
    assert json.loads(lines(buffer)[0])["key"] == "***"


def test_exceptions_stay_on_one_line(out: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("err").exception("failed")
    [line] = lines(out)
    assert "RuntimeError: boom" in line
    assert line.startswith("ts=")


def test_reserved_field_names_do_not_clobber(out: io.StringIO) -> None:
    log_event(logging.getLogger("r"), logging.INFO, "real.event", level="x", event="y")
    [line] = lines(out)
    assert "level=info" in line and "event=real.event" in line
    assert "field_level=x" in line and "field_event=y" in line


def test_unknown_format_or_level_rejected() -> None:
    with pytest.raises(ValueError):
        configure_logging("xml", "INFO", stream=io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("kv", "LOUD", stream=io.StringIO())


def test_websocket_protocol_debug_is_never_rendered(out: io.StringIO) -> None:
    # uvicorn hands its own `uvicorn.error` logger to the websockets library, which logs
    # every frame and handshake header at DEBUG: caller audio, DTMF digits, signatures.
    configure_logging("kv", "DEBUG", stream=out)
    for name in ("uvicorn.error", "websockets.server", "websockets.client"):
        logging.getLogger(name).debug("< x-twilio-signature: %s", "SIGNATURE-abc")
        logging.getLogger(name).debug('< TEXT \'{"event":"dtmf","dtmf":{"digit":"7"}}\'')
    logging.getLogger("uvicorn.error").info("Started server process")
    assert "SIGNATURE" not in out.getvalue() and "digit" not in out.getvalue()
    assert "Started server process" in out.getvalue()  # uvicorn's own lines still pass
    # The frame records are not even built: the library checks the level once per socket.
    assert not logging.getLogger("uvicorn.error").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("websockets.server").isEnabledFor(logging.DEBUG)


def test_wire_loggers_never_go_below_the_chosen_level(out: io.StringIO) -> None:
    configure_logging("kv", "WARNING", stream=out)
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.error").warning("disk nearly full")
    assert [line.split("msg=")[1] for line in lines(out)] == ['"disk nearly full"']


def test_websockets_library_debug_is_dropped_whatever_the_logger(out: io.StringIO) -> None:
    # Defence in depth: even if something turns a websocket logger back to DEBUG, the
    # handler drops sub-INFO records that the websockets library itself produced.
    import websockets.protocol

    logger = logging.getLogger("uvicorn.error")
    logger.setLevel(logging.DEBUG)
    try:
        record = logger.makeRecord(
            logger.name,
            logging.DEBUG,
            websockets.protocol.__file__,
            1,
            "< TEXT %s",
            ('{"dtmf":{"digit":"7"}}',),
            None,
        )
        logger.handle(record)
        other = logging.getLogger("some.library.websockets")
        other.setLevel(logging.DEBUG)
        other.handle(
            other.makeRecord(
                other.name,
                logging.DEBUG,
                websockets.protocol.__file__,
                1,
                "< x-twilio-signature: SIG",
                (),
                None,
            )
        )
        logging.getLogger("app.bridge").debug("our own debug line")
    finally:
        logger.setLevel(logging.NOTSET)
    text = out.getvalue()
    assert "digit" not in text and "SIG" not in text
    assert "our own debug line" in text


@pytest.mark.e2e
async def test_e2e_debug_logs_hold_no_key_press_or_signature(app_with: Any, realtime: Any) -> None:
    """The real app at LOG_LEVEL=DEBUG: a signed media stream with a key press."""
    app = await app_with(bot_greeting="", log_level="DEBUG")
    [handler] = [h for h in logging.getLogger().handlers if getattr(h, "_bridge_handler", False)]
    buffer = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    signature = app.sign_ws()["X-Twilio-Signature"]
    async with app.call() as call:
        await call.start(stream_audio=False)
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await call.send_dtmf("7")
        item = await conn.wait_for("conversation.item.create", timeout=10)
        assert item["item"]["content"][0]["text"] == "The caller pressed 7 on their keypad."
        await call.hangup()
    await app.wait_idle()
    text = buffer.getvalue()
    assert "event=twilio.dtmf" in text  # the key press is logged, its digit is not
    assert "level=debug" in text  # debug logging really was on
    assert signature not in text
    assert '"7"' not in text and "digit" not in text and "pressed 7" not in text
    assert "media-stream" in text.lower() or "websocket" in text.lower()


# -- bounded fields ------------------------------------------------------------------------


def test_every_field_is_cut_at_the_cap_in_kv(out: io.StringIO) -> None:
    configure_logging("kv", "DEBUG", stream=out, max_field_chars=20)
    log = logging.getLogger("app.twiml")
    log_event(log, logging.INFO, "call.incoming", caller="+1" + "5" * 60_000, ok="short")
    log_event(log, logging.INFO, "openai.error", param=list(range(10_000)), err={"x": "y" * 99})
    log.warning("caller said %s", "z" * 5000)
    first, second, third = lines(out)
    assert f'caller="+1{"5" * 18}…(+59982 chars)"' in first and "ok=short" in first
    as_json = json.dumps(list(range(10_000)), separators=(",", ":"))
    assert f'param="{as_json[:20]}…(+{len(as_json) - 20} chars)"' in second
    assert r'err="{\"x\":\"yyyyyyyyyyyyyy…(+87 chars)"' in second
    assert f'msg="caller said {"z" * 8}…(+4992 chars)"' in third
    assert first.startswith("ts=") and " level=info " in first  # the line's own fields stay
    assert max(map(len, lines(out))) < 300


def test_every_field_is_cut_at_the_cap_in_json(out: io.StringIO) -> None:
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer, max_field_chars=20)
    log = logging.getLogger("app.realtime")
    log_event(log, logging.WARNING, "openai.error", code="c" * 1_000_000, items=[1, 2], n=10**18)
    log_event(log, logging.WARNING, "openai.error", detail={"type": "t" * 500}, n=10**30)
    first, second = map(json.loads, lines(buffer))
    assert first["code"] == "c" * 20 + "…(+999980 chars)"
    assert first["items"] == [1, 2] and first["n"] == 10**18  # short values keep their type
    assert second["n"] == "1" + "0" * 19 + "…(+11 chars)"  # 31 digits are text, cut
    assert second["detail"] == '{"type":"' + "t" * 11 + "…(+491 chars)"
    assert len(buffer.getvalue()) < 400


def test_the_default_cap_is_a_thousand_characters(out: io.StringIO) -> None:
    log_event(logging.getLogger("x"), logging.INFO, "e", text="a" * 1000, more="b" * 1001)
    [line] = lines(out)
    assert f"text={'a' * 1000} " in line
    assert f'more="{"b" * 1000}…(+1 chars)"' in line


def test_a_traceback_gets_more_room_but_is_bounded(out: io.StringIO) -> None:
    configure_logging("kv", "DEBUG", stream=out, max_field_chars=100)
    try:
        raise ValueError("v" * 100_000)
    except ValueError:
        logging.getLogger("err").exception("failed")
    [line] = lines(out)
    assert "Traceback" in line and "ValueError: vvv" in line
    assert 1600 < len(line) < 1800


def test_a_cut_never_leaves_part_of_a_secret(out: io.StringIO) -> None:
    configure_logging("kv", "DEBUG", stream=out, max_field_chars=30)
    register_secret("sk-live-abcdef123456")
    log_event(logging.getLogger("s"), logging.INFO, "e", header="x" * 20 + "sk-live-abcdef123456")
    [line] = lines(out)
    assert "sk-li" not in line and "***" in line


def test_a_huge_int_or_an_unprintable_object_never_breaks_a_line() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    # Formatted directly: such values would break the test harness's own log checks.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "e", None, None)
    record.is_event = True
    record.fields = {"n": 10**5000, "obj": Broken(), "deep": nested(5000)}
    kv = observability.StructuredFormatter("kv").format(record)
    js = json.loads(observability.StructuredFormatter("json").format(record))
    assert 'n="<unprintable int>"' in kv and 'obj="<unprintable Broken>"' in kv
    assert js["n"] == "<unprintable int>" and js["obj"] == "<unprintable Broken>"
    assert js["deep"] == "<unprintable list>"


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_no_value_can_start_a_log_line_of_its_own(out: io.StringIO, fmt: str) -> None:
    configure_logging(fmt, "INFO", stream=out)
    forged = "x\nts=2025 level=error event=forged\r\u2028\u2029\x85\x0b\x1c\x7f\x1b[31m"
    log_event(logging.getLogger("x"), logging.INFO, "e", caller=forged, **{"list": [forged]})
    logging.getLogger("x").warning("said %s", forged)
    text = out.getvalue()
    assert len(text.splitlines()) == 2  # str.splitlines breaks at every separator above
    assert text.isprintable() is False and text.count("\n") == 2
    assert all(line.isprintable() for line in text.splitlines())
    if fmt == "json":
        assert [json.loads(line).get("caller") for line in text.splitlines()] == [forged, None]


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        configure_logging("kv", "INFO", stream=io.StringIO(), max_field_chars=0)
