"""What applications import: the producer API (`enqueue_batch`, JSONL) and the consumer API
(`follow_ingested`)."""
