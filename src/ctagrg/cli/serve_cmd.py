"""``ctagrg serve --model DIR [--host H] [--port P] [--device D] [--max-upload-mb MB] [--keep N]``.

Also ``--max-voxels N``, ``--max-memory-mb MB``, ``--max-pending N``, ``--timeout S``, ``--min-upload-rate KIB``
and ``--allow-host NAME`` (repeatable); see docs/serve.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ctagrg.cli.arguments import add_max_memory_mb, port_number, positive_float, positive_int

DESCRIPTION = (
    "Serve a packaged model over HTTP with a slice viewer: open the printed URL, upload a scan (NIfTI, NRRD, MHA "
    "or a .zip of a DICOM series) and read its report, the 18 abnormality probabilities and the axial, coronal and "
    "sagittal slices. JSON endpoints under /api (docs/serve.md). There is no authentication: keep the default "
    "--host 127.0.0.1, or put a reverse proxy with authentication in front. Research software, not for diagnostic "
    "use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # defaults written out rather than read from ServeConfig: importing ctagrg.serve.app would load numpy
    parser.add_argument("--model", required=True,
                        help="packaged model folder, or a Hugging Face Hub id org/name[@revision] (docs/inference.md)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--max-upload-mb", type=positive_float, default=2048.0,
                        help="largest upload in MiB, as sent (default 2048)")
    parser.add_argument("--max-voxels", type=positive_int, default=600_000_000,
                        help="largest scan in voxels, read from its header before decoding (default 600000000)")
    parser.add_argument("--max-pending", type=positive_int, default=2,
                        help="uploads received or reported at once; more are answered 503 busy (default 2)")
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="seconds a connection may stay silent before it is dropped (default 60)")
    parser.add_argument("--min-upload-rate", type=positive_float, default=64.0, metavar="KIB",
                        help="slowest upload kept, KiB/s on average after its first --timeout seconds: an upload of "
                             "N KiB must arrive within --timeout + N / KIB seconds (default 64)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="another name clients may use for this server in the Host header (repeatable)")
    parser.add_argument("--keep", type=positive_int, default=8, help="scans kept in memory for the viewer (default 8)")
    parser.add_argument("--saliency", action="store_true",
                        help="compute a saliency map per detected abnormality (one backward pass each) and show it in "
                             "the viewer (docs/saliency.md); each kept scan then also holds 1 byte a voxel per "
                             "detected abnormality (55 MiB a map at the paper's 240 x 480 x 480)")
    add_max_memory_mb(parser, "an upload")


def run(args: argparse.Namespace) -> int:

    from ctagrg.generation.reporter import Reporter
    from ctagrg.serve.app import ServeConfig
    from ctagrg.serve.http import make_server

    config = ServeConfig(max_upload_mb=args.max_upload_mb, max_voxels=args.max_voxels, max_memory_mb=args.max_memory_mb,
                         max_pending=args.max_pending, timeout_s=args.timeout,
                         min_upload_rate_kib=args.min_upload_rate,
                         allowed_hosts=tuple(args.allow_host), keep=args.keep, saliency=args.saliency)
    try:
        reporter = Reporter.from_pretrained(args.model, device=args.device)
    except (OSError, ValueError, RuntimeError) as exc:  # ValueError: a bad model folder or --device
        print(f"{exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(reporter, host=args.host, port=args.port, config=config)
    except OSError as exc:  # port in use, address not on this machine, port below 1024 without privileges
        print(f"{args.host}:{args.port}: cannot listen ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"ctagrg serve: {args.model} on {reporter.device}; open {server.url} (Ctrl-C stops). "
          "Research software, not for diagnostic use.", flush=True)
    # SIGTERM (systemd, docker stop, kill) stops like Ctrl-C, so the temporary upload folder is removed too
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()  # also removes the temporary upload folder
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
