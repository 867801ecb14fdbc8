from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from app.core.config import LLMBackendKind, LLMSettings, Settings, StructuredOutput
from app.core.errors import BadUpstreamResponse, Unprocessable, UnusableOutput, Upstream
from app.llm.backend import validate_adapter_dir
from app.llm.factory import build_backend
from app.llm.openai_compat import OpenAICompatBackend
from tests.fixtures.vllm_contract_server import Reply, VLLMContractServer, serve_on_localhost
from tests.llm.conftest import AdapterDirFactory, BackendFactory
from tests.test_supervise import free_port

MESSAGES = [{"role": "user", "content": "Alice moved to Paris."}]
SCHEMA = {
    "title": "Manager ops",
    "type": "object",
    "properties": {"op": {"enum": ["ADD", "NOOP"]}, "text": {"type": "string"}},
    "required": ["op", "text"],
}
CHAT = "/v1/chat/completions"


class TestComplete:
    async def test_schema_is_sent_as_response_format_and_reply_parsed(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.reply(Reply('{"op": "ADD", "text": "Alice lives in Paris"}', "stop", 40, 9))
        backend = make_backend()

        completion = await backend.complete(MESSAGES, json_schema=SCHEMA, max_tokens=64)

        assert completion.parsed == {"op": "ADD", "text": "Alice lives in Paris"}
        assert (completion.model, completion.adapter) == ("test-base-model", None)
        assert (completion.prompt_tokens, completion.completion_tokens) == (40, 9)
        assert completion.latency_ms > 0
        [sent] = contract_server.requests_to(CHAT)
        assert sent.body == {
            "model": "test-base-model",
            "messages": MESSAGES,
            "temperature": 0.0,
            "max_tokens": 64,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Manager_ops", "schema": SCHEMA, "strict": True},
            },
        }

    @pytest.mark.parametrize(
        ("form", "fields"),
        [
            ("json_object", {"response_format": {"type": "json_object", "schema": SCHEMA}}),
            ("structured_outputs", {"structured_outputs": {"json": SCHEMA}}),
        ],
    )
    async def test_the_schema_goes_in_the_form_the_server_takes(
        self,
        form: str,
        fields: dict[str, object],
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
    ) -> None:
        contract_server.reply('{"op": "ADD", "text": "Alice lives in Paris"}')
        backend = make_backend(structured_output=StructuredOutput(form))

        completion = await backend.complete(MESSAGES, json_schema=SCHEMA, max_tokens=64)

        assert completion.parsed == {"op": "ADD", "text": "Alice lives in Paris"}
        [sent] = contract_server.requests_to(CHAT)
        assert sent.body == {
            "model": "test-base-model",
            "messages": MESSAGES,
            "temperature": 0.0,
            "max_tokens": 64,
            **fields,
        }

    async def test_without_schema_sends_no_response_format_and_parses_nothing(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.reply("Paris.")

        completion = await make_backend().complete(MESSAGES, temperature=0.7)

        assert (completion.text, completion.parsed) == ("Paris.", None)
        [sent] = contract_server.requests_to(CHAT)
        assert "response_format" not in sent.body
        assert sent.body["temperature"] == 0.7

    async def test_adapter_name_is_sent_as_model(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.loras["manager-v2"] = "/adapters/manager-v2"

        completion = await make_backend().complete(MESSAGES, adapter="manager-v2")

        assert completion.adapter == "manager-v2"
        assert completion.model == "test-base-model"
        assert contract_server.requests_to(CHAT)[0].body["model"] == "manager-v2"

    async def test_api_key_is_sent_as_bearer_token(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.api_key = "s3cret"

        await make_backend(api_key="s3cret").complete(MESSAGES)

        assert contract_server.requests[0].headers["authorization"] == "Bearer s3cret"

    async def test_non_json_output_under_schema_is_bad_upstream_response(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.reply("Sure! Here is the JSON you asked for")

        with pytest.raises(UnusableOutput, match="not JSON"):
            await make_backend().complete(MESSAGES, json_schema=SCHEMA)

    async def test_json_cut_at_max_tokens_names_the_limit(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.reply(Reply('{"op": "ADD", "te', finish_reason="length"))

        with pytest.raises(UnusableOutput, match="max_tokens=16"):
            await make_backend().complete(MESSAGES, json_schema=SCHEMA, max_tokens=16)

    async def test_reply_without_choices_is_bad_upstream_response(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        @contract_server.app.post("/v2/chat/completions")
        async def empty() -> dict[str, object]:
            return {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}

        backend = make_backend(base_url="http://vllm.test/v2")

        with pytest.raises(BadUpstreamResponse, match="malformed chat completion"):
            await backend.complete(MESSAGES)


class TestRetries:
    @pytest.mark.parametrize("status", [500, 503, 429])
    async def test_transient_failures_are_retried_until_success(
        self, status: int, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.fail_next(status, status)
        contract_server.reply("recovered")

        completion = await make_backend(max_retries=2).complete(MESSAGES)

        assert completion.text == "recovered"
        assert len(contract_server.requests_to(CHAT)) == 3

    async def test_exhausted_retries_raise_upstream(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.fail_next(500, 502, 503, 500)

        with pytest.raises(Upstream, match=r"3 attempt\(s\).*HTTP 503"):
            await make_backend(max_retries=2).complete(MESSAGES)

        assert len(contract_server.requests_to(CHAT)) == 3

    @pytest.mark.parametrize("status", [400, 401, 404, 422])
    async def test_other_client_errors_are_not_retried(
        self, status: int, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.fail_next(status)

        with pytest.raises(BadUpstreamResponse, match=f"HTTP {status}: injected failure"):
            await make_backend(max_retries=3).complete(MESSAGES)

        assert len(contract_server.requests_to(CHAT)) == 1

    async def test_unknown_model_reports_the_servers_message(
        self, make_backend: BackendFactory
    ) -> None:
        with pytest.raises(BadUpstreamResponse, match="The model `nope` does not exist"):
            await make_backend().complete(MESSAGES, adapter="nope")

    async def test_timeouts_are_retried_then_raise_upstream(
        self, contract_server: VLLMContractServer
    ) -> None:
        contract_server.fail_next(2.0, 2.0)
        async with serve_on_localhost(contract_server.app) as base_url:
            backend = OpenAICompatBackend(
                base_url, "test-base-model", None, 0.2, 1, 16, backoff_s=0.001
            )
            try:
                with pytest.raises(Upstream, match=r"2 attempt\(s\).*ReadTimeout"):
                    await backend.complete(MESSAGES)
            finally:
                await backend.close()

        assert len(contract_server.requests_to(CHAT)) == 2

    async def test_unreachable_server_raises_upstream(self) -> None:
        backend = OpenAICompatBackend(
            f"http://127.0.0.1:{free_port()}/v1", "m", None, 1.0, 2, 16, backoff_s=0.001
        )
        try:
            with pytest.raises(Upstream, match=r"3 attempt\(s\).*ConnectError"):
                await backend.complete(MESSAGES)
        finally:
            await backend.close()


class TestReady:
    async def test_ready_once_the_server_lists_its_models(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        await make_backend().ready()
        assert [r.path for r in contract_server.requests] == ["/v1/models"]

    async def test_a_server_that_is_not_up_is_not_ready_and_asked_once(self) -> None:
        backend = OpenAICompatBackend(
            f"http://127.0.0.1:{free_port()}/v1", "m", None, 1.0, 3, 16, backoff_s=0.001
        )
        try:
            with pytest.raises(Upstream, match=r"1 attempt\(s\).*ConnectError"):
                await backend.ready()
        finally:
            await backend.close()

    async def test_a_server_that_refuses_the_key_is_not_ready(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.api_key = "s3cret"
        with pytest.raises(Upstream, match="HTTP 401"):
            await make_backend(api_key="wrong").ready()


class TestLoadAdapter:
    async def test_validated_adapter_is_loaded_with_vllms_request_body(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = make_adapter_dir(base_model="/models/test-base-model")
        backend = make_backend()

        await backend.load_adapter("manager-v1", str(path))

        [load] = contract_server.requests_to("/v1/load_lora_adapter")
        assert (load.method, load.body) == (
            "POST",
            {"lora_name": "manager-v1", "lora_path": str(path)},
        )
        assert await backend.loaded_adapters() == {"manager-v1"}

    async def test_loading_the_same_path_again_is_a_no_op(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = str(make_adapter_dir())
        backend = make_backend()

        await backend.load_adapter("manager-v1", path)
        await backend.load_adapter("manager-v1", path)

        assert len(contract_server.requests_to("/v1/load_lora_adapter")) == 1

    async def test_loading_a_new_path_under_a_served_name_replaces_it(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        old, new = str(make_adapter_dir("old")), str(make_adapter_dir("new"))
        backend = make_backend()

        await backend.load_adapter("manager", old)
        await backend.load_adapter("manager", new)

        assert contract_server.loras == {"manager": new}
        assert [r.body for r in contract_server.requests_to("/v1/unload_lora_adapter")] == [
            {"lora_name": "manager"}
        ]

    @pytest.mark.parametrize(
        ("config", "reason"),
        [
            ({"peft_type": "PREFIX_TUNING"}, "only LORA"),
            ({"base_model": "Qwen/Qwen2.5-7B-Instruct"}, "trained on 'Qwen/Qwen2.5-7B-Instruct'"),
            ({"r": 32}, "rank 32, above the server limit 16"),
            ({"rank_pattern": {"q_proj": 64}}, "rank 64"),
        ],
    )
    async def test_invalid_adapter_is_rejected_before_calling_the_server(
        self,
        config: dict[str, object],
        reason: str,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = make_adapter_dir(**config)

        with pytest.raises(Unprocessable, match=reason):
            await make_backend(max_lora_rank=16).load_adapter("bad", str(path))

        assert contract_server.requests == []

    async def test_directory_without_adapter_config_is_rejected(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory, tmp_path: Path
    ) -> None:
        with pytest.raises(Unprocessable, match="no adapter_config.json"):
            await make_backend().load_adapter("bad", str(tmp_path))

        assert contract_server.requests == []

    async def test_server_refusal_is_reported_with_its_reason(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = make_adapter_dir()
        contract_server.fail_next(0.0, 400)  # the model list passes, the load is refused

        with pytest.raises(BadUpstreamResponse, match="HTTP 400.*VLLM_ALLOW_RUNTIME_LORA"):
            await make_backend().load_adapter("manager", str(path))

    async def test_an_adapter_lost_in_a_server_restart_is_loaded_again(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = str(make_adapter_dir())
        backend = make_backend()
        await backend.load_adapter("manager", path)
        contract_server.restart()

        completion = await backend.complete(MESSAGES, adapter="manager")

        assert completion.adapter == "manager"
        assert contract_server.loras == {"manager": path}
        chats = contract_server.requests_to(CHAT)
        assert [r.body["model"] for r in chats] == ["manager", "manager"]  # 404, then served
        assert len(contract_server.requests_to("/v1/load_lora_adapter")) == 2

    async def test_an_unloaded_adapter_is_not_loaded_again(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        backend = make_backend()
        await backend.load_adapter("manager", str(make_adapter_dir()))
        await backend.unload_adapter("manager")

        with pytest.raises(BadUpstreamResponse, match="HTTP 404"):
            await backend.complete(MESSAGES, adapter="manager")
        assert len(contract_server.requests_to("/v1/load_lora_adapter")) == 1

    async def test_a_load_the_server_fails_is_not_retried(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        contract_server.fail_next(0.0, 500)  # the model list passes, the load fails

        with pytest.raises(BadUpstreamResponse, match="HTTP 500"):
            await make_backend(max_retries=3).load_adapter("manager", str(make_adapter_dir()))
        assert len(contract_server.requests_to("/v1/load_lora_adapter")) == 1

    async def test_load_whose_reply_was_lost_is_not_reported_as_failed(
        self,
        contract_server: VLLMContractServer,
        make_backend: BackendFactory,
        make_adapter_dir: AdapterDirFactory,
    ) -> None:
        path = str(make_adapter_dir())
        transport = _LosesFirstLoadReply(httpx.ASGITransport(app=contract_server.app))

        await make_backend(transport=transport).load_adapter("manager", path)

        loads = contract_server.requests_to("/v1/load_lora_adapter")
        assert len(loads) == 2  # the retry was refused as "already loaded"
        assert contract_server.loras == {"manager": path}


class _LosesFirstLoadReply(httpx.AsyncBaseTransport):
    """The server handles the first load, but its reply never arrives (a read timeout)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.dropped = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v1/load_lora_adapter" and not self.dropped:
            self.dropped = True
            raise httpx.ReadTimeout("reply lost", request=request)
        return response


class TestUnloadAdapter:
    async def test_unload_posts_the_name_and_drops_it_from_the_list(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.loras = {"a": "/adapters/a", "b": "/adapters/b"}
        backend = make_backend()

        await backend.unload_adapter("a")

        [unload] = contract_server.requests_to("/v1/unload_lora_adapter")
        assert unload.body == {"lora_name": "a"}
        assert await backend.loaded_adapters() == {"b"}

    async def test_unloading_an_adapter_that_is_not_loaded_is_a_no_op(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        await make_backend().unload_adapter("never-loaded")

        assert contract_server.requests_to("/v1/unload_lora_adapter") == []


class TestLoadedAdapters:
    async def test_lists_lora_cards_but_not_the_base_model(
        self, contract_server: VLLMContractServer, make_backend: BackendFactory
    ) -> None:
        contract_server.loras = {"manager-v3": "/a/m3", "answer-v1": "/a/a1"}

        assert await make_backend().loaded_adapters() == {"manager-v3", "answer-v1"}


class TestBuildBackend:
    async def test_openai_settings_build_the_http_backend(self, tmp_path: Path) -> None:
        settings = Settings(
            data_dir=tmp_path,
            llm=LLMSettings(
                backend=LLMBackendKind.openai,
                base_url="http://vllm:8000/v1",
                model="Qwen/Qwen2.5-7B-Instruct",
                api_key=SecretStr("k"),
            ),
        )

        backend = build_backend(settings)
        try:
            assert isinstance(backend, OpenAICompatBackend)
            assert backend.base_model == "Qwen/Qwen2.5-7B-Instruct"
        finally:
            await backend.close()

    def test_a_lora_rank_vllm_refuses_is_refused_in_the_settings(self) -> None:
        with pytest.raises(ValidationError, match="max_lora_rank 24 is not a rank vLLM starts"):
            LLMSettings(backend=LLMBackendKind.openai, max_lora_rank=24)
        assert LLMSettings(backend=LLMBackendKind.openai, max_lora_rank=320).max_lora_rank == 320
        assert LLMSettings(max_lora_rank=24).max_lora_rank == 24  # llama.cpp takes any rank


@pytest.mark.parametrize(
    ("trained_on", "served", "same"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", True),
        ("/models/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", True),
        # A trainer that loaded the model from the Hugging Face cache records the snapshot.
        (
            "/hf-cache/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/a09a35458c702b33",
            "Qwen/Qwen2.5-7B-Instruct",
            True,
        ),
        (
            "/hf-cache/hub/models--Qwen--Qwen2.5-1.5B-Instruct/snapshots/a09a35458c702b33",
            "Qwen/Qwen2.5-7B-Instruct",
            False,
        ),
        ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
    ],
)
def test_an_adapter_is_checked_against_the_model_it_was_trained_on(
    trained_on: str, served: str, same: bool, make_adapter_dir: AdapterDirFactory
) -> None:
    path = make_adapter_dir(base_model=trained_on)
    if same:
        validate_adapter_dir(path, base_model=served, max_lora_rank=64)
    else:
        with pytest.raises(Unprocessable, match="was trained on"):
            validate_adapter_dir(path, base_model=served, max_lora_rank=64)
