"""The verinfer inference server: OIP v2 REST API, dynamic batching, signed receipts.

Nothing here does work at import time; build the app with
:func:`server.http.app.create_app` and serve it with ``verinfer serve``.
"""
