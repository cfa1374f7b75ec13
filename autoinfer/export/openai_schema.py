"""The OpenAI API shapes `autoinfer serve` speaks: requests, responses, stream chunks, errors.

Requests ignore fields they do not know (clients send `user`, `cache_prompt` and the like), but
a known field that would make the server do something other than what the trial measured (sampling,
several choices, stop strings, penalties, tools) is refused with a 400 naming it, never ignored:
a client asking for temperature 0.7 must not silently get greedy text.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

FinishReason = Literal["stop", "length"]
TokenId = Annotated[int, Field(ge=0)]


class APIError(Exception):
    """An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def unsupported(param: str, why: str, where: str | None = None) -> APIError:
    """A 400 for a request field the server does not serve; `where` is the path inside `param`."""
    return APIError(400, f"{where or param}: {why}", param, "unsupported_parameter")


# -- requests ------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    """What both generation routes take."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)  # no effect on greedy decoding: accepted
    seed: int | None = None  # greedy decoding is deterministic: accepted
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Not OpenAI's (vLLM's, llama-server's): named so that they are checked, not silently dropped.
    repetition_penalty: float | None = None
    top_k: int | None = None  # no effect on greedy decoding (the argmax is always kept): accepted
    min_p: float | None = None  # likewise
    # Not OpenAI's (llama-server's and vLLM's): decode past EOS up to max_tokens, as a trial with
    # workload.ignore_eos did; `autoinfer verify` sends the trial's setting.
    ignore_eos: bool = False
    # Not OpenAI's (vLLM's): each choice carries its generated token ids, end token included, which
    # `autoinfer verify` compares with the trial's token for token.
    return_token_ids: bool = False

    def refuse_unmeasured(self) -> None:
        """Refuse what the measured configuration does not do: only its greedy decoding is served."""
        if self.temperature:
            raise unsupported("temperature", "only greedy decoding (temperature 0 or unset) is served, as measured")
        if (self.n or 1) != 1:
            raise unsupported("n", "one choice per request is served")
        if self.stop:
            raise unsupported("stop", "stop sequences are not served; generation ends at the model's end tokens")
        if self.presence_penalty or self.frequency_penalty:
            which = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            raise unsupported(which, "penalties change greedy decoding; not served")
        if self.repetition_penalty not in (None, 1.0):
            raise unsupported("repetition_penalty", "penalties change greedy decoding; not served")
        if self.logit_bias:
            raise unsupported("logit_bias", "a logit bias changes greedy decoding; not served")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unmeasured(self) -> None:
        super().refuse_unmeasured()
        if self.echo:
            raise unsupported("echo", "not served")
        if self.logprobs is not None:
            raise unsupported("logprobs", "not served")
        if self.suffix:
            raise unsupported("suffix", "insertion is not served")
        if (self.best_of or 1) != 1:
            raise unsupported("best_of", "one candidate per request is served")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        """The message's text; text parts joined by newlines (as vLLM joins them)."""
        if isinstance(self.content, str):
            return self.content
        where = f"messages.{index}.content"
        if self.content is None:
            raise APIError(400, f"{where}: missing", "messages", "invalid_value")
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise unsupported("messages", f"{part.type!r} parts are not served, only text", where)
            parts.append(part.text)
        return "\n".join(parts)


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    # Either names the most new tokens (max_completion_tokens is the newer name); unset: the
    # deployment's measured max_new_tokens.
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def refuse_unmeasured(self) -> None:
        super().refuse_unmeasured()
        if self.logprobs:
            raise unsupported("logprobs", "not served")
        if self.tools:
            raise unsupported("tools", "tool calls are not served")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise unsupported("response_format", "only text responses are served")


# -- responses -----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Choice(BaseModel):
    token_ids: list[int] | None = None  # only when the request asks (return_token_ids)

    @model_serializer(mode="wrap")
    def _ids_when_asked(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out, not null, when not asked: a client reading the key's presence sees no ids.
        out: dict[str, Any] = handler(self)
        if out.get("token_ids") is None:
            out.pop("token_ids", None)
        return out


class CompletionChoice(_Choice):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    """A completion, and also each chunk of a streamed one (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's deltas carry only what changed: the final chunk's delta is `{}`.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(_Choice):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "autoinfer"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
