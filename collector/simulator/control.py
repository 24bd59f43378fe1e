"""Request helpers shared by every simulator app's ``/_sim/`` control routes: JSON answers, the
JSON body, and field validation against a spec."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from collector.simulator.state import SimError

JSON_CT = "application/json;charset=UTF-8"

#: field -> (accepted types, default; ``...`` = required)
Spec = dict[str, tuple[tuple[type, ...], Any]]
NUM = (int, float)
OPT_STR = ((str,), None)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers={"Content-Type": JSON_CT, **(headers or {})})


def fields(body: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The fields of ``spec`` from ``body`` (defaults filled in); SimError 400 on unknown, missing
    or mistyped fields (a bool is not accepted as a number)."""
    unknown = set(body) - set(spec)
    if unknown:
        raise SimError(400, f"unknown field(s): {sorted(unknown)}; accepted: {sorted(spec)}")
    out: dict[str, Any] = {}
    for name, (types, default) in spec.items():
        value = body.get(name)
        if value is None:
            if default is ...:
                raise SimError(400, f"field {name!r} is required")
            out[name] = default
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise SimError(400, f"field {name!r} must be {'/'.join(t.__name__ for t in types)}")
        out[name] = value
    return out


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); SimError 400 otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SimError(400, "request body must be JSON") from None
    if not isinstance(body, dict):
        raise SimError(400, "request body must be a JSON object")
    return body
