"""Serving: what runs per request once a model is trained.

`longrec.serve.cache.UserStateCache` keeps per-user states (VISTA's summaries, VQL's per-code sums) between
requests, keyed by user and model version, with an age / new-behaviour refresh policy and LRU eviction.
"""
