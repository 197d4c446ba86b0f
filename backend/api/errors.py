"""422s that name the server setting behind a ceiling, so a client knows which limit it met."""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from backend.models import Message

# the field a ceiling sits on -> the setting that sets it (backend/core/config.py)
SETTING_FOR_FIELD = {"n": "MAX_N", "n0": "MAX_N0", "batch_size": "MAX_BATCH_SIZE", "pack": "MAX_PACK",
                     "count": "MAX_JOB_INPUTS", "indices": "MAX_JOB_INPUTS", "num_classes": "MAX_CLASSES",
                     "class_names": "MAX_CLASSES", "limit": "MAX_PAGE_SIZE", "input_shape": "MAX_INPUT_ELEMENTS"}
CEILINGS = ("less_than_equal", "less_than", "too_long")


# a body FastAPI cannot parse at all (JSON that is not UTF-8, broken multipart) is a 400, before validation
MALFORMED_BODY = {"model": Message, "description": "the body does not parse: JSON that is not UTF-8, or "
                                                   "broken multipart"}


def unprocessable(description: str) -> dict:
    """A route's declared 422: FastAPI's validation errors (a list) or the route's own refusal (a string)."""
    schemas = [{"$ref": "#/components/schemas/HTTPValidationError"}, {"$ref": "#/components/schemas/Message"}]
    return {"description": description, "content": {"application/json": {"schema": {"anyOf": schemas}}}}


def _json_safe(value: Any) -> Any:
    """The offending input as JSON can carry it: Infinity and NaN (which Python's JSON reader accepts) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = _json_safe(jsonable_encoder(error.errors()))
    for item in errors:
        field = next((part for part in reversed(item.get("loc", ())) if isinstance(part, str)), None)
        if item.get("type") in CEILINGS and field in SETTING_FOR_FIELD:
            item["msg"] = f"{item['msg']} (the server's {SETTING_FOR_FIELD[field]})"
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
