"""Outbound calls: `POST /calls` places them, `/call-status` follows them.

README "Outbound calls" is the operator's view; `calls.py` says why it looks like this.
"""
