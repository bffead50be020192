"""Encoding and decoding of whole frames: the one place bytes become Structs and back."""

from __future__ import annotations

from typing import Any

import msgspec

from .framing import DEFAULT_MAX_FRAME, encode_frame
from .messages import AnyReply, Call, Hello, Request, Welcome
from .messages import Error as ErrorReply

_encoder = msgspec.msgpack.Encoder()
reply_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyReply)
welcome_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Welcome | ErrorReply)
hello_decoder: msgspec.msgpack.Decoder[Hello] = msgspec.msgpack.Decoder(Hello)


def encode(value: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode any protocol Struct as one frame (length prefix included)."""
    return encode_frame(_encoder.encode(value), max_frame)


def encode_call(call_id: int, req: Request, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return encode(Call(id=call_id, req=req), max_frame)


def major(version: str) -> str:
    return version.split(".", 1)[0]
