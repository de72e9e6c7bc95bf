"""Queue and process plumbing: the bundled Redis (redis_server), the job queue's client
(jobqueue), the worker's side (worker), readiness, the Prometheus registry (metrics), child
processes that die with their parent (supervise), this machine's facts (host)."""
