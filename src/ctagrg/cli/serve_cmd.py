"""``ctagrg serve --model DIR [--host H] [--port P] [--device D] [--max-upload-mb MB] [--keep N]``."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

DESCRIPTION = (
    "Serve a packaged model over HTTP with a slice viewer: open the printed URL, upload a scan (NIfTI, NRRD, MHA "
    "or a .zip of a DICOM series) and read its report, the 18 abnormality probabilities and the axial, coronal and "
    "sagittal slices. JSON endpoints under /api (docs/serve.md). There is no authentication: keep the default "
    "--host 127.0.0.1, or put a reverse proxy with authentication in front. Research software, not for diagnostic "
    "use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="packaged model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest upload in MiB (default 2048)")
    parser.add_argument("--keep", type=int, default=8, help="scans kept in memory for the viewer (default 8)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ctagrg.generation.reporter import Reporter
    from ctagrg.serve.app import ServeConfig, make_server

    if not args.max_upload_mb > 0 or args.keep < 1:
        print(f"--max-upload-mb must be > 0 and --keep >= 1, got {args.max_upload_mb:g} and {args.keep}",
              file=sys.stderr)
        return 2
    config = ServeConfig(max_upload_mb=args.max_upload_mb, keep=args.keep)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        reporter = Reporter.from_pretrained(args.model, device=device)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: e.g. --device cuda without a GPU
        print(f"{exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(reporter, host=args.host, port=args.port, config=config)
    except OSError as exc:  # port in use, address not on this machine, port below 1024 without privileges
        print(f"{args.host}:{args.port}: cannot listen ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"ctagrg serve: {args.model} on {device}; open {server.url} (Ctrl-C stops). "
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
