"""Chat message types shared by the methods that talk to chat models (tagging, TACOS's judge) and
the chat-model resources: plain data, no client code."""

Messages = list[dict[str, str]]


class ParseError(ValueError):
    """The model answered, but not in the expected format."""
