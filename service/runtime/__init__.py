"""Queue and process plumbing: the RQ connection, the embedded stack, observability."""
