"""`POST /chat/completions` and its beta twin (prefix completion, strict tools), streamed or not."""

from __future__ import annotations

from fastapi import APIRouter, Request

from deepseek.chat import ChatFormatError, continues_in_reasoning, encode_request
from deepseek.engine.request import Request as EngineRequest
from deepseek.engine.sampler import SamplingParams
from deepseek.tokenizer import DSML

from .. import auth
from ..errors import APIError
from ..generation import Job, Run, chunk_delta, new_request_id
from ..schemas import ChatRequest
from ..state import ModelRoute, ServerState
from ..tools import tool_grammar
from .common import admit, run_to_end, sse_frame, stream_response

router = APIRouter()


def _thinking(body: ChatRequest, route: ModelRoute) -> bool:
    if route.thinking:
        return True
    if body.thinking is not None:
        return body.thinking.type == "enabled"
    kwargs = body.chat_template_kwargs or {}
    return bool(kwargs.get("thinking", kwargs.get("enable_thinking", False)))


def _check_params(body: ChatRequest, thinking: bool) -> None:
    if thinking and (body.logprobs or body.top_logprobs):
        raise APIError(400, "logprobs and top_logprobs are not supported in thinking mode", "logprobs")
    if body.top_logprobs and not body.logprobs:
        raise APIError(422, "top_logprobs requires logprobs to be true", "top_logprobs")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
    if body.response_format is not None and body.response_format.type == "json_schema":
        raise APIError(422, "response_format type 'json_schema' is not supported; use 'json_object'",
                       "response_format")


def _sampling(body: ChatRequest, route: ModelRoute, thinking: bool) -> SamplingParams:
    try:
        return _sampling_params(body, route, thinking)
    except ValueError as e:
        raise APIError(422, str(e)) from e


def _sampling_params(body: ChatRequest, route: ModelRoute, thinking: bool) -> SamplingParams:
    max_tokens = body.max_tokens or route.max_tokens_default
    if max_tokens > route.max_tokens_limit:
        raise APIError(422, f"max_tokens must be at most {route.max_tokens_limit} for {route.id}",
                       "max_tokens")
    stop = body.stop if body.stop is not None else ()
    if thinking:   # temperature, top_p and the penalties have no effect in thinking mode (api.md A3)
        return SamplingParams(max_tokens=max_tokens, stop=stop, seed=body.seed)
    return SamplingParams(temperature=body.temperature if body.temperature is not None else 1.0,
                          top_p=body.top_p if body.top_p is not None else 1.0,
                          frequency_penalty=body.frequency_penalty or 0.0,
                          presence_penalty=body.presence_penalty or 0.0, seed=body.seed,
                          max_tokens=max_tokens, stop=stop, logprobs=bool(body.logprobs),
                          top_logprobs=body.top_logprobs or 0)


def build_job(state: ServerState, body: ChatRequest, beta: bool, key) -> Job:
    route = state.route(body.model)
    thinking = _thinking(body, route)
    _check_params(body, thinking)
    messages = [dict(m) for m in body.messages]
    prefix = None
    if messages[-1].get("role") == "assistant" and messages[-1].get("prefix"):
        if not beta:
            raise APIError(400, "chat prefix completion (prefix: true) needs the /beta base URL", "messages")
        prefix = messages.pop()
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice = body.tool_choice
    tool = tool_grammar(state, tools, choice, beta, parallel=body.parallel_tool_calls is not False)
    grammar, trigger = (tool.grammar, DSML if tool.after_dsml else None) if tool else (None, None)
    if body.response_format is not None and body.response_format.type == "json_object" \
            and (tool is None or tool.after_dsml):   # JSON mode wins over "auto": no calls then
        grammar, trigger = state.grammars.json_object(), None
    try:
        prompt = encode_request(messages, None if choice == "none" else tools, None, thinking, prefix)
    except ChatFormatError as e:
        raise APIError(400, str(e), "messages") from e
    parse_thinking = continues_in_reasoning(prefix, thinking) if prefix is not None else thinking
    if grammar is not None and trigger is None and parse_thinking:
        trigger = "</think>"    # the answer's grammar starts after the reasoning
    ids = state.encode(prompt, "messages")
    request = EngineRequest(
        new_request_id(), ids, _sampling(body, route, thinking), sparse=route.sparse,
        salt=getattr(key, "cache_salt", b"") or b"", grammar=grammar,
        grammar_after_token=state.token_id(trigger) if trigger else None)
    try:
        state.engine.validate(request)
    except ValueError as e:
        raise APIError(400, str(e), "messages") from e
    return Job(route, body.model, request, parse_thinking, tools=tools if choice != "none" else None, key=key)


def _message(run: Run) -> dict:
    m = run.message
    out = {"role": "assistant", "content": m.content}
    if run.job.parse_thinking or run.job.route.thinking:
        out["reasoning_content"] = m.reasoning_content
    if m.tool_calls:
        out["tool_calls"] = [c.to_openai() for c in m.tool_calls]
    return out


def _logprobs(state: ServerState, run: Run) -> dict | None:
    if not run.job.request.params.logprobs:
        return None

    def entry(token_id: int, logprob: float) -> dict:
        text = state.tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in run.logprobs]}


def _base(state: ServerState, job: Job, obj: str) -> dict:
    return {"id": job.request.request_id, "object": obj, "created": job.created, "model": job.model_name,
            "system_fingerprint": state.fingerprint}


async def _handle(body: ChatRequest, request: Request, beta: bool):
    state: ServerState = request.app.state.server
    key = auth.authorize(state, request)
    job = build_job(state, body, beta, key)
    if body.stream:
        slot = admit(state, key)
        run = Run(state, job)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(state, run, slot, _chunks(state, run, include_usage))

    async def produce() -> dict:
        slot = admit(state, key)
        run = Run(state, job)
        await run_to_end(state, run, slot, request)
        return {**_base(state, job, "chat.completion"),
                "choices": [{"index": 0, "message": _message(run), "logprobs": _logprobs(state, run),
                             "finish_reason": run.finish_reason}],
                "usage": run.usage.to_dict()}

    return await state.idempotency.respond(request, key, produce)


async def _chunks(state: ServerState, run: Run, include_usage: bool):
    job = run.job
    base = _base(state, job, "chat.completion.chunk")

    def frame(delta: dict, finish: str | None = None, **extra) -> str:
        return sse_frame({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}], "usage": None, **extra})

    first = {"role": "assistant", "content": ""}
    if job.parse_thinking:
        first = {"role": "assistant", "content": None, "reasoning_content": ""}
    yield frame(first)
    async for events in run.deltas():
        if events is None:
            yield ": keep-alive\n\n"
            continue
        for event in events:
            yield frame(chunk_delta(event))
    yield frame({}, run.finish_reason)
    yield None    # the caller records usage here, before the last bytes
    if include_usage:
        yield sse_frame({**base, "choices": [], "usage": run.usage.to_dict()})
    yield "data: [DONE]\n\n"


@router.post("/chat/completions")
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    return await _handle(body, request, beta=False)


@router.post("/beta/chat/completions")
@router.post("/v1/beta/chat/completions")
@router.post("/beta/v1/chat/completions")
async def beta_chat_completions(body: ChatRequest, request: Request):
    return await _handle(body, request, beta=True)

