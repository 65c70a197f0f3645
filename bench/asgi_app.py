"""The verinfer app as an ASGI factory for any HTTP server (``bench/http_servers.py``):
``uvicorn --factory bench.asgi_app:create_app`` or ``granian --interface asgi --factory ...``.

Settings come from the environment (``VERINFER_*``, as ``verinfer serve`` reads them); with
``VERINFER_BENCH_RECEIPT_WRITER`` (a shared receipt log writer's Unix socket, started by the
benchmark as ``serve --workers N`` starts it), every process of the server signs into that one
log, as the N processes of ``serve --workers N`` do. No proof-job supervisor, no relayer.
"""

from __future__ import annotations

import os


def create_app():
    from server.http.app import create_app as verinfer_app
    from server.settings import ServerSettings

    return verinfer_app(ServerSettings(), receipt_writer=os.environ.get("VERINFER_BENCH_RECEIPT_WRITER"),
                        background=False, worker=str(os.getpid()))
