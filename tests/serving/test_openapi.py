"""Schemathesis against /openapi.json: for every documented operation, generated requests (valid ones and,
with Schemathesis' negative mode, ones that break the schema) get no 5xx, a documented status code, a
documented content type and a body that matches the documented schema; requests without a key or with a
wrong one are refused."""

import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from curation import curate
from curation.config import CurationConfig
from infra.config import Config
from infra.services import ReviewStore
from serving import ids
from serving.config import ServingConfig
from serving.outbox import Outbox
from tests.conftest import serve_in_thread, tiny_generator
from tests.helpers.api import make_app
from tests.helpers.events import chat, rate, store

KEY, ADMIN_KEY = "key-of-app-a", "key-of-the-dpo"


@pytest.fixture(scope="module")
def live(tiny_lm, tmp_path_factory, scrub_pool):
    from infra.db import open_store

    tokenizer, generator = tiny_generator(tiny_lm, queue_depth=8)
    data = tmp_path_factory.mktemp("openapi")
    con = open_store(data / "flywheel.duckdb")
    rated = [chat(f"user-{i}", f"Where is order #{i}?", "It ships tomorrow.") for i in range(4)]
    store(con, rated + [rate(c, 1) for c in rated], scrub_pool.scrub)
    curate.run(con, CurationConfig(max_user_share=1.0))
    cfg = ServingConfig(
        api_keys={"app-a": ids.hash_key(KEY)},
        admin_keys={"dpo": ids.hash_key(ADMIN_KEY)},
        max_tokens=4,
        max_messages=4,
        max_message_chars=2_000,
        max_body_bytes=4_000_000,
        rate_limit_per_s=10_000,
        rate_burst=10_000,
        scrub_cost_per_s=1e9,
        scrub_cost_burst=10**9,
    )
    app = make_app(
        cfg,
        generator=generator,
        tokenizer=tokenizer,
        outbox=Outbox(data / "outbox.sqlite"),
        chats_topic="chats",
        feedback_topic="feedback",
        secret=b"test-secret" * 32,
        route=lambda user: ("base", None),
        review=ReviewStore(con, Config(data_dir=data, serving=cfg)),
    )
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        reply = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        yield {"url": url, "response_id": reply.id}
    generator.close()
    con.close()


EXAMPLES = 200  # per operation and mode (Schemathesis' default is 100)


@pytest.mark.chaos
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_its_contract(live, mode):
    """(`schemathesis.pytest.from_fixture` does not run under pytest 9, so each operation's strategy is driven
    by Hypothesis here.) Every check Schemathesis has for a response runs: no 5xx, documented status, content
    type, headers and body schema; negative data rejected; a missing or wrong key refused."""
    schema = schemathesis.openapi.from_url(live["url"] + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/feedback",
        "GET /v1/models",
        "POST /v1/admin/reviews",
        "POST /v1/admin/forget",
        "POST /v1/admin/command",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    calls = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        inputs = [operation.body, operation.query, operation.headers, operation.path_parameters]
        if mode == GenerationMode.NEGATIVE and not any(len(i) for i in inputs):
            continue  # nothing to break (GET /healthz)
        calls[label] = 0

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            body = case.body
            if case.path == "/v1/feedback" and isinstance(body, dict) and isinstance(body.get("response_id"), str):
                if len(body["response_id"]) % 2 == 0:  # half of them rate a real answer, to reach past the 404
                    body["response_id"] = live["response_id"]
            key = ADMIN_KEY if case.path.startswith("/v1/admin/") else KEY
            auth = {"Authorization": f"Bearer {key}"}
            response = case.call(headers=auth)
            # The schema bounds characters, not tokens: 4 schema-valid messages can tokenize past the tiny model's
            # context, and that one refusal (400, as OpenAI's context-length error) is right for valid data.
            too_long = response.status_code == 400 and "(serving.max_prompt_tokens)" in response.text
            skip = [checks.positive_data_acceptance] if too_long else None
            case.validate_response(response, headers=auth, excluded_checks=skip)
            calls[label] += 1  # noqa: B023 (check runs inside the iteration that defines it)

        check()
    print(f"\nschemathesis {mode.value}: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    assert all(calls.values()), calls


def test_the_schema_documents_errors_and_the_key():
    """What the contract test relies on: errors in OpenAI's shape, the Bearer scheme, no 422 (bad input is 400)."""
    from fastapi.testclient import TestClient

    app = make_app(ServingConfig())
    doc = TestClient(app, base_url="http://127.0.0.1").get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = ("/v1/chat/completions", "/v1/feedback", "/v1/models", "/v1/admin/forget", "/v1/admin/reviews")
    for path in (*paths, "/v1/admin/command"):
        [operation] = doc["paths"][path].values()
        assert operation["security"] == [{"HTTPBearer": []}], path
        assert operation["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert "422" not in operation["responses"], path
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
