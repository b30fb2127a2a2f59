"""Structured logging: both formats, call context, quoting and secret scrubbing."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

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
    logging.getLogger("uvicorn.error").warning("Started %s on %d", "server", 8000)
    [line] = lines(out)
    assert 'logger=uvicorn.error msg="Started server on 8000"' in line
    assert "event=" not in line


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
