"""One tolerant request parser: bytes that are not the expected message become INVALID_ARGUMENT.

grpcio turns an exception raised by a request deserializer into UNKNOWN, naming a Python class,
which reads as a bug in the service. A body that does not decode is the caller's fault, so the
parser never raises: the handler receives an UndecodableRequest and answers with its error.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from .errors import InvalidRequestError

__all__ = ["UndecodableRequest", "parse_request", "tolerant_parser"]

M = TypeVar("M", bound=Message)


class UndecodableRequest:
    """What a handler receives when the request bytes are not the message the rpc takes."""

    __slots__ = ("message_type", "reason", "size")

    def __init__(self, message_type: str, size: int, reason: str) -> None:
        self.message_type = message_type
        self.size = size
        self.reason = reason

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"the request body ({self.size} bytes) is not a valid {self.message_type} message "
            f"({self.reason}); send a serialized {self.message_type}"
        )


def tolerant_parser(message_class: type[M]) -> Callable[[bytes], M | UndecodableRequest]:
    """A request deserializer for grpcio that never raises."""
    full_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> M | UndecodableRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            # protobuf's message ends with the reason after the last ": " (e.g. "Wire format was corrupt").
            return UndecodableRequest(full_name, len(data), str(exc).rsplit(": ", 1)[-1] or "corrupt")

    return parse


def parse_request(message_class: type[M], data: bytes) -> M:
    """Parse raw request bytes (a handler with identity serializers); raises InvalidRequestError."""
    message = tolerant_parser(message_class)(data)
    if isinstance(message, UndecodableRequest):
        raise message.error()
    return message
