"""methods/chat.py: the chat message types the tagger, the judge and the chat-model resources share."""

import pytest

from curation_assets.methods import chat, comparative, tagging
from resources import llm


def test_one_parse_error_class_for_methods_and_clients():
    # The clients retry on chat.ParseError; a method's parser must raise that very class.
    assert issubclass(chat.ParseError, ValueError) and llm.ParseError is chat.ParseError
    with pytest.raises(chat.ParseError):
        comparative.parse_pair_scores("I cannot compare these.")
    with pytest.raises(chat.ParseError):
        tagging.parse_tags("no JSON here at all")
    assert chat.Messages == list[dict[str, str]]
