"""`GET /models`, `GET /user/balance`, `GET /health`, `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import auth

router = APIRouter()


@router.get("/models")
@router.get("/v1/models")
async def models(request: Request):
    state = request.app.state.server
    auth.authenticate(state, request)
    data = [{"id": route_id, "object": "model", "owned_by": "deepseek"} for route_id in state.routes]
    return {"object": "list", "data": data}


@router.get("/user/balance")
@router.get("/v1/user/balance")
async def balance(request: Request):
    state = request.app.state.server
    key = auth.authenticate(state, request)
    return state.accounts.balance(key.key_id if key else None)


@router.get("/health")
@router.get("/v1/health")
async def health(request: Request):
    state = request.app.state.server
    if not state.engine.healthy:
        return JSONResponse({"status": "unhealthy", "reason": "the inference engine stopped"}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request):
    return Response(request.app.state.server.metrics.render(), media_type="text/plain; version=0.0.4")
