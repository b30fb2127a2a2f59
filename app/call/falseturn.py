"""Resume mode: was the caller's speech over the bot a turn, or a cough? Sans-I/O.

Under `INTERRUPT_MODE=resume` (the default) speech that starts while the caller hears the
bot, or while an answer is being generated, stops the bot at once (Twilio `clear`) but only
*pauses* the answer: its unheard audio stays with the bridge. This module judges the speech
(a `Suspect`) from what can be known, and the session then either interrupts for real
(cancel, truncate at what was heard, answer the caller) or resumes the answer and deletes
the noise's input item, so that the model never answers it.

The rule, first match wins (each piece of evidence is judged as it arrives):

1. **Words.** The utterance's transcript: any word that is not a backchannel
   (`app.call.backchannel`) is a turn (`words`); an empty transcript, or one of
   backchannels only ("mm-hmm", "okay"), is not (`no_words`, `backchannel`).
2. **Voice** (with `LOCAL_VAD`, the driver's webrtcvad over the last 1.5 s of caller
   audio, asked at `speech_stopped` and at the decision point): less than
   `VOICE_MIN_MS` of voiced audio, or no run of `VOICE_RUN_MIN_MS`, is not a voice at
   all, whatever the service's VAD heard (`no_voice`: a fan, a door, clicks).
3. **Speech that goes on** (`INTERRUPT_DECIDE_MS` after `speech_started`, default 1 s,
   without `speech_stopped`): a turn (`long_speech`). With the detector on, only when it
   hears at least `TAIL_VOICED_MS` of voice in the window's last 300 ms and a level that
   moves like one talker's (`SPREAD_MIN_DB`); otherwise (the voice has ended and the
   service's silence window runs, or the sound is steady: a fan, a television) the words
   decide, and the detector is asked again every `INTERRUPT_DECIDE_MS`.
4. **No words to wait for** (no transcription, a failed one, or none
   `TRANSCRIPT_WAIT_MS` after the commit): speech of at least `SHORT_SPEECH_MS` is a
   turn (`duration`), shorter is not (`short`).

5. **The limit** (`JUDGE_LIMIT_MS` after `speech_started`, 4 s, for a paused answer): a
   sound the service still calls speech that the detector never heard as one talker going
   on is not a turn (`steady`); one it did hear is (`long_speech`); speech that has ended
   is judged by rule 4.

Rule 2 holds only until the detector has once heard a voice in the suspect's speech (a
later window may hold nothing but the silence after it); a report made mostly of frames
the detector could not read counts as no report.

A key press while a suspect is pending is a turn (`key`), and so is the service
cancelling the paused answer by itself for a turn it detected (`service`: it was told not
to, `interrupt_response: false`, but a proxy or an older service may not listen). Later
evidence never reverses a verdict. What each verdict does is the session's.

**Echo guard** (`ECHO_GUARD_MS`): speech that starts that soon after the bot's audio
started playing may be the bot's own voice coming back (a speakerphone). The bot talks on
(no pause), rule 3 does not apply, and words that are mostly (`ECHO_SHARE`) the bot's own
words are its echo (`echo`), not a turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from app.call.backchannel import is_backchannel, words

#: Rule 2: a voice has at least this much voiced audio in the detector's window...
VOICE_MIN_MS: Final = 240
#: ...in a run of at least this long (clicks earn voiced frames, in short runs only).
VOICE_RUN_MIN_MS: Final = 160
#: Rule 3: at least this much voiced audio in the window's last 300 ms: the voice goes on...
TAIL_VOICED_MS: Final = 60
#: ...and its level moves like one talker's syllables (`app.voice.VoiceReport`): measured
#: 7-11 dB on speech, 2-5 dB on a fan, hiss or a babble of several voices.
SPREAD_MIN_DB: Final = 6.0
#: Echo guard: this share of a guarded transcript's words in the bot's own: its echo.
ECHO_SHARE: Final = 0.8
#: Rule 5: the longest an answer stays paused while its verdict waits.
JUDGE_LIMIT_MS: Final = 4000
#: Rule 3's window: the caller audio the detector looks at.
VOICE_WINDOW_MS: Final = 1500
#: Rule 4: how long after the commit the words may take.
TRANSCRIPT_WAIT_MS: Final = 1500
#: Rule 4: speech at least this long, with no words known, is a turn.
SHORT_SPEECH_MS: Final = 400


class Verdict(Enum):
    PENDING = "pending"
    REAL = "real"
    FALSE = "false"


@dataclass(slots=True)
class Suspect:
    """Speech over the bot, not judged yet."""

    started_at: float  # call ms of the first `speech_started`
    item_ids: list[str] = field(default_factory=list)
    audio_start_ms: int = 0
    paused: bool = True  # False: the echo guard let the bot talk on meanwhile
    stopped_at: float | None = None  # call ms of `speech_stopped`
    spoken_ms: int | None = None
    committed: set[str] = field(default_factory=set)
    verdict: Verdict = Verdict.PENDING
    reason: str = ""
    #: Echo guard: the bot's item the caller heard as it began (its echo would say its
    #: words).
    echo_item: str | None = None
    #: The detector heard a voice (rule 2 can no longer call it none: a later window may
    #: hold only the silence after it), and one talker going on (rule 5).
    heard_voice: bool = False
    heard_talker: bool = False

    @property
    def item_id(self) -> str | None:
        return self.item_ids[-1] if self.item_ids else None


class FalseTurns:
    """The judge of one call's suspects (one at a time)."""

    def __init__(
        self,
        *,
        decide_ms: int,
        prefix_padding_ms: int,
        silence_ms: int,
        backchannels: tuple[str, ...],
        transcribing: bool,
        local_vad: bool,
    ) -> None:
        self.decide_ms = decide_ms
        self._prefix_ms = prefix_padding_ms
        self._silence_ms = silence_ms
        self.backchannels = backchannels
        self.transcribing = transcribing
        self.local_vad = local_vad
        self.suspect: Suspect | None = None

    @property
    def pending(self) -> bool:
        return self.suspect is not None and self.suspect.verdict is Verdict.PENDING

    def started(
        self,
        now: float,
        item_id: str | None,
        audio_start_ms: int,
        paused: bool,
        echo_item: str | None = None,
    ) -> None:
        """Speech over the bot began; another one while a suspect is pending joins it (a
        cough in two bursts is one suspect; its verdict covers both items). `paused`
        False: the echo guard let the bot talk on, saying item `echo_item`."""
        s = self.suspect
        if s is None or s.verdict is not Verdict.PENDING:
            s = self.suspect = Suspect(now, audio_start_ms=audio_start_ms, paused=paused)
            s.echo_item = None if paused else echo_item
        else:
            s.stopped_at = s.spoken_ms = None
            s.audio_start_ms = audio_start_ms
        if item_id is not None:
            s.item_ids.append(item_id)

    def owns(self, item_id: str | None) -> bool:
        """Whether input item `item_id` belongs to the suspect being judged."""
        s = self.suspect
        return s is not None and s.verdict is Verdict.PENDING and item_id in s.item_ids

    def stopped(self, now: float, audio_end_ms: int) -> None:
        s = self.suspect
        if s is None or s.verdict is not Verdict.PENDING:
            return
        s.stopped_at = now
        # The service's audio_start_ms is the speech start minus its prefix padding, and
        # its audio_end_ms is the speech end plus its silence window (both documented).
        s.spoken_ms = max(
            0, (audio_end_ms - self._silence_ms) - (s.audio_start_ms + self._prefix_ms)
        )

    # -- evidence -------------------------------------------------------------------------

    def transcript(self, item_id: str, text: str, bot_text: str = "") -> Verdict:
        """Rule 1, for the suspect's own items (`bot_text`: what the bot said in the item
        of `Suspect.echo_item`, for the echo guard). Words in any of its items make it a
        turn; only its latest item's can make it none (a cough, then real words: the
        cough's empty transcript says nothing about the words)."""
        if not self.owns(item_id):
            return Verdict.PENDING
        s = self.suspect
        assert s is not None
        latest = item_id == s.item_id
        if not words(text):
            return self._judge(Verdict.FALSE, "no_words") if latest else Verdict.PENDING
        if is_backchannel(text, self.backchannels):
            return self._judge(Verdict.FALSE, "backchannel") if latest else Verdict.PENDING
        said = words(text)
        bot_words = set(words(bot_text)) if not s.paused else set()
        if bot_words and sum(w in bot_words for w in said) >= ECHO_SHARE * len(said):
            return self._judge(Verdict.FALSE, "echo")
        return self._judge(Verdict.REAL, "words")

    def voice(self, report: dict[str, Any], at_decision: bool) -> Verdict:
        """Rules 2 and 3 with the detector's report (`app.voice.VoiceReport.to_dict`)."""
        if not self.pending:
            return Verdict.PENDING
        voiced = report.get("voiced_ms")
        run = report.get("longest_voiced_ms")
        tail = report.get("tail_voiced_ms")
        spread = report.get("level_spread_db")
        if type(voiced) is not int or type(tail) is not int or type(run) is not int:
            return self._no_voice_report(at_decision)
        if type(spread) not in (int, float):
            spread = 0.0
        skipped, window = report.get("skipped", 0), report.get("window_ms", 0)
        if type(skipped) is int and type(window) is int and skipped * 20 * 2 > window:
            return self._no_voice_report(at_decision)  # mostly frames it couldn't read
        s = self.suspect
        assert s is not None
        if voiced >= VOICE_MIN_MS and run >= VOICE_RUN_MIN_MS:
            s.heard_voice = True
        elif not s.heard_voice:
            return self._judge(Verdict.FALSE, "no_voice")
        talker = tail >= TAIL_VOICED_MS and spread >= SPREAD_MIN_DB  # type: ignore[operator]
        if talker and at_decision:
            s.heard_talker = True
        if talker and at_decision and self._still_speaking() and self._may_go_on():
            return self._judge(Verdict.REAL, "long_speech")
        return Verdict.PENDING

    def decision_due(self) -> Verdict:
        """Rule 3 without a detector (with one, the session asks it first)."""
        if not self.pending or not self._still_speaking() or not self._may_go_on():
            return Verdict.PENDING
        return self._judge(Verdict.REAL, "long_speech")

    def _no_voice_report(self, at_decision: bool) -> Verdict:
        return self.decision_due() if at_decision else Verdict.PENDING

    def no_words(self) -> Verdict:
        """Rule 4: no transcript is coming (or not in time)."""
        s = self.suspect
        if s is None or s.verdict is not Verdict.PENDING:
            return Verdict.PENDING
        if s.spoken_ms is None:
            return Verdict.PENDING  # still speaking: rule 3 decides
        if s.spoken_ms >= SHORT_SPEECH_MS:
            return self._judge(Verdict.REAL, "duration")
        return self._judge(Verdict.FALSE, "short")

    def limit(self) -> Verdict:
        """Rule 5: the pause has lasted `JUDGE_LIMIT_MS` (a suspect the echo guard let the
        bot talk over pauses nothing, and waits for its words)."""
        s = self.suspect
        if s is None or s.verdict is not Verdict.PENDING or not s.paused:
            return Verdict.PENDING
        if s.spoken_ms is not None:
            return self.no_words()  # it ended: rule 4
        if self.local_vad and not s.heard_talker:
            return self._judge(Verdict.FALSE, "steady")
        return self._judge(Verdict.REAL, "long_speech")

    def service_cancelled(self) -> Verdict:
        if not self.pending:
            return Verdict.PENDING
        return self._judge(Verdict.REAL, "service")

    def key_pressed(self) -> Verdict:
        if not self.pending:
            return Verdict.PENDING
        return self._judge(Verdict.REAL, "key")

    def _may_go_on(self) -> bool:
        """Rule 3 applies (not to an echo-guarded suspect: its echo goes on as long as the
        bot talks)."""
        return self.suspect is not None and self.suspect.paused

    def _still_speaking(self) -> bool:
        s = self.suspect
        return s is not None and s.stopped_at is None

    def _judge(self, verdict: Verdict, reason: str) -> Verdict:
        s = self.suspect
        assert s is not None
        s.verdict, s.reason = verdict, reason
        return verdict

    def settled(self) -> Suspect | None:
        """The suspect just judged, handed over (the judge is free for the next one)."""
        s, self.suspect = self.suspect, None
        return s
