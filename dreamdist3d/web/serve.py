"""A local static file server for galleries and reports (`dreamdist3d serve DIR`): browsers refuse to fetch GLB
files from file:// pages. Binds 127.0.0.1 by default; serves GLB, MP4 and JS with their MIME types."""

from __future__ import annotations

import functools
import shlex
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MIME = {".glb": "model/gltf-binary", ".gltf": "model/gltf+json", ".mp4": "video/mp4", ".js": "text/javascript",
        ".mjs": "text/javascript", ".svg": "image/svg+xml", ".ply": "application/octet-stream",
        ".obj": "text/plain", ".mtl": "text/plain", ".json": "application/json"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME}

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


def make_server(folder, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False) -> ThreadingHTTPServer:
    """A server for `folder` (not started; port 0 = any free port: read `server.server_address`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder to serve")
    server = ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(folder)))
    server.verbose = verbose
    return server


def view_hint(page) -> str:
    """The line that tells a user how to open `page` (a gallery's HTML file): serve its folder, then the URL."""
    page = Path(page)
    return (f"{shlex.join(['dreamdist3d', 'serve', str(page.parent)])}  (then open http://127.0.0.1:8000/{page.name}; "
            "browsers load no GLB models from file://)")


__all__ = ["MIME", "make_server", "view_hint"]
