import json

import pytest

from ingest import contracts
from ingest.contracts import ChatLog, Feedback, Message, Rejected, parse_event


def chat(**over) -> ChatLog:
    fields = dict(
        response_id="r1",
        app_id="a",
        user_id="u",
        messages=[Message(role="user", content="hi")],
        response="hello",
        variant="base",
        latency_ms=12.5,
    )
    return ChatLog(**(fields | over))


def test_round_trip_through_json():
    c = chat()
    assert parse_event(c.model_dump_json().encode(), "chat") == c
    f = Feedback(response_id="r1", app_id="a", user_id="u", rating=-1, correction="better")
    assert parse_event(f.model_dump_json().encode(), "feedback") == f


def raw(**over) -> bytes:
    data = json.loads(chat().model_dump_json())
    data.update(over)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"{nope", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (None, "empty value"),
        (raw(schema_version=2), "unknown schema version 2"),
        (raw(schema_version=None), "unknown schema version None"),
        (raw(kind="feedback"), "kind 'feedback' on the chat topic"),
        (raw(rating=1), "schema: rating: Extra inputs are not permitted"),
        (raw(latency_ms=-1), "schema: latency_ms"),
        (raw(messages=[]), "schema: messages"),
        (raw(messages=[{"role": "user", "content": "x"}] * (contracts.MAX_MESSAGES + 1)), "schema: messages"),
        (raw(response="x" * (contracts.MAX_FIELD_CHARS + 1)), "schema: response"),
        (raw(event_id="not-a-uuid"), "schema: event_id"),
        (b"{" + b" " * contracts.MAX_EVENT_BYTES + b"}", "oversize"),
    ],
)
def test_rejections_say_why(value, reason):
    with pytest.raises(Rejected) as e:
        parse_event(value, "chat")
    assert str(e.value).startswith(reason)


def test_rating_must_be_plus_or_minus_one():
    data = json.loads(Feedback(response_id="r", app_id="a", user_id="u", rating=1).model_dump_json())
    data["rating"] = 5
    with pytest.raises(Rejected, match="rating"):
        parse_event(json.dumps(data).encode(), "feedback")
