"""An OpenAI-compatible API under /v1, served on the app's own port beside the Gradio page.

    GET  /v1/models             "base" and every variant the model layer has (adapters: no restart needed)
    POST /v1/chat/completions   streamed (server-sent events) or not

A chat completion is the Chat tab's answer: the same `rag.answer` (condense the follow-up, retrieve,
threshold, cite), and the response carries `Answer.to_json()`'s fields (`sources`, `reasoning`, `status`,
and whatever evidence it holds) at the top level, like `python -m chatapp ask --json`; in a stream the
last chunk carries them. `"retrieval": false` in the body makes it a plain chat with the variant (the
only case where the client's system message is used: the grounded prompt has its own).
Saved conversations (chatapp/conversations.py, the Chat tab's): `"store": true` saves the exchange as a new
conversation, and `"conversation_id": ID` continues a saved one, whose stored turns are then the history
(the request's earlier messages are not read). Either way the finished turn is saved before the response
(or the stream's last chunk) carries `conversation_id`. `"user"` (OpenAI's end-user field) names the owner:
the page's login user sees them in the Chat tab; without a login, conversations of no `user` are the page's.
Generation settings use OpenAI's names (`max_tokens` or `max_completion_tokens`, `temperature`, `top_p`)
plus `top_k`; no temperature, or 0, is greedy (the app's default). `"style"` picks the prompt style.

Streaming: `delta.content` is the answer; in the chain-of-thought style the reasoning before
"Final answer:" streams as `delta.reasoning_content` (vLLM's and DeepSeek's field for it). Text that may
still change (a half-written "Final answer:", a leading "Answer:" label) is held back until it settles;
the last chunk's `answer` and `reasoning` are the final ones. When the evidence check replaces an answer
that states a figure no passage holds, the replacement is streamed after what was sent, past a blank line.

Auth: with CHATAPP_API_KEY set every request needs `Authorization: Bearer KEY`; with a page login
(CHATAPP_AUTH) and no key, /v1 refuses every request. Errors are 4xx in OpenAI's error shape.
Handlers are plain functions, so FastAPI runs them on its thread pool; generations queue behind the
one model there (ModelRegistry runs them one at a time on its model thread).
"""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from chatapp import prompts, rag
from chatapp.conversations import Conversation, Conversations, Turn
from chatapp.model import BASE, GenerationSettings
from chatapp.remote import LLMServerError
from chatapp.settings import Settings

log = logging.getLogger("chatapp.api")
MAX_TOKENS_LIMIT = 8192
# Fields of OpenAI's own response objects: an Answer field of the same name never overwrites them.
OPENAI_FIELDS = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"}
_LABELS = ("answer:", "reasoning:")  # prompts.parse_reply strips these from the start of a reply


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def check_auth(settings: Settings, authorization: str | None) -> None:
    if settings.api_key:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with CHATAPP_API_KEY's value.",
                           code="invalid_api_key")
    elif settings.auth:
        raise APIError(403, "The API is off: the page has a login (CHATAPP_AUTH) and no CHATAPP_API_KEY is set.",
                       code="api_disabled")


def message_text(content) -> str:
    """A message's text: a string, or OpenAI's list of content parts (only text parts are read)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    raise APIError(400, "message content must be a string or a list of content parts", param="messages")


def parse_messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise APIError(400, f"messages[{index}] needs a role: system, user or assistant", param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": message_text(message.get("content"))})
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise APIError(400, "the last message must be the user's question, with text", param="messages")
    return messages


def _number(body: dict, name: str, kind, low: float, high: float):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", param=name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low:g} and {high:g}, not {value}", param=name)
    return kind(value)


def parse_generation(body: dict) -> GenerationSettings:
    defaults = GenerationSettings()
    max_tokens = _number(body, "max_completion_tokens", int, 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1, MAX_TOKENS_LIMIT)
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    top_k = _number(body, "top_k", int, 1, 10_000)
    if top_p == 0:
        raise APIError(400, "'top_p' must be above 0", param="top_p")
    _number(body, "n", int, 1, 1)  # one choice per request: a larger n is refused, not ignored
    return GenerationSettings(
        max_new_tokens=max_tokens or defaults.max_new_tokens,
        do_sample=bool(temperature),  # absent or 0: greedy, as the Chat tab's default
        temperature=temperature or defaults.temperature,
        top_k=top_k or defaults.top_k,
        top_p=top_p or defaults.top_p,
    )


def evidence_fields(result: rag.Answer | None) -> dict:
    """Everything `Answer.to_json()` has (sources, reasoning, status, evidence, ...), minus OpenAI's own names."""
    if result is None:
        return {"sources": []}
    return {k: v for k, v in result.to_json().items() if k not in OPENAI_FIELDS}


def _settled(text: str, hold_marker: bool) -> str:
    """`text` less what may still change: a leading label being written ("Answer:"), trailing space, and,
    before the chain-of-thought split, a trailing start of "Final answer:"."""
    text = text.rstrip()
    if any(label.startswith(text.lower()) for label in _LABELS):
        return ""
    if hold_marker:
        marker = prompts.FINAL_MARKER.lower()
        lowered = text.lower()
        for size in range(len(marker), 0, -1):
            if lowered.endswith(marker[:size]):
                return text[:-size].rstrip()
    return text


def streamable(snapshot: rag.Answer, style: str) -> tuple[str, str]:
    """(reasoning, content) of a partial answer that is safe to stream: what it will still say when done.

    The reply is read as rag reads it (prompts.parse_reply, then prompts.clean_answer), but without its
    last, unfinished word: a half-written "[1" or "Passage [3] sa" reads differently once complete (the
    citation and the lead-in are removed), and a delta cannot be taken back."""
    if snapshot.done:
        return snapshot.reasoning, snapshot.answer
    if snapshot.status not in ("answered", "small_talk"):  # "waiting" for an upload: a notice, not the answer
        return "", ""
    style = "direct" if snapshot.status == "small_talk" else style  # as rag parses small talk
    raw = snapshot.raw
    words_end = max(raw.rfind(" "), raw.rfind("\n"))
    parsed = prompts.parse_reply(raw[:words_end] if words_end > 0 else "", style)
    if style == "cot" and not parsed.reasoning:
        # No "Final answer:" with text after it yet: all of it is reasoning so far.
        return _settled(parsed.answer, hold_marker=True), ""
    return _settled(parsed.reasoning, False), _settled(prompts.clean_answer(parsed.answer), False)


class _Request:
    """One chat completion request, validated."""

    def __init__(self, body, registry, conversations: Conversations):
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        self.model = body.get("model") or BASE
        if not isinstance(self.model, str):
            raise APIError(400, "'model' must be a string", param="model")
        self.messages = parse_messages(body.get("messages"))
        self.generation = parse_generation(body)
        self.stream = bool(body.get("stream"))
        self.retrieval = body.get("retrieval", True)
        if not isinstance(self.retrieval, bool):
            raise APIError(400, "'retrieval' must be true or false", param="retrieval")
        self.style = body.get("style") or "cot"
        if self.style not in prompts.STYLES:
            raise APIError(400, f"'style' must be one of {', '.join(prompts.STYLES)}", param="style")
        known = registry.variants()
        if self.model not in known:
            raise APIError(404, f"The model '{self.model}' does not exist; known: {', '.join(known)}", param="model",
                           code="model_not_found")
        self.user = body.get("user") or ""
        if not isinstance(self.user, str):
            raise APIError(400, "'user' must be a string", param="user")
        self.conversation: Conversation | None = None  # its stored turns are the history
        self.conversation_id = body.get("conversation_id")
        if self.conversation_id is not None:
            if not isinstance(self.conversation_id, str):
                raise APIError(400, "'conversation_id' must be a string", param="conversation_id")
            try:
                self.conversation = conversations.get(self.conversation_id, self.user)
            except KeyError:
                raise APIError(404, f"no conversation '{self.conversation_id}' for this user", param="conversation_id",
                               code="conversation_not_found") from None
        elif body.get("store", False) is True:
            self.conversation_id = conversations.create(self.user)
        elif body.get("store", False) is not False:
            raise APIError(400, "'store' must be true or false", param="store")
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def extra(self) -> dict:
        """Top-level fields every response of this request carries besides OpenAI's."""
        return {"conversation_id": self.conversation_id} if self.conversation_id else {}


def _answers(req: _Request, settings: Settings, registry, store,
             conversations: Conversations) -> Iterator[tuple[rag.Answer | None, str, str]]:
    """(snapshot, reasoning, content) as the answer grows; the last is final. A stored conversation gets the
    finished turn when the last snapshot is taken, before the response (or the stream's last chunk) that
    carries its id is sent."""
    question = req.messages[-1]["content"]
    if not req.retrieval:
        text = ""
        messages = [m for m in req.messages if m["role"] != "tool"]
        if req.conversation is not None:  # the system message as sent, then the stored turns, then the question
            messages = [*(m for m in messages if m["role"] == "system"), *req.conversation.history(), messages[-1]]
        pieces = registry.stream(messages, req.model, req.generation)
        try:
            for piece in pieces:
                text += piece
                yield None, "", text
        finally:
            pieces.close()
        if req.conversation_id is not None:
            _save(conversations, req, Turn(question=question, answer=text, status="chat", variant=req.model))
        return
    prior = req.conversation.history() if req.conversation is not None else rag.text_history(req.messages[:-1])
    final = None
    for final in rag.answer(question, prior, registry=registry, store=store, variant=req.model, style=req.style,
                            generation=req.generation, settings=settings):
        reasoning, content = streamable(final, req.style)
        yield final, reasoning, content
    if req.conversation_id is not None:
        _save(conversations, req, Turn.from_answer(final, req.model, req.style))


def _save(conversations: Conversations, req: _Request, turn: Turn) -> None:
    try:
        conversations.append_turn(req.conversation_id, turn, req.user)
    except KeyError:  # deleted (in the Chat tab) while this answer was generated
        raise APIError(404, f"conversation '{req.conversation_id}' was deleted meanwhile; the turn was not saved",
                       param="conversation_id", code="conversation_not_found") from None


def _error_for(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, LLMServerError):
        return APIError(502, str(exc), kind="api_error", code="model_server_error")
    if isinstance(exc, KeyError):  # an adapter deleted between the check and the generation
        return APIError(404, str(exc).strip("'\""), code="model_not_found")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    log.exception("answering failed")
    return APIError(500, f"answering failed: {type(exc).__name__}", kind="api_error")


def _chunk(req: _Request, delta: dict, finish: str | None = None, **extra) -> str:
    record = {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model,
              "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(record, ensure_ascii=False)}\n\n"


def _stream(req: _Request, answers: Iterator) -> Iterator[str]:
    sent_reasoning = sent_content = content = ""
    last = None
    yield _chunk(req, {"role": "assistant", "content": ""})
    try:
        for last, reasoning, content in answers:
            delta = {}
            if reasoning.startswith(sent_reasoning) and len(reasoning) > len(sent_reasoning):
                delta["reasoning_content"], sent_reasoning = reasoning[len(sent_reasoning):], reasoning
            if content.startswith(sent_content) and len(content) > len(sent_content):
                delta["content"], sent_content = content[len(sent_content):], content
            if delta:
                yield _chunk(req, delta)
        if not content.startswith(sent_content) and not sent_content.startswith(content):
            # The evidence check replaced the answer (it stated a figure no passage holds): deltas cannot take
            # back what was sent, so the replacement follows it after a blank line, and the last chunk's
            # `answer` is the replacement alone (`model_answer` the model's own).
            yield _chunk(req, {"content": "\n\n" + content})
    except Exception as exc:  # headers are sent: the error goes in the stream, as OpenAI's does
        yield f"data: {json.dumps(_error_for(exc).body(), ensure_ascii=False)}\n\n"
        return
    finally:
        answers.close()
    yield _chunk(req, {}, "stop", **evidence_fields(last), **req.extra())
    yield "data: [DONE]\n\n"


def _complete(req: _Request, answers: Iterator) -> dict:
    last, reasoning, content = None, "", ""
    try:
        for last, reasoning, content in answers:
            pass
    finally:
        answers.close()
    message = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": req.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **evidence_fields(last), **req.extra()}


def api_router(settings: Settings, registry, store, conversations: Conversations | None = None) -> APIRouter:
    """The /v1 routes, for `app.include_router` on the FastAPI app the Gradio page is mounted on. Stored
    conversations go to `conversations` (default: settings.conversations_db, the Chat tab's)."""
    router = APIRouter(prefix="/v1")
    conversations = conversations or Conversations(settings.conversations_db)

    @router.get("/models")
    def list_models(request: Request):
        try:
            check_auth(settings, request.headers.get("authorization"))
        except APIError as exc:
            return exc.response()
        created = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "chatapp"}
                                           for name in registry.variants()]}

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        # Async only to read the body (a bad one gets OpenAI's error shape, not FastAPI's 422); everything
        # that blocks (listing variants, retrieval, generation) runs on the thread pool.
        try:
            check_auth(settings, request.headers.get("authorization"))
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "the body is not valid JSON") from None
            req = await run_in_threadpool(_Request, body, registry, conversations)
            log.info("/v1/chat/completions %s: model %s, %s, retrieval %s, %d messages", req.id, req.model,
                     "streamed" if req.stream else "not streamed", "on" if req.retrieval else "off", len(req.messages))
            answers = _answers(req, settings, registry, store, conversations)
            if req.stream:  # StreamingResponse iterates a plain iterator on the thread pool
                return StreamingResponse(_stream(req, answers), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            return JSONResponse(await run_in_threadpool(_complete, req, answers))
        except Exception as exc:
            return _error_for(exc).response()

    return router
