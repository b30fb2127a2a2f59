"""Structured logging on top of the standard library.

Why: a phone bridge is debugged from its logs after the fact, so every line must say which
call it belongs to and be easy to grep (`key=value`) or ship to a log store (JSON).

- `configure_logging()` installs one handler on the root logger (idempotent) and routes
  uvicorn's loggers through it, taking over from the dictConfig uvicorn's CLI applied
  before the app was imported: with LOG_FORMAT=json every line the process logs is JSON.
  uvicorn's lines become events too: an access line's arguments are fields
  (`event=http.access client method path http_version status`), its other lines are
  `event=server.log` with their `msg` (a websocket handshake line also gets `client`,
  `path`, `status`, as `event=ws.access`). Health and readiness probes' access lines are
  logged at DEBUG (`ProbeAccessFilter`), so a probe a second costs no line at INFO.
  Websocket protocol debug output never gets through: the websockets library logs every
  frame and handshake header at DEBUG (caller audio, key presses, `X-Twilio-Signature`),
  and uvicorn hands it the `uvicorn.error` logger.
- `bind_call()` stores the call's identifiers in context variables; every record created
  afterwards in that task (and in tasks it creates later) carries `call_sid`/`stream_sid`.
- `log_event()` logs an event name plus fields, cheaply skipped when the level is off.
- `register_secret()` adds a value the formatter masks as `***` in any rendered line, as
  defence in depth: code should not log secrets in the first place.
- Every field of every line is bounded (`max_field_chars`, LOG_MAX_FIELD_CHARS): values
  come from callers and the service (a `From` of 60 KB, an error `param` of 1 MB), and one
  such line can swamp a log store. Text past the cap is cut and marked
  `…(+N chars)`; lists, dicts and other objects are measured as the JSON they render to;
  the message and the event too. Tracebacks get `_TRACEBACK_FACTOR` times the cap. No
  value can start a line of its own: control characters, line and paragraph separators
  are escaped in both formats.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

_call_sid: ContextVar[str | None] = ContextVar("call_sid", default=None)
_stream_sid: ContextVar[str | None] = ContextVar("stream_sid", default=None)

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
MIN_SECRET_LENGTH = 6
"""Shorter values are not scrubbed: masking them would mangle ordinary text."""

_HANDLER_MARK = "_bridge_handler"
_FACTORY_MARK = "_bridge_factory"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_WIRE_LOGGERS = ("uvicorn.error", "websockets")
"""Loggers the websockets library writes its frame and header debug lines to: uvicorn
passes `uvicorn.error` to it (every websockets implementation of uvicorn 0.54), and the
library's own default loggers are `websockets.client` / `websockets.server`."""
_RESERVED = frozenset({"ts", "level", "logger", "event", "msg", "call_sid", "stream_sid", "exc"})
DEFAULT_MAX_FIELD_CHARS: Final = 1000
"""Longest field value rendered (LOG_MAX_FIELD_CHARS): a phone number, an error message or
a transcript line fits; a flood does not."""
_TRACEBACK_FACTOR: Final = 16
"""A traceback (`exc`, `stack`) may be this many times longer: its frames are the point."""
_TRACEBACK_FIELDS: Final = frozenset({"exc", "stack"})
_OWN_FIELDS: Final = frozenset({"ts", "level"})
"""Written by the formatter itself, short and fixed: never cut, so a line always parses."""

PROBE_PATHS: Final = frozenset({"/healthz", "/readyz"})
"""Paths whose `GET` access lines are logged at DEBUG: load balancers and orchestrators
poll them every few seconds, and at INFO they would drown every other line."""
_ACCESS_LOGGER = "uvicorn.access"
_ACCESS_FORMAT: Final = '%s - "%s %s HTTP/%s" %d'
"""uvicorn's access line (h11 and httptools alike): client, method, path with its query
string, HTTP version, status."""
_ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")
_SERVER_LOGGERS: Final = frozenset({"uvicorn", "uvicorn.error", "uvicorn.asgi"})
_WS_HANDSHAKE: Final = {
    '%s - "WebSocket %s" [accepted]': "accepted",
    '%s - "WebSocket %s" 403': 403,
    '%s - "WebSocket %s" %d': None,  # the status is the record's third argument
}
"""uvicorn's websocket handshake lines (logged on `uvicorn.error`) and their outcome."""


# --- Call context ------------------------------------------------------------------------


def bind_call(call_sid: str | None = None, stream_sid: str | None = None) -> None:
    """Attach call identifiers to the current context (task); None leaves a value as is.

    asyncio tasks copy the context when they are created, so tasks started after this call
    inherit the identifiers, while sibling calls (other tasks) are unaffected.
    """
    if call_sid is not None:
        _call_sid.set(call_sid)
    if stream_sid is not None:
        _stream_sid.set(stream_sid)


def clear_call() -> None:
    """Remove the call identifiers from the current context."""
    _call_sid.set(None)
    _stream_sid.set(None)


def current_call() -> dict[str, str]:
    """The identifiers bound in the current context (only those that are set)."""
    bound = {"call_sid": _call_sid.get(), "stream_sid": _stream_sid.get()}
    return {key: value for key, value in bound.items() if value is not None}


def _install_record_factory() -> None:
    """Stamp call context onto every LogRecord at creation, whatever handler sees it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _FACTORY_MARK, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.call_sid = _call_sid.get()
        record.stream_sid = _stream_sid.get()
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


# --- Secrets -----------------------------------------------------------------------------


def register_secret(value: str | None) -> None:
    """Mask `value` in every rendered log line from now on (ignored if shorter than 6)."""
    global _secrets
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
    with _secrets_lock:
        # Longest first, so a secret containing another is masked whole.
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def scrub(text: str) -> str:
    """Replace every registered secret in `text` with `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


# --- Emitting ----------------------------------------------------------------------------


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: object) -> None:
    """Log `event` (a short dotted name like `call.started`) with structured fields.

    The level check comes first so debug events on hot paths cost almost nothing when
    debug logging is off.
    """
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields, "is_event": True}, stacklevel=2)


# --- Formatting --------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"


def _json_text(value: object) -> str | None:
    """`value` as compact JSON, unknown objects as their text; None when it has none."""
    try:
        return json.dumps(value, ensure_ascii=False, default=_safe_str, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):  # bad keys, cycles, huge ints, depth
        return None


def _to_json(value: object) -> str:
    """JSON-encode anything: unknown objects become strings, and nothing ever raises."""
    text = _json_text(value)
    return json.dumps(_safe_str(value), ensure_ascii=False) if text is None else text


def _safe_str(value: object) -> str:
    """`str(value)`, which can raise (an int of more than 4300 digits, a broken __str__)."""
    try:
        return str(value)
    except Exception:  # any object's __str__; a log line must never fail
        return f"<unprintable {type(value).__name__}>"


def cut(text: str, limit: int) -> str:
    """`text` when at most `limit` characters long, else its first `limit` characters
    marked with how many were left out: `abc…(+12345 chars)`. Secrets are masked first,
    so the cut can never leave part of one behind."""
    if len(text) <= limit:
        return text
    text = scrub(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def _bounded(value: object, limit: int, structured: bool) -> object:
    """`value` ready to render, at most `limit` characters of text (plus the cut mark).

    Scalars stay as they are (an int too long to print is text, cut); other objects are
    their text (`str`), cut; lists and dicts are measured as their JSON text and, when
    short enough, kept as values for the JSON format (`structured`) or as that text for
    key=value lines."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if value.bit_length() <= 64:
            return value
        digits = _safe_str(value)  # "<unprintable int>" past 4300 digits
        printable = len(digits) <= limit and digits.lstrip("-").isdigit()
        return value if printable else cut(digits, limit)
    if isinstance(value, str):
        return cut(value, limit)
    if not isinstance(value, list | tuple | dict):
        return cut(_safe_str(value), limit)  # any other object is logged as its text
    text = _json_text(value)
    if text is None:
        return cut(_safe_str(value), limit)
    if len(text) > limit:
        return cut(text, limit)
    return value if structured else text


def _escape_unprintable(text: str) -> str:
    """Escape what JSON leaves raw but some readers take as a line break or a control:
    DEL, C1 controls (NEL), U+2028 / U+2029 and other non-printable characters."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _access_args(record: logging.LogRecord) -> tuple[Any, ...] | None:
    """The arguments of one of uvicorn's access lines (see `_ACCESS_FORMAT`), else None."""
    args = record.args
    if record.name != _ACCESS_LOGGER or record.msg != _ACCESS_FORMAT:
        return None
    if not isinstance(args, tuple) or len(args) != len(_ACCESS_FIELDS):
        return None
    return args


def server_fields(record: logging.LogRecord) -> dict[str, object] | None:
    """uvicorn's own record as event fields, or None when it is not one of uvicorn's.

    An access line becomes `event=http.access` with its arguments as fields (and no `msg`:
    it would repeat them); a websocket handshake line `event=ws.access` with `client`,
    `path` and `status` beside its `msg`; any other line of uvicorn's `event=server.log`
    and its `msg` (`Uvicorn running on ...`, a bind error, a traceback's headline). A path's
    query string is logged as uvicorn gives it: the registered secrets are masked in the
    rendered line like anywhere else."""
    name = record.name
    if name == _ACCESS_LOGGER:
        access = _access_args(record)
        if access is None:  # a line of another shape: keep its text
            return {"event": "http.access", "msg": record.getMessage()}
        return {"event": "http.access", **dict(zip(_ACCESS_FIELDS, access, strict=True))}
    if name not in _SERVER_LOGGERS:
        return None
    fields: dict[str, object] = {"event": "server.log", "msg": record.getMessage()}
    args = record.args
    if isinstance(record.msg, str) and record.msg in _WS_HANDSHAKE and isinstance(args, tuple):
        outcome = _WS_HANDSHAKE[record.msg]
        if len(args) == (2 if outcome is not None else 3):
            status = args[2] if outcome is None else outcome
            fields.update(event="ws.access", client=args[0], path=args[1], status=status)
    return fields


def _kv_value(value: object) -> str:
    """Render one value for a key=value line; quote it when it would be ambiguous."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _safe_str(value)
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple | dict):
        text = _to_json(value)
    else:
        text = _safe_str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return _escape_unprintable(json.dumps(text, ensure_ascii=False))
    return text


class StructuredFormatter(logging.Formatter):
    """Render records as `key=value` lines (`fmt="kv"`) or JSON objects (`fmt="json"`)."""

    def __init__(self, fmt: str = "kv", max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> None:
        super().__init__()
        if fmt not in ("kv", "json"):
            raise ValueError(f"unknown log format {fmt!r}; use 'kv' or 'json'")
        if max_field_chars < 1:
            raise ValueError(f"max_field_chars must be positive, not {max_field_chars}")
        self.style_name = fmt
        self.max_field_chars = max_field_chars

    def _fields(self, record: logging.LogRecord) -> dict[str, object]:
        out: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if getattr(record, "is_event", False):
            out["event"] = record.msg
        elif (server := server_fields(record)) is not None:
            out.update(server)
        else:
            out["msg"] = record.getMessage()
        for key in ("call_sid", "stream_sid"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                name = str(key)
                out[f"field_{name}" if name in _RESERVED else name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return out

    def _bounded_fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields = self._fields(record)
        limit, structured = self.max_field_chars, self.style_name == "json"
        for key, value in fields.items():
            if key not in _OWN_FIELDS:
                room = limit * _TRACEBACK_FACTOR if key in _TRACEBACK_FIELDS else limit
                fields[key] = _bounded(value, room, structured)
        return fields

    def format(self, record: logging.LogRecord) -> str:
        fields = self._bounded_fields(record)
        if self.style_name == "json":
            try:
                line = json.dumps(fields, ensure_ascii=False, default=_safe_str)
            except (TypeError, ValueError, RecursionError):
                line = json.dumps({k: _to_json(v) for k, v in fields.items()}, ensure_ascii=False)
            line = _escape_unprintable(line)
        else:
            line = " ".join(f"{key}={_kv_value(value)}" for key, value in fields.items())
        return scrub(line)


# --- Set-up ------------------------------------------------------------------------------


def _package_dir(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:  # pragma: no cover - a dependency of uvicorn[standard]
        return None
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


class WireDebugFilter(logging.Filter):
    """Drop sub-INFO records of the websocket protocol layer, whoever asked for them.

    The websockets library logs each frame (`< TEXT '{"event":"dtmf",...}'`) and each
    handshake header at DEBUG through whatever logger it was given. Those lines carry
    caller audio, DTMF digits and signatures, so they must never be rendered. Records are
    dropped when below INFO and either logged on a wire logger (`uvicorn.error`,
    `websockets*`) or produced by code inside the websockets package (any logger name,
    e.g. the Realtime client's). The logger levels are pinned too (`configure_logging`),
    which saves building the records at all; this filter holds even if a level is reset.
    """

    def __init__(self) -> None:
        super().__init__()
        self._origin = _package_dir("websockets")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        name = record.name
        if name == "uvicorn.error" or name == "websockets" or name.startswith("websockets."):
            return False
        origin = self._origin
        return not (origin and record.pathname.startswith(origin))


class ProbeAccessFilter(logging.Filter):
    """Log health and readiness probes' access lines at DEBUG (on `uvicorn.access`).

    A load balancer or an orchestrator polls `/healthz` and `/readyz` every second or so:
    at INFO each poll would be a line, thousands an hour that bury the calls' own. So the
    access line of a `GET` of one of `PROBE_PATHS` (any status, any query string) is
    demoted to DEBUG and only passes when the logger is enabled for DEBUG (LOG_LEVEL=DEBUG);
    every other access line keeps its level. A filter on the logger runs after the logger's
    own level check (INFO), before any handler, so this is where the demotion must be.
    """

    def __init__(self, paths: frozenset[str] = PROBE_PATHS) -> None:
        super().__init__()
        self.paths = paths
        self._logger = logging.getLogger(_ACCESS_LOGGER)

    def filter(self, record: logging.LogRecord) -> bool:
        args = _access_args(record)
        if args is None or args[1] != "GET" or str(args[2]).split("?", 1)[0] not in self.paths:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return self._logger.isEnabledFor(logging.DEBUG)


def configure_logging(
    fmt: str = "kv",
    level: str = "INFO",
    *,
    stream: Any = None,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
) -> None:
    """Install the structured handler on the root logger, replacing any earlier one.

    Safe to call more than once (each call replaces our handler instead of adding one).
    uvicorn's loggers lose their own handlers and propagate to the root, so access and
    error lines share the format (and become events, `server_fields`); the access logger
    stays off if uvicorn's `--no-access-log` turned it off, and gets `ProbeAccessFilter`
    (probes at DEBUG). The websocket wire loggers stay at INFO or above even at
    DEBUG, and `WireDebugFilter` drops their debug lines (see there): frames and headers
    would leak caller audio, key presses and signatures. `stream` defaults to stderr;
    tests pass a StringIO. `max_field_chars` (LOG_MAX_FIELD_CHARS) caps every field.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    formatter = StructuredFormatter(fmt.lower(), max_field_chars)
    _install_record_factory()

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(WireDebugFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(numeric)

    access = logging.getLogger(_ACCESS_LOGGER)
    # uvicorn's `--no-access-log` leaves the access logger without handlers and not
    # propagating (its dictConfig otherwise gives it a handler): honour that, don't revive it.
    access_off = not access.propagate and not access.handlers
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = not (access_off and name == _ACCESS_LOGGER)
        uvicorn_logger.setLevel(logging.NOTSET)
    for old_filter in [f for f in access.filters if isinstance(f, ProbeAccessFilter)]:
        access.removeFilter(old_filter)
    access.addFilter(ProbeAccessFilter())
    # Not below INFO, and not below the chosen level either: a logger's own level decides
    # what it emits, so pinning INFO under LOG_LEVEL=WARNING would let INFO lines through.
    for name in _WIRE_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
