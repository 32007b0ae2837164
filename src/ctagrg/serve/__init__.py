"""Web service and slice viewer around a packaged model (``ctagrg serve``). Research software, not for diagnostic use.

- ``app``: what the service does without HTTP: its settings, uploads → reports, the in-memory scan store.
- ``http``: the HTTP server (standard library ``http.server``): routes, request checks, upload deadlines.
- ``hosts``: which ``Host`` headers name this server (the guard against DNS rebinding).
- ``limits``: an upload's headers checked before it is decoded (what it would cost, what it would read).
- ``slices``: a preprocessed volume back to HU, windowed, oriented for display and encoded as PNG.
- ``page.html``: the viewer (plain HTML, CSS and JavaScript; loads nothing from outside the server).
"""

from __future__ import annotations

from ctagrg.serve.app import ReportService, ServeConfig
from ctagrg.serve.http import ReportServer, make_server

__all__ = ["ReportServer", "ReportService", "ServeConfig", "make_server"]
