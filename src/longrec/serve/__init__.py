"""Serving: what runs per request once a model is trained, and the model a server loads.

- `artifact`: `export_run` writes a self-contained, versioned serving folder (model.json, weights.safetensors, the
  vocabularies, the item tables); `load_artifact` checks and loads it as a `ModelArtifact`.
- `versions`: `Versions`, the thread-safe holder of the served versions (build aside, swap the reference).
- `delta`: incremental exchange: `export_delta` / `apply_delta` ship only the changed embedding rows and the dense
  tensors; `DeltaExporter` writes them during training.
- `embedding_cache`: big id tables served from the memory-mapped weights file through an LRU row cache.
- `cache`: `UserStateCache` keeps per-user states (VISTA's summaries, VQL's per-code sums) between requests, keyed by
  user and model version, with an age / new-behaviour refresh policy and LRU eviction.
"""
