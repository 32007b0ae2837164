"""Web service and slice viewer around a packaged model (``ctagrg serve``). Research software, not for diagnostic use.

- ``app``: the HTTP server (standard library ``http.server``), its routes and the in-memory scan store.
- ``slices``: a preprocessed volume back to HU, windowed, oriented for display and encoded as PNG.
- ``page.html``: the viewer (plain HTML, CSS and JavaScript; loads nothing from outside the server).
"""

from __future__ import annotations

from ctagrg.serve.app import ReportServer, ReportService, ServeConfig, make_server

__all__ = ["ReportServer", "ReportService", "ServeConfig", "make_server"]
