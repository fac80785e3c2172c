"""Event contracts, Kafka source, validation, PII scrubbing and the DuckDB sink."""
