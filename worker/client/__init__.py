"""What applications import: the producer API (`enqueue_batch`, JSONL), custody of accepted batches until
PostgreSQL holds them, and the consumer API (`follow_ingested`)."""
