"""URL override: one local server stands in for all of an exchange's hosts.

``exchanges.<name>.rest_url`` / ``ws_url`` replace the scheme, host and port of every URL the
worker uses; the path and query of the original URL are kept. Written once, used by the REST
client and the WebSocket manager alike.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

_WS_FOR_HTTP = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_FOR_WS = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def override_base(url: str, base: str | None) -> str:
    """``url`` with scheme, host and port taken from ``base`` (None or "" = unchanged).

    The scheme family of ``url`` is kept: a ``ws(s)://`` URL overridden with ``http://host``
    becomes ``ws://host`` and vice versa, so one setting value works for either transport.
    A path prefix in ``base`` (``http://h:1/prefix``) is put in front of ``url``'s path.
    """
    if not base:
        return url
    orig = urlsplit(url)
    new = urlsplit(base)
    if not new.scheme or not new.netloc:
        raise ValueError("override base must be scheme://host[:port]")
    if orig.scheme in ("ws", "wss"):
        scheme = _WS_FOR_HTTP.get(new.scheme, new.scheme)
    elif orig.scheme in ("http", "https"):
        scheme = _HTTP_FOR_WS.get(new.scheme, new.scheme)
    else:
        scheme = new.scheme
    prefix = new.path.rstrip("/")
    path = prefix + (orig.path or "/") if prefix else orig.path
    return urlunsplit((scheme, new.netloc, path, orig.query, orig.fragment))
