"""The call viewer: the playout model, the SVG timeline and the WAV of what was heard.

Checked against the fixture library (which keeps only audio lengths), a copy of a library
call with generated audio (distinct mu-law bytes per chunk), and small hand-built calls
whose every sample is known.
"""

from __future__ import annotations

import base64
import io
import json
import math
import wave
import xml.etree.ElementTree as ET
from array import array
from pathlib import Path
from typing import Any

import pytest

from app.replay import Entry, Fixture, load, parse
from app.replay.__main__ import main
from app.viewer.playout import playout
from app.viewer.svg import MIN_WIDTH, PX_PER_S, RIGHT_MARGIN, X0, render_svg, x_of
from app.viewer.wav import ULAW_TABLE, decode_ulaw, render_wav

CALLS = Path(__file__).parent / "fixtures" / "calls"
LIBRARY = sorted(CALLS.glob("*.jsonl"))
BARGE_INS = [p for p in LIBRARY if '"event":"clear"' in p.read_text()]
SVG = "{http://www.w3.org/2000/svg}"


def _svg(fixture: Fixture) -> ET.Element:
    return ET.fromstring(render_svg(fixture))


def _all(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if cls in e.get("class", "").split()]


def _lines(header: dict[str, Any], entries: list[tuple[float, str, dict[str, Any]]]) -> list[str]:
    out = [json.dumps(header)]
    out += [json.dumps({"t_ms": t, "dir": d, "msg": m}) for t, d, m in entries]
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _media(payload: bytes, **media: Any) -> dict[str, Any]:
    return {"event": "media", "media": {**media, "payload": _b64(payload)}}


def _mark(name: str) -> dict[str, Any]:
    return {"event": "mark", "mark": {"name": name}}


def with_audio(path: Path) -> Fixture:
    """A library call as if recorded with RECORD_AUDIO=true: every length-only payload
    becomes that many bytes; bot chunk k is all byte (16 + k % 200), caller frames 0x55."""
    fixture = load(path)
    entries, k = [], 0
    for e in fixture.entries:
        node = e.msg.get("media", {}).get("payload") if e.msg.get("event") == "media" else None
        if isinstance(node, dict) and "_audio_bytes" in node:
            value = (16 + k % 200) if e.dir == "to_twilio" else 0x55
            k += e.dir == "to_twilio"
            msg = {
                **e.msg,
                "media": {**e.msg["media"], "payload": _b64(bytes([value]) * node["_audio_bytes"])},
            }
            entries.append(Entry(e.t_ms, e.dir, msg, e.line))
        else:
            entries.append(e)
    return Fixture({**fixture.header, "audio": "kept"}, entries, path)


# -- a hand-built call, every sample known ----------------------------------------------

A, B, C, D = 0x10, 0x20, 0x30, 0x40  # bot chunk bytes
CALLER = (0x01, 0x02, None, 0x04)  # caller frames at 0, 20, (lost), 60 ms


def small_call(digit: str = "9") -> Fixture:
    """Bot chunks A, B (sent at 100 ms) and C (105 ms) of 20 ms each: A plays 100-120,
    B 120-140, C from 140 until the clear at 150 cuts it (80 bytes). A mark echo for B
    arrives with the clear's flush: B had played. D, of the next item, is sent at 200."""
    entries: list[tuple[float, str, dict[str, Any]]] = []
    for n, value in enumerate(CALLER):
        if value is not None:
            payload = bytes([value]) * 160
            entries.append((n * 20 + 1.5, "from_twilio", _media(payload, timestamp=str(n * 20))))
    entries += [
        (100.0, "to_twilio", _media(bytes([A]) * 160)),
        (100.0, "to_twilio", _mark("item_a.g0.m1")),
        (100.0, "to_twilio", _media(bytes([B]) * 160)),
        (100.0, "to_twilio", _mark("item_a.g0.m2")),
        (105.0, "to_twilio", _media(bytes([C]) * 160)),
        (105.0, "to_twilio", _mark("item_a.g0.m3")),
        (120.0, "from_twilio", _mark("item_a.g0.m1")),
        (150.0, "from_openai", {"type": "input_audio_buffer.speech_started"}),
        (150.0, "to_twilio", {"event": "clear"}),
        (150.0, "to_openai", {"type": "response.cancel"}),
        (
            150.0,
            "to_openai",
            {"type": "conversation.item.truncate", "item_id": "item_a", "audio_end_ms": 50},
        ),
        (151.0, "from_twilio", _mark("item_a.g0.m2")),
        (151.0, "from_twilio", _mark("item_a.g0.m3")),
        (180.0, "from_openai", {"type": "input_audio_buffer.speech_stopped"}),
        (200.0, "to_twilio", _media(bytes([D]) * 160)),
        (200.0, "to_twilio", _mark("item_b.g1.m4")),
        (220.0, "from_twilio", _mark("item_b.g1.m4")),
        (230.0, "from_twilio", {"event": "dtmf", "dtmf": {"digit": digit}}),
        (
            240.0,
            "from_openai",
            {
                "type": "response.output_item.done",
                "item": {"type": "function_call", "name": "end_call"},
            },
        ),
        (250.0, "rest", {"request": {"kind": "hangup", "params": {"Status": "completed"}}}),
        (260.0, "rest", {"response": {"status": 200}}),
        (300.0, "from_twilio", {"event": "stop"}),
    ]
    return parse(_lines({"fixture": 1, "call_sid": "CAsmall", "audio": "kept"}, entries))


def test_playout_follows_twilio_queue_clear_and_echoes() -> None:
    model = playout(small_call())
    got = [(p.item_id, p.start_ms, p.end_ms, p.length_bytes, p.cut) for p in model.played]
    assert got == [
        ("item_a", 100.0, 120.0, 160, False),
        ("item_a", 120.0, 140.0, 160, False),
        ("item_a", 140.0, 150.0, 80, True),
        ("item_b", 200.0, 220.0, 160, False),
    ]
    assert [(s.item_id, s.nbytes) for s in model.sent] == [("item_a", 480), ("item_b", 160)]
    assert [(c.t_ms, c.heard_ms, c.item_id) for c in model.clears] == [(150.0, 50, "item_a")]
    assert [(s.start_ms, s.end_ms) for s in model.speech] == [(150.0, 180.0)]
    kinds = [(e.kind, e.label) for e in model.events]
    assert kinds == [
        ("key", "key"),
        ("tool", "end_call"),
        ("rest", "REST hangup"),
        ("rest", "REST answer 200"),
        ("end", "end (stop)"),
    ]
    assert model.duration_ms == 300.0


def test_a_late_echo_re_anchors_the_queue() -> None:
    """Chunk 1 (100 ms) echoes 30 ms late: chunk 2, queued behind it, starts at the echo."""
    z = bytes(800)
    entries = [
        (0.0, "to_twilio", _media(z)),
        (0.0, "to_twilio", _mark("i.g0.m1")),
        (0.0, "to_twilio", _media(z)),
        (0.0, "to_twilio", _mark("i.g0.m2")),
        (130.0, "from_twilio", _mark("i.g0.m1")),
        (500.0, "from_twilio", {"event": "stop"}),
    ]
    model = playout(parse(_lines({"fixture": 1}, entries)))
    assert [(p.start_ms, p.end_ms) for p in model.played] == [(0.0, 100.0), (130.0, 230.0)]


# -- SVG against the library --------------------------------------------------------------


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_every_library_call_renders_as_xml(path: Path) -> None:
    root = _svg(load(path))
    assert root.get("role") == "img"
    title = root.find(SVG + "title")
    assert title is not None and title.get("id") == root.get("aria-labelledby")
    assert (title.text or "").startswith("Call CA")
    width, height = float(root.get("width", 0)), float(root.get("height", 0))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert width >= MIN_WIDTH and height > 0
    for cls in ("speech", "sent", "played"):
        for el in _all(root, "rect", cls):
            assert el.find(SVG + "title") is not None
    for el in root.iter():
        if el.get("class") in ("clear", "tool", "key", "rest", "end"):
            assert el.find(SVG + "title") is not None


def _resumed(fixture: Fixture, clear: Any) -> bool:
    """Resume mode: audio of an item queued at `clear` is sent again after it, before any
    truncate: the clear only paused the answer."""
    before = {
        mark.split(".")[0]
        for e in fixture.entries
        if e.t_ms <= clear.t_ms and e.dir == "to_twilio" and e.msg.get("event") == "mark"
        for mark in [e.msg["mark"]["name"]]
    }
    for e in fixture.entries:
        if e.t_ms <= clear.t_ms or e.line <= clear.line:
            continue
        if e.msg.get("type") == "conversation.item.truncate":
            return False
        if e.dir == "to_twilio" and e.msg.get("event") == "mark":
            return bool(e.msg["mark"]["name"].split(".")[0] in before)
    return False


@pytest.mark.parametrize("path", BARGE_INS, ids=lambda p: p.stem)
def test_a_pause_that_resumed_is_drawn_as_a_pause_not_a_cut(path: Path) -> None:
    fixture = load(path)
    all_clears = [
        e for e in fixture.entries if e.dir == "to_twilio" and e.msg.get("event") == "clear"
    ]
    paused = [c for c in all_clears if _resumed(fixture, c)]
    lines = _all(_svg(fixture), "line", "pause")
    assert len(lines) == len(paused)
    for line, clear in zip(lines, paused, strict=True):
        assert float(line.get("x1", "nan")) == pytest.approx(x_of(clear.t_ms), abs=0.006)
        assert float(line.get("data-resumed-ms", -1)) > float(line.get("data-ms", 0))
    if path.stem in ("noise_resumes", "backchannel_resumes", "noise_during_goodbye"):
        assert len(paused) == 1  # the library's false turns each pause once
    if path.stem == "real_interruption_resume":
        assert paused == []  # a real turn's clear is a barge-in


def _cuts(fixture: Fixture) -> list[Entry]:
    """The clears that were barge-ins (not pauses that resumed)."""
    return [
        e
        for e in fixture.entries
        if e.dir == "to_twilio" and e.msg.get("event") == "clear" and not _resumed(fixture, e)
    ]


CUTS = [p for p in BARGE_INS if _cuts(load(p))]


def test_the_library_has_pauses_and_barge_ins() -> None:
    assert set(BARGE_INS) - set(CUTS)  # calls whose only clears paused and resumed
    assert CUTS


@pytest.mark.parametrize("path", CUTS, ids=lambda p: p.stem)
def test_barge_in_cut_at_the_clear_as_the_marks_say(path: Path) -> None:
    fixture = load(path)
    clears = _cuts(fixture)
    truncates = [
        e.msg for e in fixture.entries if e.msg.get("type") == "conversation.item.truncate"
    ]
    root = _svg(fixture)
    lines = _all(root, "line", "clear")
    assert len(lines) == len(clears) >= 1
    for line, clear, truncate in zip(lines, clears, truncates, strict=True):
        x = x_of(clear.t_ms)
        assert float(line.get("x1", "nan")) == pytest.approx(x, abs=0.006)
        assert line.get("x1") == line.get("x2")
        assert int(line.get("data-heard-ms", -1)) == truncate["audio_end_ms"]
        item = truncate["item_id"]
        played = [p for p in _all(root, "rect", "played") if p.get("data-item") == item]
        last = played[-1]
        assert "cut" in last.get("class", "").split()
        assert last.get("data-end-ms") == line.get("data-ms")
        right = float(last.get("x", "nan")) + float(last.get("width", "nan"))
        assert right == pytest.approx(float(line.get("x1", "nan")), abs=1e-6)
        heard_bytes = sum(int(p.get("data-bytes", 0)) for p in played)
        assert heard_bytes // 8 == truncate["audio_end_ms"]  # what the marks say
        (sent,) = [s for s in _all(root, "rect", "sent") if s.get("data-item") == item]
        played_px = sum(float(p.get("width", 0)) for p in played)
        assert float(sent.get("width", 0)) > played_px + 1
        assert int(sent.get("data-bytes", 0)) > heard_bytes


def test_uncut_items_play_all_they_sent() -> None:
    model = playout(load(CALLS / "question_and_answer.jsonl"))
    assert model.sent and all(model.played_bytes(s.item_id) == s.nbytes for s in model.sent)
    assert not any(p.cut for p in model.played)


def test_events_lane_shows_tools_rest_and_end() -> None:
    root = _svg(load(CALLS / "transfer.jsonl"))
    texts = {
        cls: ["".join(g.itertext()) for g in _all(root, "g", cls)]
        for cls in ("tool", "rest", "end")
    }
    assert any("transfer_call" in t for t in texts["tool"])
    assert any("REST transfer" in t for t in texts["rest"])
    assert any("REST answer 200" in t for t in texts["rest"])
    assert len(texts["end"]) == 1 and "transferred" in texts["end"][0]


def test_events_lane_shows_business_tools_their_outcome_and_cancels() -> None:
    def labels(name: str) -> list[str]:
        root = _svg(load(CALLS / name))
        return ["".join(g.itertext()) for g in _all(root, "g", "tool")]

    assert any("lookup_order: ok" in t for t in labels("tool_call.jsonl"))
    assert any("tool cancelled" in t for t in labels("barge_in_cancels_tool.jsonl"))


def test_key_presses_never_show_the_digit() -> None:
    library = render_svg(load(CALLS / "dtmf.jsonl"))
    assert "*" not in library and "digit" not in library
    assert len(_all(ET.fromstring(library), "g", "key")) == 1
    root = _svg(small_call(digit="9"))
    (key,) = _all(root, "g", "key")
    assert "9" not in "".join(key.itertext())  # at 230 ms: no 9 in the time either
    assert "digit" not in render_svg(small_call(digit="9"))


def test_positions_follow_the_scale() -> None:
    root = _svg(small_call())
    (speech,) = _all(root, "rect", "speech")
    assert float(speech.get("x", "nan")) == pytest.approx(x_of(150), abs=0.006)
    assert float(speech.get("width", "nan")) == pytest.approx(30 / 1000 * PX_PER_S, abs=0.011)
    assert x_of(0) == X0 and x_of(1000) == X0 + PX_PER_S
    assert float(root.get("width", 0)) == MIN_WIDTH  # a 0.3 s call: the minimum width


def test_a_ten_minute_call_is_one_wide_scrollable_picture() -> None:
    """600 s: the bot talks 5 s of every 10 (100 ms chunks, echoed in real time), the caller
    sends 20 ms frames throughout."""
    entries: list[Entry] = []
    for k in range(30_000):
        entries.append(
            Entry(
                k * 20.0,
                "from_twilio",
                {"event": "media", "media": {"payload": {"_audio_bytes": 160}}},
            )
        )
    seq = 0
    for turn in range(60):
        item, t0 = f"item_{turn}", turn * 10_000.0
        entries.append(
            Entry(t0 + 5000, "from_openai", {"type": "input_audio_buffer.speech_started"})
        )
        entries.append(
            Entry(t0 + 9000, "from_openai", {"type": "input_audio_buffer.speech_stopped"})
        )
        for c in range(50):
            seq += 1
            name = f"{item}.g0.m{seq}"
            entries.append(
                Entry(
                    t0 + c * 10,
                    "to_twilio",
                    {"event": "media", "media": {"payload": {"_audio_bytes": 800}}},
                )
            )
            entries.append(
                Entry(t0 + c * 10, "to_twilio", {"event": "mark", "mark": {"name": name}})
            )
            entries.append(
                Entry(t0 + (c + 1) * 100, "from_twilio", {"event": "mark", "mark": {"name": name}})
            )
    entries.append(Entry(600_000.0, "from_twilio", {"event": "stop"}))
    entries.sort(key=lambda e: e.t_ms)
    fixture = Fixture({"fixture": 1, "call_sid": "CAlong", "audio": "lengths"}, entries)
    text = render_svg(fixture)  # how long it takes is a figure for bench/, not a test
    root = ET.fromstring(text)
    expected = int(X0 + 600 * PX_PER_S + RIGHT_MARGIN)
    assert float(root.get("width", 0)) == expected
    assert root.get("viewBox", "").split()[2] == str(expected)
    assert len(_all(root, "rect", "speech")) == 60
    played = _all(root, "rect", "played")
    assert len(played) == 60  # one bar per answer: its pieces play back to back
    assert all(int(p.get("data-bytes", 0)) == 50 * 800 for p in played)
    assert render_wav(fixture) is None


# -- WAV -----------------------------------------------------------------------------------


def _channels(data: bytes) -> tuple[int, int, int, array[int], array[int]]:
    with wave.open(io.BytesIO(data)) as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        frames = array("h", w.readframes(w.getnframes()))
    return channels, width, rate, frames[0::2], frames[1::2]


def test_ulaw_table_is_g711() -> None:
    assert ULAW_TABLE[0xFF] == 0 and ULAW_TABLE[0x7F] == 0
    assert ULAW_TABLE[0x00] == -32124 and ULAW_TABLE[0x80] == 32124
    assert ULAW_TABLE[0xFE] == 8 and ULAW_TABLE[0x7E] == -8  # as audioop.ulaw2lin
    assert len(set(ULAW_TABLE)) == 255  # every byte distinct, but the two zeros


def test_wav_places_heard_bot_audio_sample_exactly() -> None:
    data = render_wav(small_call())
    assert data is not None
    channels, width, rate, left, right = _channels(data)
    assert (channels, width, rate) == (2, 2, 8000)
    assert len(right) == 300 * 8  # the call's duration

    def run(track: array[int], start: int, end: int) -> list[int]:
        return list(track[start:end])

    t = ULAW_TABLE
    assert run(right, 0, 800) == [0] * 800
    assert run(right, 800, 960) == [t[A]] * 160  # A: 100-120 ms
    assert run(right, 960, 1120) == [t[B]] * 160  # B: 120-140 ms
    assert run(right, 1120, 1200) == [t[C]] * 80  # C: cut by the clear at 150 ms
    assert run(right, 1200, 1600) == [0] * 400  # the rest of C never played
    assert run(right, 1600, 1760) == [t[D]] * 160  # D: 200-220 ms
    assert run(right, 1760, 2400) == [0] * 640
    assert run(left, 0, 160) == [t[0x01]] * 160
    assert run(left, 160, 320) == [t[0x02]] * 160
    assert run(left, 320, 480) == [0] * 160  # the lost frame is silence
    assert run(left, 480, 640) == [t[0x04]] * 160
    assert run(left, 640, 2400) == [0] * 1760


def test_wav_of_a_library_barge_in_cuts_at_the_clear() -> None:
    fixture = with_audio(CALLS / "barge_in.jsonl")
    model = playout(fixture)
    data = render_wav(fixture)
    assert data is not None
    _, _, _, left, right = _channels(data)
    assert len(right) == math.ceil(model.duration_ms * 8)
    (clear,) = model.clears
    at = round(clear.t_ms * 8)
    cut = next(p for p in model.played if p.cut)
    chunk = model.chunks[cut.chunk_index]
    begin = round(cut.start_ms * 8)
    assert list(right[begin:at]) == list(
        decode_ulaw(bytes([16 + chunk.index % 200]) * (at - begin))
    )
    after = next(p for p in model.played if p.start_ms > clear.t_ms)
    assert set(right[at + 1 : round(after.start_ms * 8)]) == {0}
    assert set(left[: round(model.duration_ms * 8) - 200]) == {ULAW_TABLE[0x55]}


def test_no_wav_without_audio() -> None:
    assert render_wav(load(CALLS / "barge_in.jsonl")) is None


# -- the command line ------------------------------------------------------------------------


def test_cli_writes_svg_and_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = tmp_path / "kept.jsonl"
    fixture = small_call()
    lines = [json.dumps(fixture.header)]
    lines += [json.dumps({"t_ms": e.t_ms, "dir": e.dir, "msg": e.msg}) for e in fixture.entries]
    kept.write_text("\n".join(lines) + "\n")
    svg, wav_out = tmp_path / "call.svg", tmp_path / "call.wav"
    assert main(["--svg", str(svg), str(CALLS / "barge_in.jsonl")]) == 0
    ET.fromstring(svg.read_text())
    assert main(["--wav", str(wav_out), str(kept)]) == 0
    assert _channels(wav_out.read_bytes())[:3] == (2, 2, 8000)
    capsys.readouterr()
    assert main(["--wav", str(tmp_path / "no.wav"), str(CALLS / "barge_in.jsonl")]) == 1
    assert "recorded without audio (RECORD_AUDIO=false)" in capsys.readouterr().err
    assert not (tmp_path / "no.wav").exists()
    assert main(["--svg", str(svg), str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["--svg", str(svg), str(bad)]) == 2
    assert "not a call fixture" in capsys.readouterr().err


def test_hostile_text_in_a_fixture_still_renders_valid_svg() -> None:
    """Whatever a fixture holds (it comes from the network), the SVG parses as XML: markup
    is escaped and characters XML 1.0 forbids are dropped."""
    bad = "<script>alert(1)</script>]]>\x01\x1f\ufffe"
    item = "it" + bad
    entries: list[tuple[float, str, dict[str, Any]]] = [
        (100.0, "to_twilio", _media(bytes([A]) * 160)),
        (100.0, "to_twilio", _mark(f"{item}.g0.m1")),
        (150.0, "to_twilio", {"event": "clear"}),
        (
            150.0,
            "to_openai",
            {"type": "conversation.item.truncate", "item_id": item, "audio_end_ms": 10},
        ),
        (
            200.0,
            "from_openai",
            {
                "type": "response.output_item.done",
                "item": {"type": "function_call", "name": "tool" + bad},
            },
        ),
        (300.0, "from_twilio", {"event": "stop"}),
    ]
    fixture = parse(_lines({"fixture": 1, "call_sid": "CA" + bad, "audio": "kept"}, entries))
    text = render_svg(fixture)
    root = ET.fromstring(text)
    assert "<script>" not in text and "\x01" not in text and "\ufffe" not in text
    every = " ".join([*root.itertext(), *(v for e in root.iter() for v in e.attrib.values())])
    assert "CA<script>alert(1)</script>]]>" in every
    assert "tool<script>" in every and "it<script>" in every


def test_media_sent_after_the_end_is_ignored() -> None:
    """Audio the bridge sent after Twilio's `stop` was never played: no chunk, no sent bar."""
    base = small_call()
    late = [
        (310.0, "to_twilio", _media(bytes([D]) * 160)),
        (310.0, "to_twilio", _mark("item_late.g2.m5")),
    ]
    lines = [json.dumps(base.header)]
    lines += [json.dumps({"t_ms": e.t_ms, "dir": e.dir, "msg": e.msg}) for e in base.entries]
    lines += [json.dumps({"t_ms": t, "dir": d, "msg": m}) for t, d, m in late]
    model = playout(parse(lines))
    assert model.duration_ms == 300.0
    assert all(c.sent_ms <= 300.0 for c in model.chunks)
    assert len(model.chunks) == len(playout(base).chunks)
    assert "item_late" not in {s.item_id for s in model.sent}
