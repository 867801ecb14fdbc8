from workers.tasks import ingest, train  # noqa: F401  (registers the tasks)
