from workers.tasks import ingest  # noqa: F401  (registers the tasks)
