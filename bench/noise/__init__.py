"""The noise benchmark (`make bench-noise`): how the turn-taking modes cope with a noisy line.

`corpus` makes the caller clips (espeak-ng and sox), `run` plays each over the bot's answer
on a real call through the app and measures, from the wire, what the caller got to hear.
"""
