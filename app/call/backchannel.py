"""Backchannels: the "mm-hmm", "yeah", "okay" a listener says without taking the turn.

Under `INTERRUPT_MODE=resume` a caller's speech over the bot whose transcript holds only
these words is not a turn: the bot goes on (`app.call.falseturn`). The lists are per
language (`TRANSCRIPTION_LANGUAGE`, ISO 639-1); without a language every list applies, and
`BACKCHANNEL_WORDS` (comma-separated) replaces them all.

Matching is on words, not characters: the transcript is lower-cased, everything that is not
a letter or an apostrophe separates words ("Mm-hmm." is `mm hmm`), and it is a backchannel
when its words are a sequence of listed phrases ("okay okay", "yeah, right"). A word made of
m's and h's only ("mmm", "hmm", "mhm") is a hum in any language.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

#: Per language; the phrases are matched as word sequences (see the module doc).
#: Only listening noises and acknowledgements: words that answer a question ("yes", "sure",
#: "sí", "oui", "ja") are a turn, since the caller may be answering the bot.
BACKCHANNELS: Final[dict[str, tuple[str, ...]]] = {
    "en": (
        "mm hmm",
        "uh huh",
        "uh hum",
        "yeah",
        "ok",
        "okay",
        "right",
        "alright",
        "all right",
        "i see",
        "got it",
        "aha",
        "ah",
        "oh",
        "uh",
        "um",
    ),
    "es": ("vale", "ajá", "aja", "ya", "vale vale", "ok", "eh"),
    "fr": ("ouais", "d'accord", "ok", "ah", "euh", "bon", "ben", "ah bon"),
    "de": ("genau", "okay", "ok", "aha", "na ja", "ach so", "äh"),
    "pt": ("tá", "ta", "certo", "ok", "ahã", "aham", "beleza"),
    "it": ("certo", "ok", "va bene", "ah", "esatto", "ecco"),
}

_SEPARATORS = re.compile(r"[^\w']+|_+")  # digits are words: "4567" is an answer
_HUM = re.compile(r"^[mh]+$")


def words(text: str) -> list[str]:
    """`text` as lower-case words (see the module doc)."""
    text = text.lower().replace("\u2019", "'")  # a typographic apostrophe is one
    return [w.strip("'") for w in _SEPARATORS.split(text) if w.strip("'")]


def phrases_for(language: str | None, configured: str | None) -> tuple[str, ...]:
    """The backchannel phrases of a call: `configured` (comma-separated) when set, else
    the list of `language` (its primary subtag), else every list."""
    if configured is not None and configured.strip():
        return _normalised(configured.split(","))
    if language:
        own = BACKCHANNELS.get(language.split("-")[0].lower())
        if own is not None:
            return _normalised(own)
    return _normalised(p for phrases in BACKCHANNELS.values() for p in phrases)


def _normalised(phrases: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for phrase in phrases:
        key = " ".join(words(phrase))
        if key:
            seen[key] = None
    return tuple(seen)


def is_backchannel(transcript: str, phrases: tuple[str, ...]) -> bool:
    """True when `transcript` has words and every one belongs to a listed phrase (or is a
    hum). Empty text is not a backchannel: it is no words at all (the caller's call)."""
    tokens = words(transcript)
    if not tokens:
        return False
    table = [p.split() for p in phrases]
    # Cover the words left to right with phrases (longest first): a tiny dynamic program.
    reachable = [False] * (len(tokens) + 1)
    reachable[0] = True
    for i in range(len(tokens)):
        if not reachable[i]:
            continue
        if _HUM.match(tokens[i]):
            reachable[i + 1] = True
        for phrase in table:
            n = len(phrase)
            if tokens[i : i + n] == phrase:
                reachable[i + n] = True
    return reachable[-1]
