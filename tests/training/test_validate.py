"""The Manager's frozen answerer on a model server: one reward batch after another, each a
synchronous call, on the same HTTP client."""

import json
import uuid

from app.core.config import LLMBackendKind, LLMSettings
from app.memory.schemas import as_views
from tests.fixtures.vllm_contract_server import Reply, VLLMContractServer, serve_in_thread
from training.validate import ServingAnswerer, decisions_right, open_backend


def test_the_answerer_serves_batch_after_batch_from_a_model_server(tmp_path) -> None:
    vllm = VLLMContractServer(
        base_model="served",
        default_reply=Reply(json.dumps({"selected": ["m1"], "answer": "Lisbon"})),
    )
    memories = as_views([(uuid.uuid4(), "Bob moved to Lisbon.", "Bob", None)])
    with serve_in_thread(vllm.app) as url:
        llm = LLMSettings(
            backend=LLMBackendKind.openai, base_url=url, model="served", max_retries=0
        )
        answerer = ServingAnswerer(open_backend(llm, tmp_path))
        # Each call is a reward batch; HTTP connections opened by the first are reused after.
        batches = [answerer([("Where did Bob move?", memories)] * 2) for _ in range(3)]
        answerer.close()
    assert batches == [["Lisbon", "Lisbon"]] * 3
    assert len(vllm.requests_to("/v1/chat/completions")) == 6


def test_decisions_are_counted_right_in_all_and_by_kind() -> None:
    rows = [
        {"expected_ops": ["ADD"], "decision": "related"},
        {"expected_ops": ["ADD"], "decision": "related"},
        {"expected_ops": ["DELETE", "ADD"], "decision": "end"},
        {"question": "a conv-30 row knows no decision"},
    ]
    decided = [["ADD"], ["UPDATE"], ["ADD", "DELETE"], ["ADD"]]
    assert decisions_right(rows, decided) == {
        "decisions_right": 2 / 3,
        "decisions_right_by_kind": {"end": 1.0, "related": 0.5},
    }
    assert decisions_right(rows[3:], decided[3:]) == {}
