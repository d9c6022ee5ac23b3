"""`dreamdist3d serve DIR [--port 8000] [--host 127.0.0.1]`: serve a gallery or report folder locally, since
browsers refuse to fetch GLB models from file:// pages. Ctrl-C stops it."""

from __future__ import annotations

import argparse

NAME = "serve"
HELP = "serve a gallery or report folder on http://127.0.0.1:PORT/ (browsers do not load GLB models from file://)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder to serve (e.g. outputs/gallery/<name> or a toy demo's 3d/)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dreamdist3d.web.serve import make_server

    server = make_server(args.folder, args.host, args.port, verbose=args.verbose)
    host, port = server.server_address[:2]
    page = next((n for n in ("gallery.html", "report.html", "index.html") if (Path(args.folder) / n).is_file()), "")
    print(f"serving {args.folder} on http://{host}:{port}/{page}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
