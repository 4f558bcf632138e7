"""Serve the page on this computer only: python web/serve.py, then open http://127.0.0.1:8000/.

WebAssembly does not load from file:// addresses, so the page needs a server; Python's own serves
this folder, with the content types a browser demands of JavaScript modules and WebAssembly
stated here rather than left to the system's tables, and nothing cached, so that a model exported
again is the one scored.
"""
import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(SimpleHTTPRequestHandler):
    extensions_map = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg"}

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):  # quiet: a page load asks for a dozen files
        pass


def server(folder, port=8000):
    """A server of folder on 127.0.0.1:port (0: any free port), not yet serving."""
    handler = functools.partial(Handler, directory=str(folder))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    print(f"serving {Path(__file__).parent} at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    server(Path(__file__).parent, port).serve_forever()
