"""Twilio Media Streams <-> OpenAI Realtime (GA) phone bridge."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twilio-realtime-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
