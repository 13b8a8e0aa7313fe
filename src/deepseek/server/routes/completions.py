"""`POST /beta/completions`: FIM (fill in the middle) with `prompt` + `suffix` (api.md A6).

Non-thinking only. `logprobs` is an integer here (top-n per token), as in OpenAI's legacy API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from deepseek.chat import encode_fim
from deepseek.engine.request import Request as EngineRequest
from deepseek.engine.sampler import SamplingParams

from .. import auth
from ..errors import APIError
from ..generation import Job, Run, new_request_id
from ..schemas import CompletionRequest
from ..state import ServerState
from .common import admit, run_to_end, sse_frame, stream_response

router = APIRouter()
FIM_MAX_TOKENS = 4096


def build_job(state: ServerState, body: CompletionRequest, key) -> Job:
    route = state.route(body.model)
    if route.thinking:
        raise APIError(400, f"FIM completion is not available for {route.id} (thinking mode)", "model")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
    max_tokens = body.max_tokens or 1024
    if max_tokens > FIM_MAX_TOKENS:
        raise APIError(422, f"max_tokens must be at most {FIM_MAX_TOKENS} for FIM completion", "max_tokens")
    ids = state.encode(encode_fim(body.prompt, body.suffix), "prompt")
    try:
        params = _params(body, max_tokens)
    except ValueError as e:
        raise APIError(422, str(e)) from e
    request = EngineRequest(new_request_id(), ids, params, sparse=route.sparse,
                            salt=getattr(key, "cache_salt", b"") or b"")
    try:
        state.engine.validate(request)
    except ValueError as e:
        raise APIError(400, str(e), "prompt") from e
    return Job(route, body.model, request, parse_thinking=False, parse_tools=False, key=key)


def _params(body: CompletionRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        temperature=body.temperature if body.temperature is not None else 1.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
        max_tokens=max_tokens, stop=body.stop if body.stop is not None else (), seed=body.seed,
        logprobs=body.logprobs is not None and body.logprobs > 0, top_logprobs=body.logprobs or 0)


def _logprobs(state: ServerState, run: Run, offset: int) -> dict | None:
    if not run.job.request.params.logprobs:
        return None
    decode = lambda t: state.tokenizer.decode([t], skip_special_tokens=False)  # noqa: E731
    tokens, offsets = [], []
    for lp in run.logprobs:
        offsets.append(offset)
        tokens.append(decode(lp.token_id))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in run.logprobs], "text_offset": offsets,
            "top_logprobs": [{decode(t): v for t, v in lp.top} for lp in run.logprobs]}


@router.post("/beta/completions")
@router.post("/v1/beta/completions")
@router.post("/beta/v1/completions")
async def fim_completions(body: CompletionRequest, request: Request):
    state: ServerState = request.app.state.server
    key = auth.authorize(state, request)
    job = build_job(state, body, key)
    base = {"id": job.request.request_id, "object": "text_completion", "created": job.created,
            "model": body.model, "system_fingerprint": state.fingerprint}
    echo = body.prompt if body.echo else ""
    if body.stream:
        slot = admit(state, key)
        run = Run(state, job)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(state, run, slot, _chunks(run, base, echo, include_usage))

    async def produce() -> dict:
        slot = admit(state, key)
        run = Run(state, job)
        await run_to_end(state, run, slot, request)
        return {**base, "choices": [{"index": 0, "text": echo + run.full_text,
                                     "logprobs": _logprobs(state, run, len(echo)),
                                     "finish_reason": run.finish_reason}],
                "usage": run.usage.to_dict()}

    return await state.idempotency.respond(request, key, produce)


async def _chunks(run: Run, base: dict, echo: str, include_usage: bool):
    def frame(text: str, finish=None) -> str:
        return sse_frame({**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                "finish_reason": finish}], "usage": None})

    if echo:
        yield frame(echo)
    async for pieces in run.deltas():
        if pieces is None:
            yield ": keep-alive\n\n"
            continue
        for text in pieces:
            yield frame(text)
    yield frame("", run.finish_reason)
    yield None
    if include_usage:
        yield sse_frame({**base, "choices": [], "usage": run.usage.to_dict()})
    yield "data: [DONE]\n\n"
