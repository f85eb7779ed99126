"""POST /classify: images as multipart uploads, JSON base64 or a raw image body.

Options come from the query string, and also from JSON body fields or multipart form fields
(the body wins); service/dataplane/vision.py validates them for REST and gRPC alike. Decoding and
cropping run in the model's thread pool, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from service.api.context import caller_of, vision_plane
from service.api.schemas import VISION, ErrorResponse
from service.errors import InvalidRequest
from service.vision.preprocess import UnsupportedMediaType

router = APIRouter(tags=[VISION])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 501, 503)
}


def decode_b64(value: object, index: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"image {index} must be a base64 string", code="invalid_base64")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image {index} is not valid base64", code="invalid_base64") from exc


async def read_request(request: Request, max_images: int) -> tuple[list[bytes], dict]:
    """(image bytes, option fields) from any of the accepted body types."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict = dict(request.query_params)
    images: list[bytes] = []
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images + 1, max_fields=64)
        except Exception as exc:  # starlette: too many files/fields or a malformed body
            if "Too many files" in str(exc):
                raise InvalidRequest(
                    f"more than {max_images} images (KILN_CLASSIFY_MAX_IMAGES)", code="too_many_images"
                ) from exc
            raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append(await value.read())
            else:
                fields[key] = value
    elif ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest("request body is not valid JSON", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise InvalidRequest("the JSON body must be an object", code="invalid_json")
        raw = body.pop("images", None)
        single = body.pop("image", None)
        items = ([single] if single is not None else []) + (list(raw) if isinstance(raw, list) else [])
        if raw is not None and not isinstance(raw, list):
            raise InvalidRequest("`images` must be a list of base64 strings", code="invalid_parameter")
        if len(items) > max_images:
            raise InvalidRequest(f"{len(items)} images exceed the limit of {max_images}", code="too_many_images")
        images = [decode_b64(v, i) for i, v in enumerate(items)]
        fields.update(body)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        images = [await request.body()]
    else:
        raise UnsupportedMediaType(
            f"content-type {ctype or 'none'!r} is not accepted: send multipart/form-data, application/json "
            "(base64 images) or an image/* body",
            code="unsupported_media_type",
        )
    return images, fields


@router.post("/classify", responses=ERRORS)
async def classify(request: Request) -> JSONResponse:
    caller = caller_of(request, "http")
    images, fields = await read_request(request, request.app.state.settings.classify_max_images)
    out = await vision_plane(request).classify(caller, images, fields)
    # The result holds only str/int/float/bool/list/dict: serialised directly, without FastAPI's
    # jsonable_encoder walk (a measurable share of a small image's CPU time).
    return JSONResponse({"id": caller.request_id or f"cls-{uuid.uuid4().hex[:16]}", **out})
