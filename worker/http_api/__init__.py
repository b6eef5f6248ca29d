"""The HTTP enqueue API of PRODUCT.md §4b: a thin FastAPI edge over `enqueue_batch_async` (one set of rules)."""

from worker.http_api.app import create_app

__all__ = ["create_app"]
