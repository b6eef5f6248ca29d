"""Business logic: validation, ingest, publish and reprocessing. Knows nothing about Celery."""
