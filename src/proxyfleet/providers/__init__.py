"""How a request reaches a provider that speaks another API: the Responses API translated to
Chat Completions and back (pure functions), provider profiles, SSE framing."""

from proxyfleet.providers.request import TranslateOptions, responses_to_chat
from proxyfleet.providers.response import ResponseShape, StreamTranslator, chat_to_response

__all__ = [
    "ResponseShape",
    "StreamTranslator",
    "TranslateOptions",
    "chat_to_response",
    "responses_to_chat",
]
