"""Vertex AI custom-container routes: predict `{"instances": [...]}` -> `{"predictions": [...]}`.

Vertex sets AIP_HTTP_PORT, AIP_PREDICT_ROUTE and AIP_HEALTH_ROUTE; `deepseek serve` honours them.
Each instance is a chat-completion request body (at least `messages`; `model` defaults to
deepseek-v3.2); each prediction is the matching non-streaming chat.completion object, or an
`{"error": ...}` object for an instance that failed, so one bad instance does not sink the batch.
"""

from __future__ import annotations

import json
import logging
import os

from fastapi import APIRouter, Request
from pydantic import ValidationError

from ..errors import APIError, error_body
from ..schemas import ChatRequest
from . import chat
from .info import health

log = logging.getLogger(__name__)
DEFAULT_PREDICT_ROUTE = "/predict"
DEFAULT_HEALTH_ROUTE = "/vertex/health"


def make_router() -> APIRouter:
    router = APIRouter()
    predict_route = os.environ.get("AIP_PREDICT_ROUTE", DEFAULT_PREDICT_ROUTE)
    health_route = os.environ.get("AIP_HEALTH_ROUTE", DEFAULT_HEALTH_ROUTE)

    @router.post(predict_route)
    async def predict(request: Request):
        try:
            body = await request.json()
        except (ValueError, RecursionError) as e:
            raise APIError(400, f"Malformed JSON body: {e}") from e
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            raise APIError(400, "the body must be {\"instances\": [...]} with at least one instance", "instances")
        predictions = [await _predict_one(request, instance) for instance in instances]
        return {"predictions": predictions}

    @router.get(health_route)
    async def vertex_health(request: Request):
        return await health(request)

    return router


async def _predict_one(request: Request, instance) -> dict:
    try:
        if not isinstance(instance, dict):
            raise APIError(400, "each instance must be a chat-completion request object")
        body = ChatRequest.model_validate({"model": "deepseek-v3.2", **instance, "stream": False})
        response = await chat._handle(body, request, beta=True)
        return json.loads(response.body)
    except ValidationError as e:
        first = e.errors()[0]
        return error_body(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
    except APIError as e:
        return error_body(e.status, e.message, e.param)
    except Exception:  # noqa: BLE001 - a bug in one instance must not fail the others
        log.exception("vertex instance failed")
        return error_body(500, "The server had an error while processing this instance.")
