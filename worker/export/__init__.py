"""`tunix-ingest export` and `GET /api/export.jsonl` (PRODUCT.md §6c): stored traces as Parquet or JSON Lines.

The selection and the cursor live in `services.export_query` and `services.export_cursor`; this package has the
two formats, the dataset directory (partitions, staging, manifests) and one run from snapshot to manifest.
"""
