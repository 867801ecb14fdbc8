"""The Celery application. Broker: Redis when MEMR1_BROKER_URL says so, else the service's own
Postgres through kombu's SQLAlchemy transport (its tables come from our migrations). Results
are recorded in our own job rows, so there is no result backend."""

import uuid
from functools import lru_cache

from celery import Celery
from celery.signals import worker_init, worker_process_init

from app.core.config import Settings, get_settings
from app.core.db import sync_url
from app.core.tracing import configure_tracing

INGEST_QUEUE = "ingest"
TRAINING_QUEUE = "training"
INGEST_TASK = "memr1.ingest"
TRAIN_TASK = "memr1.train"


def broker_url(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    if not settings.database_url:
        raise RuntimeError("set MEMR1_BROKER_URL or MEMR1_DATABASE_URL for the task queue")
    return "sqla+" + sync_url(settings.database_url)


def create_celery(settings: Settings) -> Celery:
    celery = Celery("memory_r1", broker=broker_url(settings), include=["workers.tasks"])
    celery.conf.update(
        task_ignore_result=True,
        # A task whose worker dies is redelivered; tasks are idempotent (they claim a row).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={INGEST_TASK: {"queue": INGEST_QUEUE}, TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


@worker_init.connect  # the solo and threads pools run tasks in the worker itself
@worker_process_init.connect  # prefork: each child (the span exporter survives the fork)
def _trace_worker(**_: object) -> None:
    """The worker's processes export their spans, when tracing is on."""
    configure_tracing(get_settings().tracing)


@lru_cache
def get_celery() -> Celery:
    """The process's Celery app, configured from the settings."""
    return create_celery(get_settings())


def send(celery: Celery, task: str, job_id: uuid.UUID) -> None:
    queue = INGEST_QUEUE if task == INGEST_TASK else TRAINING_QUEUE
    celery.send_task(task, args=[str(job_id)], queue=queue)


def enqueue_ingestion(job_id: uuid.UUID) -> None:
    send(get_celery(), INGEST_TASK, job_id)


def enqueue_training(job_id: uuid.UUID) -> None:
    send(get_celery(), TRAIN_TASK, job_id)
