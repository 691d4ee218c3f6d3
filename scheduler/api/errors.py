"""The one place errors become HTTP responses: `{"detail": "<one line>"}` with 4xx status.

OstinatoError subclasses carry their own status; request validation, pydantic validation and
database refusals (a value the backend cannot store, a unique constraint lost to a concurrent
writer) are 422 and 409 — never a 500 for anything a client can send.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError

from ostinato.deploy.errors import OstinatoError


def _response(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def one_line(errors: list[Any]) -> str:
    """The first validation error as `where: what`, e.g. `body.schedules.0.cron: invalid cron …`."""
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def install(app: FastAPI) -> None:
    @app.exception_handler(OstinatoError)
    async def _ostinato(_: Request, exc: OstinatoError) -> JSONResponse:
        return _response(exc.status_code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return _response(422, one_line(errors), errors=_jsonable(errors))

    @app.exception_handler(ValidationError)
    async def _model(_: Request, exc: ValidationError) -> JSONResponse:
        return _response(422, one_line(list(exc.errors())))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        return _response(422, f"value refused by the database: {exc.orig}".splitlines()[0])

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        return _response(409, "conflicts with a concurrent change; retry")


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]
