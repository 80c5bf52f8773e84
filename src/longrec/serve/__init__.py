"""Serving: `longrec serve` and what it is built from.

- `server` (`open_service`, `run_server`) and `service.ScoringService`: one user, C candidates, one probability each;
  `http` (the FastAPI routes and the request edge), `schema` (request and response bodies), `metrics` (Prometheus),
  `client.Client` (the Python client);
- `history` (+ `events`, `history_sqlite`, `history_redis`, `history_compact`): the online history store;
- `artifact`, `versions`, `delta`, `embedding_cache`: exported models, versions swapped atomically, incremental
  exchange, big tables served from disk behind a hot-row cache;
- `cache.UserStateCache`: VISTA/VQL user states between requests.

docs/serving.md walks through train -> export -> serve -> events -> score -> delta.
"""
