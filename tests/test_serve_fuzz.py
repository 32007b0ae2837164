"""A bounded fuzz of ``ctagrg serve`` over raw sockets on localhost: a table of bad requests with the answer each
must get, seeded mutations of good requests, and several clients at once. Every answer is JSON, none is a 500,
and nothing waits for a timeout (the server's is 30 s, a client gives up after 10 s)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_serve import marked_nifti, model_dir, serving  # noqa: F401 - model_dir: the tiny model fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIENT_TIMEOUT_S = 10.0  # far below the server's 30 s: an answer never comes from a timeout


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Any]:  # noqa: F811 - the fixture imported above
    with serving(model_dir, timeout_s=30.0) as srv:  # max_upload_mb 0.05 MiB = 52428 bytes
        yield srv


def exchange(server: Any, raw: bytes, *, end_input: bool = False) -> tuple[int | None, dict[str, str], bytes]:
    """Send ``raw`` (``{host}`` replaced by the server's host:port) and read until the server closes.

    Returns (status or None when it closed without a word, headers, body). ``end_input``: close our sending side
    after ``raw``, as a client whose body is cut short does.
    """
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(raw.replace(b"{host}", f"{host}:{port}".encode()))
        if end_input:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert status_line.startswith("HTTP/1.0 "), status_line
    assert int(headers["content-length"]) == len(body) or raw.startswith(b"HEAD")  # HEAD: the length, no body
    return int(status_line.split()[1]), headers, body


def json_error(headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert list(error) == ["error"]
    return error["error"]


HOST = b"Host: {host}\r\n"
GET = b"GET /api/health HTTP/1.1\r\n" + HOST
UPLOAD = b"POST /api/report?filename=scan.nii.gz HTTP/1.1\r\n" + HOST + b"Content-Type: application/octet-stream\r\n"
MHA_FILE = (b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
            b"ElementDataFile : /etc/passwd\n")


def post(filename: bytes, body: bytes = b"abc") -> bytes:
    """An upload of ``body`` as ``filename``."""
    return (b"POST /api/report?filename=" + filename + b" HTTP/1.1\r\n" + HOST
            + b"Content-Type: application/octet-stream\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            + body)


def bad(name: str, raw: bytes, status: int | None, error: str | None, end_input: bool = False) -> Any:
    return pytest.param(raw, status, error, end_input, id=name)


# (raw request, status, the start of the JSON error or a part after ": "); status None: closed without an answer
BAD_REQUESTS = [
    # request lines
    bad("http0.9", b"GET /\r\n", 400, "HTTP/0.9 request 'GET /': send HTTP/1.0 or HTTP/1.1"),
    bad("http0.9-headers", b"GET /api/health\r\n" + HOST + b"\r\n", 400, "HTTP/0.9 request 'GET /api/health'"),
    bad("tls-hello", bytes.fromhex("160301020001000200030378") + bytes(range(256)), 400, "not an HTTP request"),
    bad("binary", b"\x00\xff\xfe\x01 garbage without a line end", 400, "not an HTTP request"),
    bad("long-method", b"A" * 30 + b" / HTTP/1.1\r\n\r\n", 400, "not an HTTP request"),
    bad("one-word", b"hello\r\n\r\n", 400, "malformed request line 'hello': expected METHOD /path HTTP/1.1"),
    bad("four-words", b"GET / HTTP/1.1 x\r\n\r\n", 400, "malformed request line 'GET / HTTP/1.1 x'"),
    bad("bad-version", b"GET / HTTPS/1.1\r\n\r\n", 400, "malformed request line"),
    bad("http2", b"GET / HTTP/2.0\r\n\r\n", 505, "unsupported HTTP version 'HTTP/2.0'"),
    bad("empty-line", b"\r\n", None, None),
    bad("nothing", b"", None, None, end_input=True),
    bad("put", b"PUT / HTTP/1.1\r\n" + HOST + b"\r\n", 501, "unsupported method 'PUT': this server answers GET"),
    bad("lowercase-get", b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 501, "unsupported method 'get'"),
    bad("options", b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", 501, "unsupported method 'OPTIONS'"),
    bad("delete", b"DELETE / HTTP/1.1\r\n" + HOST + b"\r\n", 501,
        "unsupported method 'DELETE': this server answers GET, HEAD and POST"),
    bad("head-unknown-page", b"HEAD /nowhere HTTP/1.1\r\n" + HOST + b"\r\n", 404, None),  # no body for HEAD
    bad("long-url", b"GET /" + b"a" * 66_000 + b" HTTP/1.1\r\n\r\n", 414, "request line over 65536 bytes"),
    # headers
    bad("long-header", GET + b"X: " + b"a" * 66_000 + b"\r\n\r\n", 431, "request headers too large"),
    bad("many-headers", GET + b"X: 1\r\n" * 101 + b"\r\n", 431, "request headers too large"),
    bad("no-host", b"GET /api/health HTTP/1.1\r\n\r\n", 403, "Host None does not name this server"),
    bad("other-host", b"GET /api/health HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403, "does not name this server"),
    bad("two-hosts", GET + b"Host: evil.example\r\n\r\n", 400, "Host header given 2 times: send it once"),
    bad("same-host-twice", GET + HOST + b"\r\n", 400, "Host header given 2 times"),
    bad("two-lengths", UPLOAD + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabc", 400,
        "Content-Length header given 2 times: send it once"),
    bad("same-length-twice", UPLOAD + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400,
        "Content-Length header given 2 times"),
    bad("two-content-types", UPLOAD + b"Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc", 400,
        "Content-Type header given 2 times"),
    bad("negative-length", UPLOAD + b"Content-Length: -1\r\n\r\n", 400, "invalid Content-Length '-1'"),
    bad("float-length", UPLOAD + b"Content-Length: 1e3\r\n\r\n", 400, "invalid Content-Length '1e3'"),
    bad("length-list", UPLOAD + b"Content-Length: 3, 3\r\n\r\nabc", 400, "invalid Content-Length '3, 3'"),
    bad("huge-length", UPLOAD + b"Content-Length: 99999999999999999999\r\n\r\n", 413,
        "scan.nii.gz: 95367431640625.0 MiB is over the upload limit of 0.05 MiB"),
    bad("chunked", UPLOAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411,
        "Transfer-Encoding 'chunked' is not supported"),
    bad("chunked-and-length", UPLOAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 411,
        "Transfer-Encoding 'chunked' is not supported"),
    bad("gzip-coding", UPLOAD + b"Transfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", 411,
        "Transfer-Encoding 'gzip' is not supported"),
    # uploads
    bad("no-content-type", b"POST /api/report?filename=a.nii HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc",
        415, "a.nii: expected Content-Type: application/octet-stream"),
    bad("form-post", b"POST /api/report?filename=a.nii HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\nabc", 415,
        "a.nii: expected Content-Type: application/octet-stream (the raw file bytes), got "
        "'application/x-www-form-urlencoded'"),
    bad("no-length", UPLOAD + b"\r\n", 400, "scan.nii.gz: empty upload"),
    bad("zero-length", UPLOAD + b"Content-Length: 0\r\n\r\n", 400, "scan.nii.gz: empty upload"),
    bad("no-filename", b"POST /api/report HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc", 400,
        "missing file name"),
    bad("bare-nii-gz", post(b".nii.gz"), 400, "'.nii.gz': no file name before the extension .nii.gz: give the file "
                                              "a name, e.g. scan.nii.gz"),
    bad("dots-nii", post(b"...nii"), 400, "'...nii': no file name before the extension .nii"),
    bad("bare-zip", post(b"%20.ZIP"), 400, "'.ZIP': no file name before the extension .zip"),
    bad("path-name", post(b"../../etc/passwd"), 400, "passwd: unsupported file type"),
    bad("exe", post(b"x.exe"), 400, "x.exe: unsupported file type; expected one of .nii.gz, .nii"),
    bad("cut-body", UPLOAD + b"Content-Length: 100\r\n\r\nabc", 400, "scan.nii.gz: upload ended after 3 of 100 bytes",
        end_input=True),
    bad("not-gzip", post(b"scan.nii.gz", b"not a NIfTI file" * 4), 400, "scan.nii.gz: cannot decompress"),
    bad("mha-data-file", post(b"scan.mha", MHA_FILE), 400, "scan.mha: the header names a separate data file"),
    # routes
    bad("post-elsewhere", b"POST /api/other HTTP/1.1\r\n" + HOST + b"\r\n", 404, "no such endpoint: POST /api/other"),
    bad("unknown-page", b"GET /nowhere HTTP/1.1\r\n" + HOST + b"\r\n", 404, "no such page: GET /nowhere"),
    bad("nul-in-path", b"GET /api/he\x00alth HTTP/1.1\r\n" + HOST + b"\r\n", 404, "no such page"),
    bad("unknown-scan", b"GET /api/scans/abc HTTP/1.1\r\n" + HOST + b"\r\n", 404, "unknown scan id 'abc'"),
    bad("unknown-scan-slice", b"GET /api/scans/abc/slice/axial/0.png HTTP/1.1\r\n" + HOST + b"\r\n", 404,
        "unknown scan id 'abc'"),
    bad("unknown-scan-saliency", b"GET /api/scans/abc/saliency/Cardiomegaly/axial/0.png HTTP/1.1\r\n" + HOST
        + b"\r\n", 404, "unknown scan id 'abc'"),
    bad("unknown-scan-voxel", b"GET /api/scans/abc/voxel/0/0/0 HTTP/1.1\r\n" + HOST + b"\r\n", 404,
        "unknown scan id 'abc'"),
]


@pytest.mark.parametrize(("raw", "status", "error", "end_input"), BAD_REQUESTS)
def test_bad_request(server: Any, raw: bytes, status: int | None, error: str | None, end_input: bool) -> None:
    got, headers, body = exchange(server, raw, end_input=end_input)
    assert got == status, body
    if status is not None and error is None:
        assert body == b""
    elif error is not None:
        assert error in json_error(headers, body)


# every status a refused request may get; never 500 (a bug) or 408 (a wait)
ERROR_STATUSES = {400, 403, 404, 411, 413, 414, 415, 431, 501, 505}


def mutate(rng: random.Random, request: bytes) -> bytes:
    """``request`` with one to three random edits: a byte changed, inserted or removed, or a span repeated."""
    data = bytearray(request)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(data))
        edit = rng.randrange(4)
        if edit == 0:
            data[i] = rng.randrange(256)
        elif edit == 1:
            data.insert(i, rng.choice(b" \r\n:/?%\x00\xffA9"))
        elif edit == 2 and len(data) > 1:
            del data[i]
        else:
            data[i:i] = data[i:i + rng.randint(1, 20)]
    return bytes(data)


def test_mutated_requests_get_json_answers(server: Any, tmp_path: Path) -> None:
    """Seeded random edits of good requests: each is answered (or closed) at once, never with a 500."""
    upload = post(b"marked.nii.gz", marked_nifti(tmp_path))
    rng = random.Random(28)
    seen: set[int | None] = set()
    for i in range(120):
        base = (GET, upload)[i % 2] + (b"\r\n" if i % 2 == 0 else b"")
        raw = mutate(rng, base)
        status, headers, body = exchange(server, raw, end_input=True)  # so a cut request ends instead of waiting
        seen.add(status)
        if status is None or status == 200 or raw.startswith(b"HEAD"):
            continue
        assert status in ERROR_STATUSES, (raw[:200], status, body)
        json_error(headers, body)
    assert {200, 400} <= seen  # both harmless edits and refused ones were tried
    assert exchange(server, GET + b"\r\n")[0] == 200


def test_many_clients_at_once(server: Any, tmp_path: Path) -> None:
    """Uploads, page and API reads and bad requests from 16 clients at once: each gets its own right answer, and
    the service is healthy after (no upload slot or thread left behind)."""
    assert server.request_queue_size >= 128  # the standard library's backlog of 5 resets a burst like this one
    data = marked_nifti(tmp_path)
    threads_before = threading.active_count()
    first, first_headers, first_body = exchange(server, post(b"first.nii.gz", data))
    assert first == 200
    scan_id = json.loads(first_body)["id"]
    jobs: list[tuple[bytes, int, str | None]] = [
        (post(b"a.nii.gz", data), 200, "a.nii.gz"),  # --max-pending 2: both uploads are taken
        (post(b"b.nii.gz", data), 200, "b.nii.gz"),
        (b"GET / HTTP/1.1\r\n" + HOST + b"\r\n", 200, None),
        (b"GET /api/model HTTP/1.1\r\n" + HOST + b"\r\n", 200, None),
        (b"GET /api/scans/" + scan_id.encode() + b" HTTP/1.1\r\n" + HOST + b"\r\n", 200, "first.nii.gz"),
        *[(b"GET /api/scans/" + scan_id.encode() + f"/slice/axial/{k}.png HTTP/1.1\r\n".encode() + HOST + b"\r\n",
           200, None) for k in range(4)],
        (GET + b"\r\n", 200, None),
        (b"GET /\r\n", 400, "HTTP/0.9"),
        (GET + b"Host: evil.example\r\n\r\n", 400, "Host header given 2 times"),
        (b"PUT / HTTP/1.1\r\n" + HOST + b"\r\n", 501, "unsupported method"),
        (post(b".nii.gz"), 400, "no file name before the extension"),
        (UPLOAD + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabc", 400, "Content-Length header given 2 times"),
        (b"\x16\x03\x01\x00", 400, "not an HTTP request"),
    ]
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def client(k: int) -> None:
        barrier.wait()
        try:
            results[k] = exchange(server, jobs[k][0])
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results[k] = exc

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for (raw, status, text), result in zip(jobs, results, strict=True):
        assert not isinstance(result, Exception) and result[0] == status, (raw[:60], result)
        if status == 200 and text is not None:
            assert json.loads(result[2])["input"] == text
        elif text is not None:
            assert text in json_error(result[1], result[2]), raw[:60]
    assert exchange(server, post(b"after.nii.gz", data))[0] == 200  # both upload slots were given back
    assert list(server.service.workdir.iterdir()) == []
    deadline = time.monotonic() + 10
    while threading.active_count() > threads_before:  # each connection's thread ends with its connection
        assert time.monotonic() < deadline, threading.enumerate()
        time.sleep(0.02)
