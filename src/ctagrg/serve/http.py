"""The HTTP side of ``ctagrg serve`` (standard library ``http.server``): routes, request checks, upload deadlines.

Research software, not for diagnostic use. There is no authentication: bind to localhost (the default) and put a
reverse proxy with authentication in front before exposing it. See docs/serve.md for the endpoints and limits.

>>> server = make_server(Reporter.from_pretrained("model/"), host="127.0.0.1", port=8000)   # doctest: +SKIP
>>> server.serve_forever()                                                                   # doctest: +SKIP

Routes (JSON unless noted; every error, including a malformed request, is ``{"error": "..."}`` with a 4xx/5xx
status):

- ``GET /``: the viewer page (HTML).
- ``POST /api/report?filename=NAME``: body = the raw bytes of one scan file → the report and a scan id.
- ``GET /api/scans/<id>``: what ``POST /api/report`` returned for that scan.
- ``GET /api/scans/<id>/slice/<plane>/<index>.png?window=lung|mediastinum|bone`` (or ``?wl=L&ww=W``): PNG.
- ``GET /api/scans/<id>/saliency/<label>/<plane>/<index>.png``: RGBA heat map of one abnormality's saliency.
- ``GET /api/scans/<id>/voxel/<d>/<h>/<w>``: the HU value of one voxel.
- ``GET /api/health``, ``GET /api/model``.

``HEAD`` answers every ``GET`` route with its status and headers, without the body.

Every request must name this server in its ``Host`` header (once), and an upload must be sent as
``Content-Type: application/octet-stream``: together they keep other web sites, open in a browser on this machine,
from using the service (DNS rebinding, cross-site form posts).
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from ctagrg.serve.app import MIB, ApiError, ReportService, ServeConfig, upload_name
from ctagrg.serve.hosts import host_allowed, host_names

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ctagrg.generation.reporter import Reporter

# A rejected body up to this size is read and discarded before answering: closing a socket with unread data makes
# the kernel send a reset, and the client would then see "connection reset" instead of our JSON error.
DRAIN_LIMIT = 64 * MIB
_SLICE = re.compile(r"^/api/scans/(?P<id>[^/]+)/slice/(?P<plane>[^/]+)/(?P<index>[^/]+)\.png$")
_SCAN = re.compile(r"^/api/scans/(?P<id>[^/]+)$")
_SALIENCY = re.compile(r"^/api/scans/(?P<id>[^/]+)/saliency/(?P<label>[^/]+)/(?P<plane>[^/]+)/(?P<index>[^/]+)\.png$")
_VOXEL = re.compile(r"^/api/scans/(?P<id>[^/]+)/voxel/(?P<d>[^/]+)/(?P<h>[^/]+)/(?P<w>[^/]+)$")
# The first bytes of a request: a method (letters), then a space or a line end, or the part that has arrived; or an
# empty line, which the base class answers by closing.
_REQUEST_START = re.compile(rb"[A-Za-z]{1,20}(?:[ \r\n]|$)|\r?\n|\r?$")
# Headers that must come at most once: a second Host or Content-Length is how requests are smuggled past proxies
# that read the other one.
_SINGLE_HEADERS = ("Host", "Content-Length", "Content-Type", "Transfer-Encoding")
# Everything the page loads comes from this server: a browser refuses any outside script, font or image.
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")
# The only upload type a browser page may send cross-site without a CORS preflight is a "simple" one (form or
# text types); this one needs a preflight, which the server never grants.
UPLOAD_CONTENT_TYPE = "application/octet-stream"


class PacedBody:
    """An upload's request body, read under the silence timeout and the minimum rate (:class:`ServeConfig`).

    After the first ``timeout_s`` seconds the bytes received must average ``min_rate`` a second or more, so all
    ``length`` bytes arrive within ``timeout_s + length / min_rate`` seconds; a pause of ``timeout_s`` seconds
    ends the upload too. Either raises a 408 :class:`ApiError` naming the upload.

    Args:
        rfile: the connection's buffered reader.
        sock: its socket; its timeout is set before each read and restored to ``timeout_s`` after.
        name: the upload's file name, for messages.
        length: the declared body length, bytes.
        timeout_s: the longest silence, seconds.
        min_rate: the slowest average rate kept, bytes a second.
    """

    def __init__(self, rfile: io.BufferedReader, sock: socket.socket, *, name: str, length: int, timeout_s: float,
                 min_rate: float) -> None:
        self.rfile, self.sock, self.name, self.length = rfile, sock, name, length
        self.timeout_s, self.min_rate = timeout_s, min_rate
        self.start: float | None = None  # the first read: the pace is counted from there
        self.received = 0

    def read1(self, size: int, /) -> bytes:
        """1 to ``size`` bytes that have arrived (b"" when the client closed); ApiError 408 when too slow."""
        now = time.monotonic()
        self.start = now if self.start is None else self.start
        # on pace while received >= (elapsed - timeout_s) x min_rate
        # (elapsed first: start + timeout - now would round, and a silent first read report "too slow", not stalled)
        pace_left = self.timeout_s + self.received / self.min_rate - (now - self.start)
        if pace_left <= 0:
            raise self._too_slow()
        self.sock.settimeout(min(self.timeout_s, pace_left))
        try:
            chunk = self.rfile.read1(size)
        except TimeoutError:
            raise (ApiError(408, f"{self.name}: upload stalled after {self.received} of {self.length} bytes: no "
                                 f"data for {self.timeout_s:g} s (ctagrg serve --timeout)")
                   if self.timeout_s <= pace_left else self._too_slow()) from None
        finally:
            self.sock.settimeout(self.timeout_s)
        self.received += len(chunk)
        return chunk

    def _too_slow(self) -> ApiError:
        elapsed = time.monotonic() - (self.start or 0.0)
        return ApiError(408, f"{self.name}: upload too slow: {self.received} of {self.length} bytes in "
                             f"{elapsed:.1f} s, under the minimum of {self.min_rate / 1024:g} KiB/s after the first "
                             f"{self.timeout_s:g} s (ctagrg serve --min-upload-rate)")


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's :class:`ReportService`; every error is a JSON ``{"error": ...}``."""

    server: ReportServer
    server_version = "ctagrg-serve"

    def setup(self) -> None:
        # read by StreamRequestHandler.setup as the socket timeout: a silent client cannot hold a thread (and an
        # upload slot) for ever
        self.timeout = self.server.service.config.timeout_s
        super().setup()

    # -- request line and headers ---------------------------------------------------------------------------------
    def handle_one_request(self) -> None:
        """Refuse at once what cannot be HTTP (a TLS handshake, binary bytes): the base class would wait for a
        line end, up to the timeout."""
        try:
            start = self.rfile.peek(1)[:21]  # what has arrived, at least one byte
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        if start and not _REQUEST_START.match(start):
            self.command, self.request_version, self.requestline = None, "", repr(start)
            self.send_error(400, "not an HTTP request (this server speaks plain HTTP/1.x, not HTTPS)")
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The base class's parsing, but HTTP/0.9 and repeated single headers refused (400, JSON)."""
        words = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n").split()
        if len(words) == 2:  # "GET /": the base class would then wait for headers an HTTP/0.9 client never sends
            self.command, self.request_version, self.requestline = None, "", " ".join(words)
            self.send_error(400, f"HTTP/0.9 request {self.requestline[:100]!r}: send HTTP/1.0 or HTTP/1.1")
            return False
        if not super().parse_request():
            return False
        for name in _SINGLE_HEADERS:
            if len(self.headers.get_all(name, [])) > 1:
                self.send_error(400, f"{name} header given {len(self.headers.get_all(name))} times: send it once")
                return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer ``code`` as JSON ``{"error": ...}`` and close: also the errors the base class finds itself (a
        malformed request line 400, 414, 431, 501, 505), which it would answer in HTML."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = ""  # not HTTP/0.9: write a status line and headers
        self._send_json(code, {"error": self._error_text(code, message)}, {"Connection": "close"})

    def _error_text(self, code: int, message: str | None) -> str:
        """Our wording for the base class's errors (its own changes between Python versions)."""
        line = (getattr(self, "requestline", "") or "")[:100]
        words = line.split()
        if code == 400 and message and message.startswith(("Bad request", "Bad HTTP/0.9")):
            return f"malformed request line {line!r}: expected METHOD /path HTTP/1.1"
        texts = {
            414: "request line over 65536 bytes (the URL is too long)",
            431: "request headers too large: a line over 65536 bytes or over 100 header lines",
            501: f"unsupported method {self.command!r}: this server answers GET, HEAD and POST",
            505: f"unsupported HTTP version {words[-1] if words else ''!r}: send HTTP/1.0 or HTTP/1.1",
        }
        return texts.get(code) or message or self.responses.get(code, ("error",))[0]

    # -- routes ----------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)  # _send writes the status and headers of the GET, not its body

    def do_POST(self) -> None:
        self._handle(self._post)

    def _handle(self, route: Callable[[SplitResult], None]) -> None:
        try:
            self._answer(route)
        except (ConnectionError, TimeoutError) as exc:
            # The client left (or stopped reading) while we answered: nobody is there to read an error either.
            self.close_connection = True
            if self.server.service.config.log_requests:
                self.log_message("%s %s: connection lost (%s)", self.command, self.path, type(exc).__name__)

    def _answer(self, route: Callable[[SplitResult], None]) -> None:
        try:
            route(urlsplit(self.path))
        except ApiError as exc:
            self._send_json(exc.status, {"error": exc.message})
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - one failed request must not take the service down
            logger.exception("%s %s: internal error", self.command, self.path)
            self._send_json(500, {"error": f"internal error ({type(exc).__name__}: {exc})"})

    def _get(self, url: SplitResult) -> None:
        self._check_host()
        service = self.server.service
        query = parse_qs(url.query)
        if url.path == "/":
            self._send(200, "text/html; charset=utf-8", service.page, {"Content-Security-Policy": _CSP})
        elif url.path == "/api/health":
            self._send_json(200, {"status": "ok"})
        elif url.path == "/api/model":
            self._send_json(200, service.model_info())
        elif m := _SCAN.match(url.path):
            self._send_json(200, service.scan_info(m["id"]))
        elif m := _SLICE.match(url.path):
            png = service.slice_png(m["id"], m["plane"], m["index"], query)
            # a scan id's slices never change; the browser may reuse them while the viewer scrolls back and forth
            self._send(200, "image/png", png, {"Cache-Control": "private, max-age=3600"})
        elif m := _SALIENCY.match(url.path):
            png = service.saliency_png(m["id"], unquote(m["label"]), m["plane"], m["index"])
            self._send(200, "image/png", png, {"Cache-Control": "private, max-age=3600"})
        elif m := _VOXEL.match(url.path):
            self._send_json(200, service.voxel_hu(m["id"], m["d"], m["h"], m["w"]))
        else:
            raise ApiError(404, f"no such page: GET {url.path}")

    def _post(self, url: SplitResult) -> None:
        service = self.server.service
        try:
            name, length = self._check_upload(url)
            service.reserve_upload(name)
        except ApiError:
            self._discard_body()
            raise
        try:
            result = service.report_upload(name, self._body(name, length), length)
        except BaseException:
            self.close_connection = True  # the body may be partly read: this connection cannot carry another request
            raise
        finally:
            service.release_upload()
        self._send_json(200, result)

    def _body(self, name: str, length: int) -> PacedBody:
        config = self.server.service.config
        return PacedBody(self.rfile, self.connection, name=name, length=length, timeout_s=config.timeout_s,
                         min_rate=config.min_upload_rate)

    def _check_upload(self, url: SplitResult) -> tuple[str, int]:
        """(file name, body length) of an acceptable upload request; ApiError otherwise (nothing read yet)."""
        self._check_host()
        if url.path != "/api/report":
            raise ApiError(404, f"no such endpoint: POST {url.path} (uploads go to /api/report?filename=NAME)")
        name = upload_name(parse_qs(url.query).get("filename", [None])[0])
        if self.headers.get_content_type() != UPLOAD_CONTENT_TYPE:
            raise ApiError(415, f"{name}: expected Content-Type: {UPLOAD_CONTENT_TYPE} (the raw file bytes), got "
                                f"{self.headers.get('Content-Type', 'none')!r}")
        length = self._content_length()
        if length == 0:
            raise ApiError(400, f"{name}: empty upload (no file bytes in the request body)")
        config = self.server.service.config
        if length > config.max_upload_bytes:
            raise ApiError(413, f"{name}: {length / MIB:.1f} MiB is over the upload limit of "
                                f"{config.max_upload_mb:g} MiB (ctagrg serve --max-upload-mb)")
        return name, length

    def _check_host(self) -> None:
        if not self.server.accepts_host(self.headers.get("Host")):
            raise ApiError(403, f"Host {self.headers.get('Host')!r} does not name this server: open "
                                f"{self.server.url} (a guard against DNS rebinding; ctagrg serve --allow-host NAME "
                                f"adds a name)")

    def _content_length(self) -> int:
        if "Transfer-Encoding" in self.headers:  # chunked, or a coding whose length we could not check
            self.close_connection = True
            raise ApiError(411, f"Transfer-Encoding {self.headers['Transfer-Encoding']!r} is not supported: send "
                                f"the file as is, with a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0  # HTTP: no Content-Length and no Transfer-Encoding means no body
        if not _is_decimal(raw):
            self.close_connection = True
            raise ApiError(400, f"invalid Content-Length {raw!r}")
        return int(raw)

    def _discard_body(self) -> None:
        """Read and drop a rejected body (up to DRAIN_LIMIT, at the upload pace) so the client gets our answer,
        not a reset."""
        raw = self.headers.get("Content-Length", "")
        left = int(raw) if _is_decimal(raw) and "Transfer-Encoding" not in self.headers else 0
        if left > DRAIN_LIMIT:
            self.close_connection = True
            return
        body = self._body("the request body", left)
        try:
            while left > 0 and (chunk := body.read1(min(left, MIB))):
                left -= len(chunk)
        except ApiError:  # too slow: answer anyway, and close
            self.close_connection = True

    # -- answers ---------------------------------------------------------------------------------------------------
    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, "application/json", json.dumps(obj).encode("utf-8"), headers)

    def _send(self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":  # HEAD: the GET's status and headers (its Content-Length too), no body
            self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        quiet = ("/slice/", "/saliency/", "/voxel/")  # the viewer asks for these at every slider move or mouse move
        if self.server.service.config.log_requests and not (code == 200 and any(q in self.path for q in quiet)):
            super().log_request(code, size)


def _is_decimal(text: str) -> bool:
    """Whether ``text`` (spaces around allowed) is ASCII digits: ``str.isdigit`` is also true for "²", which
    ``int`` refuses."""
    text = text.strip()
    return text.isascii() and text.isdigit()


class ReportServer(ThreadingHTTPServer):
    """A threading HTTP server owning a :class:`ReportService`; ``server_close`` removes its temporary folder."""

    daemon_threads = True  # Ctrl-C must not wait for a browser's idle connection
    # the listen backlog: the standard library's 5 resets connections that arrive together (a viewer loading
    # slices, a batch of uploads) before the accept loop takes them
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: ReportService) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # read by TCPServer.__init__ when it creates the socket
        self.service = service
        super().__init__(address, Handler)
        self._host_names = host_names(address[0], str(self.server_address[0]), service.config.allowed_hosts)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in str(host) else f"http://{host}:{port}/"

    def accepts_host(self, header: str | None) -> bool:
        """Whether a request's ``Host`` header names this server (see :func:`host_allowed`)."""
        return host_allowed(header, self._host_names, self.server_address[1], self.service.config.allowed_hosts)

    def server_close(self) -> None:
        super().server_close()
        self.service.close()


def make_server(reporter: Reporter, *, host: str = "127.0.0.1", port: int = 8000,
                config: ServeConfig | None = None) -> ReportServer:
    """A bound (not yet serving) server for ``reporter``; port 0 picks a free port (see ``server.url``)."""
    service = ReportService(reporter, config)
    try:
        return ReportServer((host, port), service)
    except BaseException:
        service.close()
        raise
