"""A call fixture as an SVG timeline: who spoke when, and what the caller really heard.

Four lanes, top to bottom, over a time axis in seconds:

- caller speech: the Realtime service's VAD spans (`speech_started` .. `speech_stopped`);
- bot sent: each item's audio as sent to Twilio, drawn from its first send and as long as
  the audio (hatched: sent is not heard);
- bot played: what the caller heard, from `app.viewer.playout` (solid; a piece a clear
  cut has a dashed outline and the class `played cut`);
- events: clears (a line across every lane, labelled with the ms the truncate says the
  caller heard), tool calls, key presses (never the digit), REST requests and answers,
  and the end.

The scale is fixed (`PX_PER_S`), so a long call is a wide picture that a page scrolls
horizontally, and a position can be checked: `x_of(ms)`. Every element has a `<title>`
with its exact times (shown on hover), and the markup is stable for tests and scripts
(classes and `data-*` attributes, listed in `render_svg`). Colours have enough contrast
on white, and nothing is told by colour alone: lanes are labelled, sent bars hatched,
cut bars dashed, events named.

Written by hand rather than with an SVG library: the picture needs five element kinds,
escaping is `xml.sax.saxutils` (after dropping what XML 1.0 forbids), and the project gains
no dependency for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from app.call.playback import BYTES_PER_MS
from app.replay import Fixture
from app.viewer.playout import Played, Playout, playout

PX_PER_S: Final = 40.0
#: Left of the time origin: the lane labels.
X0: Final = 120.0
RIGHT_MARGIN: Final = 40.0
MIN_WIDTH: Final = 720.0
TOP: Final = 34.0
LANE_H: Final = 30.0
LANE_GAP: Final = 10.0
EVENTS_H: Final = 54.0
AXIS_H: Final = 34.0
#: Pieces of one item closer than this are drawn as one bar (echo jitter, not silence).
JOIN_MS: Final = 5.0
LANES: Final = ("caller speech", "bot sent", "bot played", "events")

_COLOURS: Final = {
    "speech": "#1d4ed8",
    "sent": "#475569",
    "played": "#166534",
    "cut": "#b91c1c",
    "pause": "#b45309",
    "tool": "#6b21a8",
    "key": "#92400e",
    "rest": "#1f2937",
    "end": "#111827",
    "text": "#111827",
    "grid": "#cbd5e1",
}


def x_of(ms: float) -> float:
    """The x of call time `ms` (ms since the media stream opened)."""
    return X0 + ms / 1000 * PX_PER_S


def _px(value: float) -> str:
    """A coordinate as written: 2 decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _ms(value: float) -> str:
    """A time as written in `data-*` attributes: to the microsecond, no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _s(ms: float) -> str:
    """A time for a hover title: call ms, to a tenth."""
    return f"{ms:.1f} ms"


#: What XML 1.0 does not allow in a document, even escaped: C0 controls but tab, newline
#: and CR; lone surrogates; U+FFFE and U+FFFF.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    """`text` without the characters XML 1.0 forbids (a fixture may hold anything)."""
    return _NOT_XML.sub("", text)


def _esc(text: str) -> str:
    """`text` as XML character data."""
    return escape(_clean(text))


def _attrs(attrs: dict[str, object]) -> str:
    return "".join(
        f" {_clean(k)}={quoteattr(_clean(str(v)))}" for k, v in attrs.items() if v is not None
    )


def _el(tag: str, title: str, attrs: dict[str, object], body: str = "") -> str:
    """One element with its hover `<title>` (attributes that are None are left out)."""
    return f"<{tag}{_attrs(attrs)}><title>{_esc(title)}</title>{body}</{tag}>"


def _text(x: float, y: float, text: str, **attrs: object) -> str:
    named = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
    return f"<text{_attrs({'x': _px(x), 'y': _px(y), **named})}>{_esc(text)}</text>"


def _bar(x1: float, x2: float) -> tuple[str, str]:
    """x and width of a bar from x1 to x2, written so that x + width is x2 as written."""
    left, right = round(x1, 2), round(x2, 2)
    return _px(left), _px(max(right - left, 0.0))


def _lane_y(index: int) -> float:
    return TOP + index * (LANE_H + LANE_GAP)


def _joined(pieces: Iterable[Played]) -> list[list[Played]]:
    """Played pieces grouped into bars: one item, back to back (within `JOIN_MS`)."""
    bars: list[list[Played]] = []
    for p in pieces:
        last = bars[-1][-1] if bars else None
        if (
            last is not None
            and last.item_id == p.item_id
            and not last.cut
            and p.start_ms - last.end_ms <= JOIN_MS
        ):
            bars[-1].append(p)
        else:
            bars.append([p])
    return bars


def _speech(model: Playout) -> list[str]:
    y = _lane_y(0) + 4
    out = []
    for s in model.speech:
        x, w = _bar(x_of(s.start_ms), x_of(s.end_ms))
        still = " (still speaking at the end)" if s.open else ""
        title = f"caller speaking {_s(s.start_ms)} to {_s(s.end_ms)}{still}"
        out.append(
            _el(
                "rect",
                title,
                {
                    "class": "speech",
                    "data-start-ms": _ms(s.start_ms),
                    "data-end-ms": _ms(s.end_ms),
                    "x": x,
                    "y": _px(y),
                    "width": w,
                    "height": _px(LANE_H - 8),
                    "fill": _COLOURS["speech"],
                },
            )
        )
    return out


def _sent(model: Playout) -> list[str]:
    y = _lane_y(1) + 4
    out = []
    for s in model.sent:
        end = s.first_ms + s.ms
        x, w = _bar(x_of(s.first_ms), x_of(end))
        title = (
            f"{s.item_id}: {s.ms:.0f} ms of audio sent between {_s(s.first_ms)} and {_s(s.last_ms)}"
        )
        out.append(
            _el(
                "rect",
                title,
                {
                    "class": "sent",
                    "data-item": s.item_id,
                    "data-start-ms": _ms(s.first_ms),
                    "data-last-sent-ms": _ms(s.last_ms),
                    "data-bytes": s.nbytes,
                    "x": x,
                    "y": _px(y),
                    "width": w,
                    "height": _px(LANE_H - 8),
                    "fill": "url(#sent-hatch)",
                    "stroke": _COLOURS["sent"],
                },
            )
        )
    return out


def _played(model: Playout) -> list[str]:
    y = _lane_y(2) + 4
    out = []
    for bar in _joined(model.played):
        first, last = bar[0], bar[-1]
        nbytes = sum(p.length_bytes for p in bar)
        cut = last.cut
        x, w = _bar(x_of(first.start_ms), x_of(last.end_ms))
        into = first.offset_bytes / BYTES_PER_MS
        title = (
            f"{first.item_id}: caller heard {into:.0f} to {into + nbytes / BYTES_PER_MS:.0f}"
            f" ms of it, {_s(first.start_ms)} to {_s(last.end_ms)}" + (" (cut off)" if cut else "")
        )
        style: dict[str, object] = {"fill": _COLOURS["played"]}
        if cut:
            style.update({"stroke": _COLOURS["cut"], "stroke-width": 2, "stroke-dasharray": "4 2"})
        out.append(
            _el(
                "rect",
                title,
                {
                    "class": "played cut" if cut else "played",
                    "data-item": first.item_id,
                    "data-start-ms": _ms(first.start_ms),
                    "data-end-ms": _ms(last.end_ms),
                    "data-bytes": nbytes,
                    "data-chunks": len(bar),
                    "x": x,
                    "y": _px(y),
                    "width": w,
                    "height": _px(LANE_H - 8),
                    **style,
                },
            )
        )
    return out


def _events(model: Playout, height: float) -> list[str]:
    lane = _lane_y(3)
    bottom = height - AXIS_H
    out = []
    for clear in model.clears:
        at = _px(x_of(clear.t_ms))
        if clear.resumed_ms is not None:
            after = _ms(clear.resumed_ms - clear.t_ms)
            title = f"clear at {_s(clear.t_ms)}: the answer paused, resumed {after} ms later"
            label = _text(
                x_of(clear.t_ms) + 3, lane + 12, f"paused {after} ms", fill=_COLOURS["pause"]
            )
            attrs: dict[str, Any] = {
                "class": "pause",
                "data-ms": _ms(clear.t_ms),
                "data-resumed-ms": _ms(clear.resumed_ms),
                "x1": at,
                "x2": at,
                "y1": _px(TOP - 4),
                "y2": _px(bottom),
                "stroke": _COLOURS["pause"],
                "stroke-width": 2,
                "stroke-dasharray": "2 3",
            }
            out += [_el("line", title, attrs), label]
            continue
        heard = "unknown" if clear.heard_ms is None else f"{clear.heard_ms} ms"
        of = f" of {clear.item_id}" if clear.item_id else ""
        title = f"clear at {_s(clear.t_ms)}: the caller heard {heard}{of}"
        label = _text(
            x_of(clear.t_ms) + 3, lane + 12, f"clear, heard {heard}", fill=_COLOURS["cut"]
        )
        out.append(
            _el(
                "line",
                title,
                {
                    "class": "clear",
                    "data-ms": _ms(clear.t_ms),
                    "data-heard-ms": clear.heard_ms,
                    "x1": at,
                    "x2": at,
                    "y1": _px(TOP - 4),
                    "y2": _px(bottom),
                    "stroke": _COLOURS["cut"],
                    "stroke-width": 2,
                    "stroke-dasharray": "6 3",
                },
            )
        )
        out.append(label)
    for n, ev in enumerate(model.events):
        x = x_of(ev.t_ms)
        row = lane + 26 + (n % 2) * 16  # two rows, so neighbours don't overprint
        colour = _COLOURS[ev.kind]
        mark = (
            f'<line x1="{_px(x)}" x2="{_px(x)}" y1="{_px(row - 10)}" y2="{_px(row + 3)}"'
            f' stroke="{colour}" stroke-width="2"/>'
        )
        body = mark + _text(x + 3, row, ev.label, fill=colour)
        title = f"{ev.label} at {_s(ev.t_ms)}"
        out.append(_el("g", title, {"class": ev.kind, "data-ms": _ms(ev.t_ms)}, body))
    return out


def _axis(duration_ms: float, width: float, height: float) -> list[str]:
    y = height - AXIS_H + 6
    out = [
        f'<line class="axis" x1="{_px(X0)}" x2="{_px(width - RIGHT_MARGIN / 2)}"'
        f' y1="{_px(y)}" y2="{_px(y)}" stroke="{_COLOURS["text"]}"/>'
    ]
    seconds = math.ceil(duration_ms / 1000)
    for s in range(seconds + 1):
        x = _px(x_of(s * 1000))
        major = s % 5 == 0
        out.append(
            f'<line class="tick" data-s="{s}" x1="{x}" x2="{x}" y1="{_px(y)}"'
            f' y2="{_px(y + (8 if major else 4))}" stroke="{_COLOURS["text"]}"/>'
        )
        if major:
            out.append(_text(x_of(s * 1000), y + 20, f"{s} s", text_anchor="middle", font_size=10))
    return out


def render_svg(fixture: Fixture) -> str:
    """The call as an SVG document (module docstring). The markup contract:

    - root `<svg role="img" aria-labelledby="call-title">` with `<title id="call-title">`
      naming the call, `width`/`height` in px and the same `viewBox`;
    - `<rect class="speech" data-start-ms data-end-ms>`;
    - `<rect class="sent" data-item data-start-ms data-last-sent-ms data-bytes>`;
    - `<rect class="played" data-item data-start-ms data-end-ms data-bytes data-chunks>`,
      `class="played cut"` when a clear (or the end) cut it;
    - `<line class="clear" data-ms data-heard-ms x1 x2>` (a barge-in), or
      `<line class="pause" data-ms data-resumed-ms x1 x2>` (resume mode: the answer went on);
    - `<g class="tool|key|rest|end" data-ms>`;
    - every one of them with a `<title>` child giving its exact times.
    x of a time is `x_of(ms)`; `data-*` times are call ms.
    """
    model = playout(fixture)
    duration = max(model.duration_ms, 0.0)
    width = max(MIN_WIDTH, math.ceil(x_of(duration) + RIGHT_MARGIN))
    height = _lane_y(3) + EVENTS_H + AXIS_H
    name = model.call_sid or (fixture.path.name if fixture.path else "unnamed call")
    title = f"Call {name}: {duration / 1000:.1f} s"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="call-title"'
        f' width="{_px(width)}" height="{_px(height)}" viewBox="0 0 {_px(width)} {_px(height)}"'
        f' font-family="sans-serif" font-size="12">'
    )
    defs = (
        '<defs><pattern id="sent-hatch" width="6" height="6" patternUnits="userSpaceOnUse"'
        ' patternTransform="rotate(45)"><rect width="6" height="6" fill="#e2e8f0"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{_COLOURS["sent"]}" stroke-width="2"/>'
        "</pattern></defs>"
    )
    parts = [
        head,
        f'<title id="call-title">{_esc(title)}</title>',
        defs,
        '<rect class="background" width="100%" height="100%" fill="#ffffff"/>',
        _text(8, 20, title, font_weight="bold", fill=_COLOURS["text"]),
    ]
    for i, label in enumerate(LANES):
        y = _lane_y(i)
        parts.append(_text(8, y + LANE_H / 2 + 4, label, class_="lane-label"))
        if label != "events":  # the events lane runs down to the axis
            parts.append(
                f'<line class="lane" x1="{_px(X0)}" x2="{_px(width - RIGHT_MARGIN / 2)}"'
                f' y1="{_px(y + LANE_H)}" y2="{_px(y + LANE_H)}" stroke="{_COLOURS["grid"]}"/>'
            )
    parts += _speech(model)
    parts += _sent(model)
    parts += _played(model)
    parts += _events(model, height)
    parts += _axis(duration, width, height)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
