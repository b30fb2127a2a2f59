"""Smoke test of `make bench-noise`: one noise and one interruption, in today's mode.

Runs the harness itself (`bench.noise.run.run_benchmark`: the real app, the fake caller and
the fake Realtime service on loopback, real time) on a door slam and a "hold on" with
`INTERRUPT_MODE=cancel`, and checks that the figures are computed and plausible: the noise
stopped the bot and cost its answer, the interruption was truncated within the audio the
caller had heard when the clear reached it. How good a mode is, is the benchmark's to say.
About 10 seconds.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.noise.corpus import build
from bench.noise.run import CONFIGS, LOST_BELOW, align, covered, run_benchmark, table

pytestmark = pytest.mark.e2e

DELTA_MS = 100  # the harness's answer comes in 100 ms deltas: the marks' granularity


async def test_noise_bench_measures_a_noise_and_an_interruption() -> None:
    corpus = build().select(["noise:door", "interruption:hold_on:en-us"])
    async with asyncio.timeout(60):
        (result,) = await run_benchmark([CONFIGS["cancel"]], corpus, concurrency=2)
    assert result["handler_errors"] == []
    rows = {row["clip"]: row for row in result["clips"]}
    assert all("error" not in row for row in rows.values()), rows
    noise, real = rows["noise:door"], rows["interruption:hold_on:en-us"]
    for row in (noise, real):
        assert row["problems"] == {
            "twilio_violations": 0,
            "invalid_events": 0,
            "rejected_truncates": 0,
        }
        assert row["ended"] == "quiet"
        assert row["speech_started"] >= 1 and row["stops"] >= 1  # a clear reached the caller
        # The figures are the benchmark's to report; here, that they are measured in order:
        # the clear came after the speech_started that caused it.
        assert row["reaction_ms"] >= 0
        assert row["reaction_frames"] == pytest.approx(row["reaction_ms"] / 20, abs=0.1)
        assert row["truncated"] and row["cancel_sent"]
        # Cut off by the clip: after it came in, before the answer's end.
        assert row["onset_ms"] - 40 <= row["heard_ms"] < row["answer_ms"]
        assert row["paused_at_ms"] == pytest.approx(row["heard_ms"], abs=1)
        assert not row["resumed"] and row["model_answered"]  # today's mode answers it

    assert noise["lost"] and noise["heard_share"] < LOST_BELOW
    assert not noise["item_deleted"]
    assert not real["lost"]  # an interruption is never a lost answer
    # The truncate is within one delta of what the caller had heard when the clear came.
    assert abs(real["truncate_error_ms"]) <= DELTA_MS
    assert real["truncate_end_ms"] <= real["answer_ms"]
    assert real["answer_after_speech_end_ms"] is not None

    summary = result["summary"]
    assert summary["noise_events"] == 1 and summary["interruptions"] == 1
    assert summary["lost_per_100"] == 100.0 and summary["noise_answered"] == 1
    assert summary["interruptions_truncated"] == 1 and summary["interruptions_answered"] == 1
    rendered = table([result])
    assert rendered.count("\n") == 2 and "| cancel | 100 (1/1) |" in rendered


def test_alignment_counts_each_heard_byte_of_the_answer_once() -> None:
    """A resume that re-sends a stretch already heard (rewound to a pause) counts it once;
    audio of another answer in between counts for nothing."""
    corpus = build()
    answer, other = corpus.answer, corpus.reply
    first, rewind_to = 16_000, 13_600  # heard 2 s, cleared, resumed from 1.7 s
    heard = answer[:first] + other[:4_000] + answer[rewind_to:]
    breaks = [first, first + 4_000]
    segments = align(heard, answer, breaks)
    assert covered(segments) == len(answer)
    assert [(s.heard, s.answer) for s in segments][-1] == (first + 4_000, rewind_to)
    skipped = answer[:first] + answer[first + 800 :]  # 100 ms never heard
    assert covered(align(skipped, answer, [first])) == len(answer) - 800
