"""The local stack and the bench: throwaway PostgreSQL, Redis and Sentinels, child processes, the sample
generator and the measurements of `tunix-ingest bench`. Used by `run`, the bench and the tests."""
