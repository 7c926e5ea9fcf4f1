"""Shared helpers of the query API: parameter validation (422 naming the field) and stage calls."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.context import GatewayContext
from pipeline.config import unknown_field_hint


class BadParam(Exception):
    """A query parameter is invalid: answered 422 with the field named."""

    def __init__(self, field: str, message: str, value: Any = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.value = field, message, value

    def response(self) -> JSONResponse:
        body = {"error": "invalid parameter", "field": self.field, "detail": self.message}
        if self.value is not None:  # the value as received, cut where it is long, marked as cut
            shown = str(self.value)
            body["value"] = shown if len(shown) <= 100 else shown[:99] + "…"
        return JSONResponse(body, status_code=422)


_M = TypeVar("_M", bound=BaseModel)

_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_query(
    model: type[_M], request: Request, fixed: dict[str, Any] | None = None, bools: tuple[str, ...] = ()
) -> _M:
    """Validate the query string into `model` (unknown or repeated parameters are errors too)."""
    params: dict[str, Any] = {}
    value: Any  # a query string, a parsed bool, or a rejected input
    for name, value in request.query_params.multi_items():
        if name in params:
            raise BadParam(name, "given more than once")
        if fixed and name in fixed:
            raise BadParam(name, "is part of the path, not a query parameter")
        if name in bools:
            if value.lower() not in _BOOL:
                raise BadParam(name, "must be true or false", value)
            value = _BOOL[value.lower()]
        params[name] = value
    try:
        return model(**params, **(fixed or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":  # its input is the whole query: name the field and stop
            raise BadParam(loc, "is required") from None
        if err["type"] == "extra_forbidden":
            raise BadParam(loc, "unknown parameter" + unknown_field_hint(loc, list(model.model_fields))) from None
        if not loc:  # a model-level check: name the field it is about
            loc = next((f for f in model.model_fields if msg.startswith(f)), "query")
        value = err.get("input") if loc != "query" else None
        raise BadParam(loc, msg, value if isinstance(value, (str, int, float)) else None) from None


async def call_stage(ctx: GatewayContext, stage: str, method: str, *args: Any) -> Any:
    """Call a method of another deployment (a Serve handle, or a local object in tests)."""
    target = ctx.stages.get(stage)
    if target is None:
        raise LookupError(f"the {stage} stage is not running")
    if hasattr(target, "deployment_name"):
        return await getattr(target, method).remote(*args)
    return await asyncio.to_thread(getattr(target, method), *args)


def unavailable(what: str) -> JSONResponse:
    return JSONResponse({"error": "unavailable", "detail": what}, status_code=503)
