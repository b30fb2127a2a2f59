"""The noise benchmark's caller clips: real speech and synthetic noises, 8 kHz mu-law.

Every clip is made with espeak-ng and sox (the tools the tests' speech comes from,
`tests/fakes/audio.py`) and cached under `bench/.cache/noise/`, keyed by a hash of its
recipe, so the tools run once. Each clip carries its label: the `kind` of event it is
(`interruption`, `backchannel`, `noise`, `echo`) and the `transcript` the fake Realtime
service gives its input item ("" for a noise, the word for a backchannel, the sentence
for an interruption).

The fake Realtime service detects speech by energy (`tests.fakes.audio.is_speech`, frame
RMS above 250 in 20 ms frames): a clip that never crosses it would measure nothing, so
`build()` checks that every clip has at least one such frame and raises `CorpusError`
naming the ones that don't. `python -m bench.noise.corpus` prints the corpus.

The echo clips are different: a speakerphone's echo follows what the caller *hears*
(stop the bot and the echo stops; resume it and the echo comes back), so the harness
makes it live from the caller's playout (`EchoSpec`); `audio` here is the static version
(the whole answer, attenuated and delayed) the VAD check runs on.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.fakes.audio import (
    BYTES_PER_MS,
    FRAME_BYTES,
    SPEECH_RMS_THRESHOLD,
    ULAW_TO_LINEAR,
    linear_to_ulaw,
    rms,
    silence,
)

Kind = Literal["interruption", "backchannel", "noise", "echo"]
KINDS: tuple[Kind, ...] = ("interruption", "backchannel", "noise", "echo")

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "bench" / ".cache" / "noise"
_RECIPE_VERSION = "v1"  # bump to rebuild every cached clip

#: The bot's long answer, into which every clip is mixed (about 7 s of espeak speech).
ANSWER_TEXT = (
    "Our opening hours are nine to six on weekdays, and ten to four on Saturdays. "
    "On Sundays we are closed, but you can leave us a message."
)
ANSWER_VOICE = "en-us"
#: What the bot says when it answers the caller's turn (or, wrongly, the noise).
REPLY_TEXT = "Sure, go ahead."

INTERRUPTIONS = (
    "wait, stop",
    "no, I meant Tuesday",
    "sorry, can you repeat the last part",
    "hold on",
)
INTERRUPTION_VOICES = ("en-us", "en+f3")
#: Each backchannel in its own voice (the list cycles through these).
BACKCHANNELS = ("mm-hmm", "okay", "yeah", "uh-huh", "right")
BACKCHANNEL_VOICES = ("en-us", "en+f3", "en-gb")
#: Background television: a few voices at once, each quiet.
BABBLE = (
    ("en-us", "and in other news tonight the city council has approved the new budget"),
    ("en+f3", "the weather will stay dry with sunny spells across the south tomorrow"),
    ("en-gb", "and that is the end of the first half here at the stadium this evening"),
)


class CorpusError(RuntimeError):
    """A clip could not be made, or it would not trigger the fake's speech detector."""


@dataclass(frozen=True, slots=True)
class EchoSpec:
    """A live echo of what the caller hears: `gain_db` quieter, `delay_ms` later."""

    gain_db: float
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Clip:
    """One caller event: its audio (8 kHz mu-law), its label, and when it starts."""

    name: str
    kind: Kind
    transcript: str
    audio: bytes
    onset_ms: int
    """When the clip starts, in ms of the bot's answer the caller has heard."""
    echo: EchoSpec | None = None

    @property
    def noise_event(self) -> bool:
        """Not a turn: the bot should carry on (noise, backchannel, echo)."""
        return self.kind != "interruption"

    @property
    def duration_ms(self) -> int:
        return len(self.audio) // BYTES_PER_MS

    def speech_frames(self) -> int:
        """20 ms frames (aligned as the caller sends them) the fake's VAD calls speech."""
        return sum(rms(f) > SPEECH_RMS_THRESHOLD for f in frames(self.audio))

    def peak_rms(self) -> float:
        return max((rms(f) for f in frames(self.audio)), default=0.0)


@dataclass(frozen=True, slots=True)
class Corpus:
    answer: bytes
    reply: bytes
    clips: tuple[Clip, ...]

    def quick(self) -> Corpus:
        """One clip of each kind (the smoke run)."""
        firsts = [next(c for c in self.clips if c.kind == k) for k in KINDS]
        return Corpus(self.answer, self.reply, tuple(firsts))

    def select(self, names: Sequence[str]) -> Corpus:
        chosen = [c for c in self.clips if c.name in names]
        missing = set(names) - {c.name for c in chosen}
        if missing:
            raise CorpusError(f"no such clips: {sorted(missing)}")
        return Corpus(self.answer, self.reply, tuple(chosen))


# --- mu-law helpers --------------------------------------------------------------------


def frames(audio: bytes) -> list[bytes]:
    """Whole 20 ms frames of `audio`."""
    return [audio[i : i + FRAME_BYTES] for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)]


def gain_table(gain_db: float) -> bytes:
    """A 256-entry translation table: each mu-law code scaled by `gain_db`."""
    factor = 10 ** (gain_db / 20)
    return bytes(linear_to_ulaw(round(v * factor)) for v in ULAW_TO_LINEAR)


def attenuate(audio: bytes, gain_db: float) -> bytes:
    """`audio` made `gain_db` louder (negative: quieter)."""
    return audio.translate(gain_table(gain_db))


# --- synthesis -------------------------------------------------------------------------


def _tools() -> tuple[str, str]:
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        raise CorpusError(
            "the noise corpus needs espeak-ng and sox on PATH (`make tools` installs them)"
        )
    return espeak, sox


Step = tuple[str, ...]
"""One command of a recipe: ("espeak", voice, wpm, text, out.wav) or ("sox", *args)."""


def _render(recipe: Sequence[Step]) -> bytes:
    """Run `recipe` in a scratch directory (its last step writes `out.wav`), convert to
    8 kHz mu-law, cache it by the recipe's hash; return the bytes."""
    key = hashlib.sha256(repr((_RECIPE_VERSION, tuple(recipe))).encode()).hexdigest()[:32]
    path = CACHE_DIR / f"{key}.ulaw"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    espeak, sox = _tools()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="noise-") as tmp:
        for step in recipe:
            if step[0] == "espeak":
                _, voice, wpm, text, out = step
                cmd = [espeak, "-v", voice, "-s", wpm, "-w", out]
                stdin: bytes | None = text.encode()  # stdin: text starting with "-" is no option
            else:
                cmd, stdin = [sox, *step[1:]], None
            done = subprocess.run(cmd, cwd=tmp, input=stdin, capture_output=True, check=False)
            if done.returncode != 0:
                raise CorpusError(f"{cmd!r} failed: {done.stderr.decode(errors='replace')}")
        raw = Path(tmp) / "out.ulaw"
        convert = [sox, "out.wav", "-D", "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw"]
        done = subprocess.run([*convert, str(raw)], cwd=tmp, capture_output=True, check=False)
        if done.returncode != 0:
            raise CorpusError(f"converting failed: {done.stderr.decode(errors='replace')}")
        data = raw.read_bytes()
    if not data:
        raise CorpusError(f"recipe {recipe!r} made no audio")
    fd, tmp_name = tempfile.mkstemp(dir=CACHE_DIR, prefix=".tmp-", suffix=".ulaw")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)  # atomic: a concurrent builder never reads half a clip
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return data


_SYNTH = ("-n", "-r", "8000", "-c", "1", "-b", "16")  # a sox synth's input: 8 kHz, 16 bit


def spoken(text: str, voice: str, *, trim: bool = False, wpm: int = 175) -> bytes:
    """espeak-ng speech; `trim`: without leading and trailing silence."""
    recipe: list[Step] = [("espeak", voice, str(wpm), text, "say.wav")]
    if trim:
        quiet = ("silence", "1", "0.01", "0.5%")
        recipe.append(("sox", "say.wav", "out.wav", *quiet, "reverse", *quiet, "reverse"))
    else:
        recipe.append(("sox", "say.wav", "out.wav"))
    return _render(recipe)


def fan() -> bytes:
    """A fan or air conditioner: brown noise, 2 s, moderate, faded in and out."""
    return _render(
        [("sox", *_SYNTH, "out.wav", "synth", "2.0", "brownnoise", "vol", "0.08",
          "fade", "q", "0.25", "2.0", "0.3")]
    )  # fmt: skip


def pink() -> bytes:
    """Line hiss or rain: pink noise, 1 s."""
    return _render(
        [("sox", *_SYNTH, "out.wav", "synth", "1.0", "pinknoise", "vol", "0.12",
          "fade", "q", "0.05", "1.0", "0.1")]
    )  # fmt: skip


def clicks() -> bytes:
    """Four 5 ms clicks, 250 ms apart (a pen, a keyboard, a bad connector)."""
    return _render(
        [("sox", *_SYNTH, "out.wav", "synth", "0.005", "whitenoise", "vol", "0.7",
          "pad", "0", "0.245", "repeat", "3")]
    )  # fmt: skip


def door() -> bytes:
    """A door slam: a loud low burst, 150 ms, sharp attack and a logarithmic decay."""
    return _render(
        [("sox", *_SYNTH, "out.wav", "synth", "0.15", "brownnoise", "lowpass", "600",
          "vol", "2", "fade", "l", "0.003", "0.15", "0.14")]
    )  # fmt: skip


def cough() -> bytes:
    """A cough: two bursts of band-passed noise, 250 ms each, 150 ms apart."""
    return _render(
        [("sox", *_SYNTH, "out.wav", "synth", "0.25", "whitenoise", "bandpass", "900", "600",
          "vol", "0.6", "fade", "q", "0.02", "0.25", "0.18", "pad", "0", "0.15", "repeat", "1")]
    )  # fmt: skip


def babble(gain_db: float = -15.0) -> bytes:
    """A television in the room: three espeak voices at once, each `gain_db`, 2 s."""
    recipe: list[Step] = [
        ("espeak", voice, "175", text, f"v{i}.wav") for i, (voice, text) in enumerate(BABBLE)
    ]
    factor = f"{10 ** (gain_db / 20):.3f}"
    mix: list[str] = ["sox", "-m"]
    for i in range(len(BABBLE)):
        mix += ["-v", factor, f"v{i}.wav"]
    mix += ["out.wav", "trim", "0.3", "2.0", "fade", "q", "0.1", "2.0", "0.2"]
    recipe.append(tuple(mix))
    return _render(recipe)


# --- the corpus ------------------------------------------------------------------------


def _onset(i: int) -> int:
    """1.5 to 2 s into the answer, spread so the clips land on different words."""
    return 1500 + (i * 170) % 520


def build(*, check: bool = True) -> Corpus:
    """Make (or load) every clip; `check`: raise unless each one triggers the fake's VAD."""
    answer = spoken(ANSWER_TEXT, ANSWER_VOICE)
    reply = spoken(REPLY_TEXT, ANSWER_VOICE)
    clips: list[Clip] = []
    n = 0
    for voice in INTERRUPTION_VOICES:
        for text in INTERRUPTIONS:
            name = f"interruption:{text.split(',')[0].replace(' ', '_')}:{voice}"
            clips.append(Clip(name, "interruption", text, spoken(text, voice), _onset(n)))
            n += 1
    for i, word in enumerate(BACKCHANNELS):
        voice = BACKCHANNEL_VOICES[i % len(BACKCHANNEL_VOICES)]
        audio = spoken(word, voice, trim=True)
        clips.append(Clip(f"backchannel:{word}:{voice}", "backchannel", word, audio, _onset(n)))
        n += 1
    for name, audio in (
        ("fan", fan()),
        ("pink", pink()),
        ("clicks", clicks()),
        ("door", door()),
        ("cough", cough()),
        ("tv_babble", babble()),
    ):
        clips.append(Clip(f"noise:{name}", "noise", "", audio, _onset(n)))
        n += 1
    # A speakerphone: quiet and not transcribed; loud, and the service hears the bot's words.
    first_words = " ".join(ANSWER_TEXT.split()[:6])
    for gain_db, delay_ms, transcript in ((-20.0, 150, ""), (-14.0, 200, first_words)):
        spec = EchoSpec(gain_db, delay_ms)
        audio = silence(delay_ms) + attenuate(answer, gain_db)
        name = f"echo:{int(gain_db)}dB_{delay_ms}ms"
        clips.append(Clip(name, "echo", transcript, audio, 0, echo=spec))
    corpus = Corpus(answer, reply, tuple(clips))
    if check:
        silent = [c.name for c in corpus.clips if c.speech_frames() == 0]
        if silent:
            raise CorpusError(
                f"these clips never cross the fake's speech threshold "
                f"(RMS {SPEECH_RMS_THRESHOLD:.0f}), so they would measure nothing: {silent}"
            )
    return corpus


def describe(corpus: Corpus) -> str:
    """The corpus as a Markdown table."""
    lines = [
        f"answer: {len(corpus.answer) // BYTES_PER_MS} ms ({ANSWER_VOICE}); "
        f"reply: {len(corpus.reply) // BYTES_PER_MS} ms",
        "",
        "| clip | kind | ms | onset ms | speech frames | peak RMS (dBFS) | transcript |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in corpus.clips:
        peak = c.peak_rms()
        dbfs = 20 * math.log10(peak / 32768) if peak > 0 else float("-inf")
        onset = f"echo +{c.echo.delay_ms}" if c.echo else str(c.onset_ms)
        lines.append(
            f"| {c.name} | {c.kind} | {c.duration_ms} | {onset} | {c.speech_frames()} | "
            f"{peak:.0f} ({dbfs:.0f}) | {c.transcript!r} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    print(describe(build()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
