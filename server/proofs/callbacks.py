"""Proof-job callbacks: POST the job's status to a ``callback_url`` when it ends.

Only to loopback (127.0.0.0/8, ::1, ``localhost``) or to a host named in the
``callback_hosts`` setting: the server never posts to an arbitrary host (no
SSRF), and never follows a redirect. Tries ``callback_attempts`` times with
exponential backoff; a 2xx answer counts as delivered.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from verifier.digests import compact_json
from verifier.errors import InputError

log = logging.getLogger("verinfer.server")


def check_callback_url(url: str, allowed_hosts: tuple[str, ...] | list[str]) -> str:
    """``url`` if the server may post to it; else :class:`InputError`."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InputError("callback_url must be a URL string")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise InputError(f"callback_url {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InputError("callback_url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise InputError("callback_url must not carry credentials")
    if host.lower() in {h.lower() for h in allowed_hosts}:
        return url
    if host.lower() == "localhost":
        return url
    try:
        if ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise InputError(f"callback_url host {host!r} is not loopback or in the server's "
                     f"callback_hosts allow-list")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # never follow a redirect elsewhere
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def deliver(url: str, payload: dict, *, attempts: int, backoff_s: float,
            timeout_s: float = 5.0, stop=None) -> bool:
    """POST ``payload`` as JSON until a 2xx answer; False when every try failed."""
    body = compact_json(payload)
    delay = backoff_s
    for i in range(attempts):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "verinfer-callback/1"})
        try:
            with _OPENER.open(req, timeout=timeout_s) as r:
                if 200 <= r.status < 300:
                    return True
                why = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
        log.warning("callback %s for job %s, try %d of %d: %s", url, payload.get("id"), i + 1,
                    attempts, why)
        if i + 1 < attempts:
            if stop is not None:
                if stop.wait(delay):
                    return False
            else:
                time.sleep(delay)
            delay *= 2
    return False
