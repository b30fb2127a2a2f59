"""The call viewer: server-rendered pages of the call store's records, under `/ui/`.

What an operator without `curl` needs: the list of finished calls (filtered by number,
outcome and time, paged), and a call's page with its summary, its transcript split into
what the caller heard and what a barge-in cut off, and, when the call was recorded under
RECORD_DIR, its timeline (`app.viewer`), its audio and its fixture to download.

Mounted by `app.main.create_app` only when OPERATOR_API_KEY is set, behind that key:
app.py (routes, security headers), session.py (the login cookie, CSRF, `next`),
recordings.py (finding and rendering a recording safely), views.py (what the templates
show). No front-end build: Jinja2 templates, one stylesheet, no script.
"""

from app.ui.app import CallViewer, mount_ui

__all__ = ["CallViewer", "mount_ui"]
