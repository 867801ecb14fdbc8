"""Stage 2 of the pipeline: retrieve up to 60 memories, let the Answer Agent select and answer."""

import uuid

from app.adapters import service as adapters
from app.ask.schemas import AskMemory, AskRequest, AskResponse
from app.core.db import transaction
from app.core.errors import BadUpstreamResponse
from app.core.runtime import Runtime
from app.core.tracing import ANSWER, RETRIEVE, record_completion, tracer
from app.episodes import repository as episodes
from app.episodes.views import view_json
from app.memories import service as memories
from app.memory.answer import answer_question
from app.memory.prompts import ANSWER_PROMPT_VERSION
from app.memory.schemas import as_views
from app.models import Agent
from app.users import service as users


async def ask(runtime: Runtime, tenant_id: uuid.UUID, body: AskRequest) -> AskResponse:
    top_k = body.top_k or runtime.settings.pipeline.answer_top_k
    memories.check_query(body.question, top_k, runtime.settings.limits, "question")
    with tracer.start_as_current_span(RETRIEVE, attributes={"memory_r1.top_k": top_k}) as span:
        [embedding] = await runtime.embedder.embed([body.question])
        async with transaction(runtime.sessions) as db:
            user = await users.require_user(db, tenant_id, body.user_id)
            hits = await memories.retrieve(db, tenant_id, user.id, embedding, top_k)
        span.set_attribute("memory_r1.retrieved", len(hits))
    adapter = await adapters.resolve(runtime, tenant_id, Agent.answer, body.answer_adapter)
    views = as_views([(m.id, m.text, m.speaker, m.occurred_at) for m, _ in hits])
    with tracer.start_as_current_span(ANSWER) as span:
        result = await answer_question(runtime.llm, body.question, views, adapter=adapter)
        record_completion(
            span,
            result.completion,
            **{"memory_r1.selected": len(result.selected), "memory_r1.error": result.error},
        )
    async with transaction(runtime.sessions) as db:
        episode = await episodes.add(
            db,
            tenant_id=tenant_id,
            user_id=user.id,
            agent=Agent.answer,
            prompt_version=ANSWER_PROMPT_VERSION,
            input_={"question": body.question, "memories": [view_json(v) for v in views]},
            completion=result.completion,
            parsed={"selected": [v.key for v in result.selected], "answer": result.answer},
            error=result.error,
            model=runtime.llm.base_model,
        )
    if result.answer is None:
        raise BadUpstreamResponse(
            f"the answer model's output was unusable ({result.error}); episode {episode.id}"
        )
    return AskResponse(
        answer=result.answer,
        memories=[
            AskMemory(id=v.id, text=v.text, speaker=v.speaker, occurred_at=v.occurred_at)
            for v in result.selected
        ],
        retrieved=len(views),
        episode_id=episode.id,
        model=episode.model,
        adapter=episode.adapter,
    )
