"""Cost against history length L: which methods stay flat per candidate, and what does one request cost?

Target attention over the whole history costs O(C·L) per request of C candidates; search (TWIN, DARE)
cuts the attention to K behaviours but still scores all L for every candidate; VISTA and VQL compute a user state
once per user (`user_state`), cache it (`longrec.serve.cache.UserStateCache`) and score candidates from it
(`score_with_state`) at a cost that should not depend on L. This script measures that, on `--threads` CPU threads:

A. Cost vs L, for L in `--lengths` (default 10^2 ... 10^5):
   - inference, one request = one user and C = `--candidates` candidates, built as a server builds it
     (`longrec.search.one_user_request`: C rows viewing one history, no copy), `model.eval()` under
     `torch.no_grad()`: DIN over the full history (in groups of ⌈`--din-rows-x-length` / L⌉ candidates, so its
     [C, L, 80] scorer activations stay bounded); TWIN and DARE `search_stage` (soft search, K = `--k`,
     `search.chunk` auto: the shared history is embedded once and scored against the C queries as one product) then
     `forward` on the K kept; VISTA and VQL split into the one-off `user_state` of the user's history (one row), the
     cache lookup `cache.state_for` on the request when the entry is fresh (a hit: the user is looked up once), and
     `score_with_state` for the C candidates. The per-candidate cost of
     the cached methods is `score_with_state` / C, re-timed at the end in `--score-rounds` rounds that visit every L
     in turn (so a slow spell of the shared machine hits every L alike); the gate: it must not grow by more than 1.2x
     from L = 10^3 to the largest L (PASS/FAIL printed);
   - training, one `train_step` (search + forward + BCE + extra losses + backward + Adam, exactly as the loop runs
     it) on `--train-users` users x `--train-candidates` candidates each; "Adam" is `optimizer.step()` alone (constant
     in L), so step - Adam is forward + backward. A row is skipped when the step at the previous L, scaled linearly
     in L, would exceed `--train-max-seconds` (the reason is printed and stored).
B. One-request latency at L = `--latency-length`, C = `--latency-candidates`: p50 / p99 over `--latency-repeats`
   requests after `--warmup` warm-up requests, for DARE and TWIN (search + attention over K; DARE's target: <= 10 ms
   p50) and VISTA and VQL from the cache (a hit; target <= 3 ms p50), each on the one-user request; for reference
   (`--reference-repeats`): DIN over the full history, the VISTA / VQL cache miss (`user_state` + score), and the
   same request as C contiguous copies of the history (what a collated batch gives: TWIN and DARE then embed and
   score the history once per row, the cache checks every row), so the ratio of the two paths comes from one run.
   Beside each figure: the arithmetic
   floor of that request. FLOPs are counted on the actual path (`torch.utils.flop_counter.FlopCounterMode`: every
   matmul, e.g. DARE's C·L search dot products of width A, then C·K attention and the MLP); bytes are the compulsory
   traffic (the one history's ids and embedding rows read once, the C candidates' rows, the non-embedding weights
   read once, the cached state): floor = max(FLOPs at the measured GEMM rate, bytes at the measured copy bandwidth).
   "Path floor" counts the bytes the implementation must gather as written (DIN, and TWIN and DARE on the copies,
   embed the history once per candidate: C·L rows; on the one-user request TWIN and DARE embed it once and gather
   C·K kept rows). DARE's one-user request is split into embedding the history once (and the C queries), the
   [C, A] x [A, L] score product, the running top-K (`chunked_topk`), gathering the K and attention + MLP over K,
   and profiled (top operators, torch.profiler).
C. A PNG: inference cost per candidate vs L and train-step time vs L (log-log), per method.
Memory (full run): peak RSS growth (VmHWM - VmRSS before, /proc/self/status) of one request and one training step
at the largest L, each in a fresh subprocess (`--no-memory` skips it).

Inputs are synthetic `Batch` tensors (check_batch-valid): items uniform over `--num-items`, a 2-level taxonomy
derived from the item (coarse ids 1..99, fine ids 100..num_categories-1), positions L..1, exponential gaps (mean
1 h) to the target time, full histories. Models are built with their default configs except the data sizes and
`--dim`. Process: `reuse_freed_memory()` (as `longrec train`).

Run:       python benchmarks/bench_scaling.py --update-readme
Quick:     python benchmarks/bench_scaling.py --quick --json /tmp/scaling.json --png /tmp/scaling.png
Re-render: python benchmarks/bench_scaling.py --from-json benchmarks/results/scaling.json --update-readme
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as harness
import torch
from _harness import median_ms, percentile, timings
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from longrec.data.batch import Batch, check_batch, gather_history
from longrec.models import build_model
from longrec.search import history_columns, oldest_first, one_user_request, search_stage
from longrec.search.config import SearchConfig
from longrec.search.exact import chunked_topk
from longrec.serve.cache import UserStateCache
from longrec.train.step import reuse_freed_memory

# name -> (registry name, kind): "full" attends over all L per candidate, "search" runs soft search then K,
# "cached" has user_state / score_with_state.
METHODS: dict[str, tuple[str, str]] = {
    "DIN": ("din", "full"),
    "TWIN": ("twin", "search"),
    "DARE": ("dare", "search"),
    "VISTA": ("vista", "cached"),
    "VQL": ("vql", "cached"),
}
COARSE = 100  # coarse category ids 1..COARSE-1, fine ids COARSE..num_categories-1
TARGET_TIME = 1_700_000_000
GATE = 1.2
LATENCY_TARGETS = {"DARE": 10.0, "VISTA": 3.0, "VQL": 3.0}  # ms, p50


# ------------------------------------------------------------------------------------------------------ inputs
def make_batch(users: int, candidates: int, L: int, args: argparse.Namespace, seed: int = 0) -> Batch:
    """`users` users with a full history of L behaviours each, `candidates` rows (targets) per user: [U·C, L]."""
    g = torch.Generator().manual_seed(seed)
    item = torch.randint(1, args.num_items, (users, L), generator=g)  # [U, L]
    gaps = torch.empty(users, L).exponential_(1 / 3600.0, generator=g) + 1.0  # [U, L] seconds, > 0
    delta = gaps.flip(1).cumsum(1).flip(1)  # [U, L] seconds to the target, oldest largest
    target = torch.randint(1, args.num_items, (users * candidates,), generator=g)  # [U·C]

    def taxonomy(ids: torch.Tensor) -> torch.Tensor:
        fine = COARSE + ids % (args.num_categories - COARSE)  # [...]
        return torch.stack([1 + fine % (COARSE - 1), fine], dim=-1)[..., : args.taxonomy_levels]  # [..., M]

    def per_row(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(candidates, dim=0)  # [U·C, L, ...] contiguous, as collate would give

    return Batch(
        history=per_row(item),
        history_mask=torch.ones(users * candidates, L, dtype=torch.bool),
        target=target,
        label=torch.randint(0, 2, (users * candidates,), generator=g).float(),
        history_category=per_row(taxonomy(item)),
        target_category=taxonomy(target),
        history_time_delta=per_row(delta),
        history_position=torch.arange(L, 0, -1).expand(users * candidates, L).contiguous(),
        target_time=torch.full((users * candidates,), TARGET_TIME),
        user=torch.arange(users).repeat_interleave(candidates),
    )


def rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of every field (views)."""
    return Batch(**{name: value[start:stop] for name, value in batch.fields().items()})


def one_user(copies: Batch) -> Batch:
    """The serving form of a one-user batch (`make_batch(1, C, L)`): row 0's history viewed by all C candidates."""
    targets = {"target": copies.target, "target_category": copies.target_category, "label": copies.label}
    return one_user_request(rows(copies, 0, 1), targets)  # [C, L] expanded views


def build(method: str, args: argparse.Namespace, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        METHODS[method][0],
        num_items=args.num_items,
        num_categories=args.num_categories,
        taxonomy_levels=args.taxonomy_levels,
        dim=args.dim,
    )


def search_config(method: str, args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(method="soft", k=args.k) if METHODS[method][1] == "search" else SearchConfig()


# ------------------------------------------------------------------------------------------------------ timing
def din_request(model: nn.Module, batch: Batch, args: argparse.Namespace) -> Callable[[], Any]:
    """DIN over the full history, candidates in groups of ⌈din_rows_x_length / L⌉ rows."""
    step = max(1, args.din_rows_x_length // batch.history.shape[1])
    return lambda: [model(rows(batch, s, s + step)) for s in range(0, len(batch), step)]


def search_request(model: nn.Module, batch: Batch, search: SearchConfig) -> Callable[[], Any]:
    return lambda: model(search_stage(batch, model, search))


# ------------------------------------------------------------------------------------------------------ part A
def inference_row(
    method: str, L: int, batch: Batch, args: argparse.Namespace, scorers: dict[tuple[str, int], Callable[[], Any]]
) -> dict[str, Any]:
    """One request (one user, C candidates): time per request and per candidate (cached: the three parts).

    Cached methods also leave their `score_with_state` call in `scorers[(method, L)]`, for `interleaved_scores`.
    """
    model = build(method, args).eval()
    kind, C = METHODS[method][1], len(batch)
    row: dict[str, Any] = {"method": method, "L": L, "C": C}
    reps, budget = args.repeats, args.budget
    with torch.no_grad():
        if kind == "full":
            row["request_ms"] = median_ms(din_request(model, batch, args), reps, budget_s=budget)
        elif kind == "search":
            row["request_ms"] = median_ms(
                search_request(model, batch, search_config(method, args)), reps, budget_s=budget
            )
        else:
            user = rows(batch, 0, 1)  # the user's history once
            row["user_state_ms"] = median_ms(lambda: model.user_state(user), reps, budget_s=budget)
            cache = UserStateCache(capacity=1024, max_age_s=3600.0, refresh_after_new=8)
            state = cache.state_for(model, batch, version="v1", now=0.0)  # [C, ...] (a miss: computed once)
            row["cache_hit_ms"] = median_ms(lambda: cache.state_for(model, batch, "v1", now=1.0), reps, budget_s=budget)
            assert cache.refreshes == 0 and cache.misses == 1, "the cache must serve hits here"
            score_reps = max(reps, args.score_repeats)
            scorers[(method, L)] = lambda: model.score_with_state(state, batch)  # [C]
            row["score_ms"] = median_ms(scorers[(method, L)], score_reps, budget_s=budget)
            row["request_ms"] = row["cache_hit_ms"] + row["score_ms"]
            row["miss_per_candidate_us"] = 1e3 * (row["user_state_ms"] + row["score_ms"]) / C
            row["hit_per_candidate_us"] = 1e3 * row["request_ms"] / C
    per = row["score_ms"] if kind == "cached" else row["request_ms"]
    row["per_candidate_us"] = 1e3 * per / C
    return row


def interleaved_scores(
    scorers: dict[tuple[str, int], Callable[[], Any]], rounds: int, repeats: int
) -> dict[tuple[str, int], float]:
    """Median ms of each cached `score_with_state` call, timed in `rounds` rounds that visit every L in turn.

    In sequence, the L = 10^3 and L = 10^5 calls are timed minutes apart, in a process whose heap and neighbours have
    changed in between; alternating them makes a slow spell hit every L alike, so only a cost that grows with L shows.
    """
    times: dict[tuple[str, int], list[float]] = {key: [] for key in scorers}
    with torch.no_grad():
        for _ in range(rounds):
            for key, fn in scorers.items():
                times[key] += timings(fn, repeats)
    return {key: 1e3 * statistics.median(t) for key, t in times.items()}


def train_row(method: str, L: int, args: argparse.Namespace, previous: dict[str, Any] | None) -> dict[str, Any]:
    """One training step on users x candidates rows of length L, or a skip with its reason."""
    row: dict[str, Any] = {"method": method, "L": L, "rows": args.train_users * args.train_candidates}
    if previous is not None and "step_ms" in previous:
        guess = previous["step_ms"] / 1e3 * L / previous["L"]
        if guess > args.train_max_seconds:
            row["skipped"] = (
                f"{guess:.0f} s per step expected (linear in L from {previous['step_ms'] / 1e3:.1f} s at "
                f"L = {previous['L']:,}) > --train-max-seconds {args.train_max_seconds:g}"
            )
            return row
    elif previous is not None and "skipped" in previous:
        row["skipped"] = f"skipped at L = {previous['L']:,} already"
        return row
    batch = make_batch(args.train_users, args.train_candidates, L, args, seed=1)
    trainer = harness.Trainer(build(method, args), search_config(method, args), lr=1e-3)
    row["step_ms"] = 1e3 * statistics.median(trainer.repeat(batch, args.repeats, budget_s=args.budget))
    row["adam_ms"] = median_ms(trainer.optimizer.step, max(args.repeats, 5), budget_s=args.budget)
    return row


# ------------------------------------------------------------------------------------------------------ part B
def weight_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter outside the nn.Embedding tables (read once per request)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return 4 * sum(p.numel() for p in model.parameters() if id(p) not in tables)


def request_bytes(method: str, model: nn.Module, part: str, C: int, L: int, args: argparse.Namespace) -> dict[str, int]:
    """Compulsory bytes of one request ("distinct": each datum once) and what the path as written gathers ("path").

    part: "request" (DIN, TWIN, DARE on the one-user request), "copies" (TWIN, DARE on C copies of the history),
    "score" (from a cached state) or "miss" (user_state + score).
    """
    M, K = args.taxonomy_levels, min(args.k, L)
    ids_h, ids_t = (2 + M) * 8, (1 + M) * 8  # per behaviour: item, M categories, position; per target
    W = weight_bytes(model)
    if method == "DIN":
        ids_h, E = (1 + M) * 8, model.embedding.out_dim
        once, target = L * (ids_h + 4 * E), C * (ids_t + 4 * E)
        return {"distinct": once + target + W, "path": C * once + target + W}
    searched = C if part == "copies" else 1  # how many times search embeds the history
    if method == "TWIN":
        E = model.embedding.out_dim + model.config.dim
        once, target = L * (ids_h + 4 * E), C * (ids_t + 4 * E)
        return {"distinct": once + target + W, "path": searched * once + C * K * (ids_h + 4 * E) + target + W}
    if method == "DARE":
        A = model.attention.embedding.out_dim + (model.config.attention_dim or model.config.dim)
        R = model.representation.embedding.out_dim + model.config.dim
        target = C * (ids_t + 4 * (A + R))
        distinct = L * (ids_h + 4 * A) + min(L, C * K) * 4 * R + target + W
        kept = C * K * (ids_h + 4 * (A + R))
        return {"distinct": distinct, "path": searched * L * (ids_h + 4 * A) + kept + target + W}
    E = model.embedding.out_dim
    if method == "VISTA":
        state, history = model.config.num_summaries * E * 4, L * (ids_h + 2 * 4 * E)  # rows + position rows
    else:
        G, N, d = len(model.config.codebook_sizes), model.code_mask.shape[1], model.config.head_dim
        state, history = G * N * (d + 1) * 4, L * (ids_h + 4 * E)
    target = C * (ids_t + 4 * E)
    extra = history if part == "miss" else 0
    return {"distinct": state + target + W + extra, "path": C * state + target + W + extra}


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def floor_ms(flops: int, nbytes: int, peak: dict[str, float]) -> tuple[float, float, float]:
    """(floor, FLOP time, byte time) in ms: floor = max of the two (perfect overlap)."""
    f = 1e3 * flops / (peak["gflops"] * 1e9)
    b = 1e3 * nbytes / (peak["gbytes_per_s"] * 1e9)
    return max(f, b), f, b


def dare_split(model: nn.Module, batch: Batch, args: argparse.Namespace) -> dict[str, Any]:
    """DARE's one-user request in public pieces: embed the history once and the C queries, the score product, the
    running top-K, gather the K, attend. (The product is one call here; `search_stage` walks it in column chunks once
    [C, L] scores pass `AUTO_CHUNK_BYTES`, which at the default sizes they do not.)"""
    search = search_config("DARE", args)
    L = batch.history.shape[1]
    k = min(args.k, L)
    embed = model.search_embeddings
    one = rows(batch, 0, 1)  # [1, L]: the history once
    reps, budget = args.repeats * 4, args.budget
    query, _ = embed(history_columns(batch, L - 1, L))  # [C, A]
    keys = embed(one)[1][0]  # [L, A]
    scores = query @ keys.T  # [C, L]
    positions, kept = chunked_topk([(0, scores)], batch.history_mask, k)  # [C, K] each
    searched = gather_history(batch, *oldest_first(positions, kept))
    split = {
        "embed_ms": median_ms(lambda: (embed(one), embed(history_columns(batch, L - 1, L))), reps, budget_s=budget),
        "score_ms": median_ms(lambda: query @ keys.T, reps, budget_s=budget),
        "topk_ms": median_ms(
            lambda: chunked_topk([(0, scores)], batch.history_mask, k, best_first=False), reps, budget_s=budget
        ),
        "gather_ms": median_ms(lambda: gather_history(batch, *oldest_first(positions, kept)), reps, budget_s=budget),
        "attend_ms": median_ms(lambda: model(searched), reps, budget_s=budget),
    }
    split["score_gflops"] = 2 * scores.numel() * query.shape[1] / (split["score_ms"] * 1e6)
    from torch.profiler import ProfilerActivity, profile

    request = search_request(model, batch, search)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            request()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    split["top_ops"] = [
        {"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_request": e.count / 3} for e in events[:6]
    ]
    return split


def cached_requests(
    model: nn.Module, batch: Batch, copies: Batch, user: Batch
) -> tuple[Callable[[], Tensor], Callable[[], Tensor], Callable[[], Tensor]]:
    """One request of a cached method three ways: a cache hit on the one-user request (the user looked up once), a
    hit on the C contiguous copies (every row checked against the user's first), and a miss (recomputed)."""
    cache = UserStateCache(capacity=1024, max_age_s=3600.0, refresh_after_new=8)
    cache.state_for(model, batch, version="v1", now=0.0)
    stale = UserStateCache(capacity=8, max_age_s=0.0)  # every lookup is older than 0 s: recomputed
    clock = [0.0]

    def hit() -> Tensor:
        return model.score_with_state(cache.state_for(model, batch, "v1", now=1.0), batch)  # [C]

    def hit_copies() -> Tensor:
        return model.score_with_state(cache.state_for(model, copies, "v1", now=1.0), copies)  # [C]

    def miss() -> Tensor:
        clock[0] += 1.0
        return model.score_with_state(stale.state_for(model, batch, "v1", now=clock[0]), batch)  # [C], recomputed

    return hit, hit_copies, miss


def latency_rows(args: argparse.Namespace, peak: dict[str, float]) -> list[dict[str, Any]]:
    """Part B: one user, C candidates, L behaviours; p50/p99 beside the arithmetic floors."""
    L, C = args.latency_length, args.latency_candidates
    copies = make_batch(1, C, L, args, seed=2)  # [C, L] contiguous: the history copied C times
    batch = one_user(copies)  # [C, L] views of one history: the serving request
    check_batch(batch, ("history_category", "target_category", "history_time_delta"), args.num_items, "request")
    user = rows(batch, 0, 1)
    out = []

    def add(
        label: str,
        method: str,
        part: str,
        fn: Callable[[], Any],
        flops: int,
        reps: int,
        model: nn.Module,
        target: float | None = None,
        **extra: Any,
    ) -> None:
        times = timings(fn, reps, budget_s=math.inf, warmup=args.warmup)
        nbytes = request_bytes(method, model, part, C, L, args)
        floor, flop_ms, byte_ms = floor_ms(flops, nbytes["distinct"], peak)
        path_floor = floor_ms(flops, nbytes["path"], peak)[0]
        p50 = 1e3 * statistics.median(times)
        row = {
            "row": label,
            "method": method,
            "part": part,
            "L": L,
            "C": C,
            "repeats": len(times),
            "p50_ms": p50,
            "p99_ms": 1e3 * percentile(times, 99),
            "target_ms": target,
            "flops": flops,
            "bytes_distinct": nbytes["distinct"],
            "bytes_path": nbytes["path"],
            "floor_ms": floor,
            "flop_ms": flop_ms,
            "byte_ms": byte_ms,
            "path_floor_ms": path_floor,
            **extra,
        }
        out.append(row)
        verdict = "" if target is None else f"  target <= {target:g} ms: {'PASS' if p50 <= target else 'FAIL'}"
        print(
            f"  {label:<42} p50 {p50:9.2f} ms  p99 {row['p99_ms']:9.2f} ms  floor {floor:7.3f} ms "
            f"({p50 / floor:6.0f}x)  path floor {path_floor:7.2f} ms{verdict}",
            flush=True,
        )

    with torch.no_grad():
        for method in ("DIN", "TWIN", "DARE"):
            model = build(method, args).eval().requires_grad_(False)  # (FlopCounterMode's module hooks)
            if method == "DIN":
                fn = din_request(model, batch, args)
                add("DIN, full history", method, "request", fn, count_flops(fn), args.reference_repeats, model)
                continue
            search = search_config(method, args)
            fn, slow = search_request(model, batch, search), search_request(model, copies, search)
            extra = {"split": dare_split(model, batch, args)} if method == "DARE" else {}
            label = f"{method}, search + attention over K = {args.k}"
            reps = args.latency_repeats
            add(label, method, "request", fn, count_flops(fn), reps, model, LATENCY_TARGETS.get(method), **extra)
            add(f"{label}, C copies", method, "copies", slow, count_flops(slow), args.reference_repeats, model)
        for method in ("VISTA", "VQL"):
            model = build(method, args).eval().requires_grad_(False)
            hit, hit_copies, miss = cached_requests(model, batch, copies, user)
            state = model.user_state(user)  # [1, ...]
            state = state.expand(C, *state.shape[1:])  # [C, ...]
            score_flops = count_flops(lambda m=model, s=state: m.score_with_state(s, batch))
            user_flops = count_flops(lambda m=model: m.user_state(user))
            target = LATENCY_TARGETS[method]
            reps, refs = args.latency_repeats, args.reference_repeats
            add(f"{method}, cache hit + score", method, "score", hit, score_flops, reps, model, target)
            add(f"{method}, cache hit + score, C copies", method, "score", hit_copies, score_flops, refs, model)
            add(
                f"{method}, cache miss: user_state + score", method, "miss", miss, score_flops + user_flops, refs, model
            )
    return out


# ------------------------------------------------------------------------------------------------------ memory
def status_mb() -> dict[str, float]:
    """Current and peak resident set size of this process, MB."""
    text = Path("/proc/self/status").read_text()
    found = {k: re.search(rf"{k}:\s+(\d+) kB", text) for k in ("VmRSS", "VmHWM")}
    return {k: int(m.group(1)) / 1024 if m else math.nan for k, m in found.items()}


def memory_probe(job: dict[str, Any]) -> dict[str, float]:
    """In a fresh process (`harness.in_subprocess`): peak RSS growth (MB) of one request or one training step."""
    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads)
    method, phase, L = job["spec"].split(":")
    L_ = int(L)
    if phase == "infer":
        batch = one_user(make_batch(1, args.candidates, L_, args))
        model = build(method, args).eval()
        kind = METHODS[method][1]
        if kind == "full":
            fn = din_request(model, batch, args)
        elif kind == "search":
            fn = search_request(model, batch, search_config(method, args))
        else:
            user = rows(batch, 0, 1)

            def fn() -> torch.Tensor:
                state = model.user_state(user)  # [1, ...]
                return model.score_with_state(state.expand(len(batch), *state.shape[1:]), batch)  # [C]

        before = status_mb()["VmRSS"]
        with torch.no_grad():
            fn()
    else:
        batch = make_batch(args.train_users, args.train_candidates, L_, args, seed=1)
        trainer = harness.Trainer(build(method, args), search_config(method, args), lr=1e-3)
        before = status_mb()["VmRSS"]
        trainer.step(batch)
    return {"peak_growth_mb": status_mb()["VmHWM"] - before}


def memory_rows(L: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = ("threads", "candidates", "k", "num_items", "num_categories", "taxonomy_levels", "dim", "train_users",
             "train_candidates", "din_rows_x_length")  # fmt: skip
    out = []
    for method in METHODS:
        row: dict[str, Any] = {"method": method, "L": L}
        for phase in ("infer", "train"):
            job = {"spec": f"{method}:{phase}:{L}", "args": {k: getattr(args, k) for k in sizes}}
            try:
                row[f"{phase}_mb"] = harness.in_subprocess(__file__, job)["peak_growth_mb"]
            except RuntimeError as error:
                row[f"{phase}_mb"] = None
                print(f"  memory probe {method}:{phase} failed: {str(error)[-500:]}", flush=True)
        out.append(row)
        print(f"  {method:<6} L={L:,}: peak RSS growth request {row['infer_mb']} MB, train step {row['train_mb']} MB")
    return out


# ------------------------------------------------------------------------------------------------------ report
def growth(rows_: list[dict[str, Any]], method: str, key: str, lo: int, hi: int) -> float | None:
    """cost(hi) / cost(lo) of `key` for `method`, or None when either is missing."""
    a = next((r.get(key) for r in rows_ if r["method"] == method and r["L"] == lo), None)
    b = next((r.get(key) for r in rows_ if r["method"] == method and r["L"] == hi), None)
    return b / a if a and b else None


def gates(inference: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
    lo, hi = 1000, max(lengths)
    out = []
    for method in ("VISTA", "VQL"):
        ratio = growth(inference, method, "per_candidate_us", lo, hi)
        passed = ratio is not None and ratio <= GATE
        out.append({"method": method, "from_L": lo, "to_L": hi, "ratio": ratio, "pass": passed})
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def render_inference(inference: list[dict[str, Any]], lengths: list[int]) -> str:
    hi = max(lengths)
    header = ["per candidate (µs)", *[f"L = {L:,}" for L in lengths], f"x from L = 10³ to {hi:,}"]
    lines = []
    series = [
        (m, "per_candidate_us", m + (" cached: score_with_state" if METHODS[m][1] == "cached" else "")) for m in METHODS
    ]
    series += [(m, "hit_per_candidate_us", f"{m} cached incl. the cache hit") for m in ("VISTA", "VQL")]
    series += [(m, "miss_per_candidate_us", f"{m} miss: (user_state + score) / C") for m in ("VISTA", "VQL")]
    for method, key, label in series:
        cells = [
            fmt(next((r.get(key) for r in inference if r["method"] == method and r["L"] == L), None)) for L in lengths
        ]
        lines.append([label, *cells, fmt(growth(inference, method, key, 1000, hi))])
    return harness.markdown_table(header, lines)


def render_user_side(inference: list[dict[str, Any]], lengths: list[int]) -> str:
    header = ["ms per request", *[f"L = {L:,}" for L in lengths]]
    lines = []
    for method in ("VISTA", "VQL"):
        for key, label in (
            ("user_state_ms", "user_state, once per user"),
            ("cache_hit_ms", "cache hit (state_for)"),
            ("score_ms", "score_with_state, C candidates"),
        ):
            cells = [
                fmt(next((r.get(key) for r in inference if r["method"] == method and r["L"] == L), None))
                for L in lengths
            ]
            lines.append([f"{method} {label}", *cells])
    return harness.markdown_table(header, lines)


def render_training(training: list[dict[str, Any]], lengths: list[int]) -> str:
    header = ["train step (ms)", *[f"L = {L:,}" for L in lengths], "of which Adam (ms)"]
    lines = []
    for method in METHODS:
        cells = []
        for L in lengths:
            r = next((x for x in training if x["method"] == method and x["L"] == L), None)
            cells.append("skipped" if r is None or "skipped" in r else fmt(r["step_ms"]))
        adam = [x["adam_ms"] for x in training if x["method"] == method and "adam_ms" in x]
        lines.append([method, *cells, fmt(statistics.median(adam)) if adam else "—"])
    return harness.markdown_table(header, lines)


def render_latency(latency: list[dict[str, Any]]) -> str:
    header = [
        "request",
        "p50 (ms)",
        "p99 (ms)",
        "repeats",
        "target",
        "MFLOP",
        "MB (distinct)",
        "floor (ms)",
        "p50 / floor",
        "MB (path)",
        "path floor (ms)",
        "p50 / path floor",
    ]
    lines = []
    for r in latency:
        target = (
            "—"
            if r["target_ms"] is None
            else f"≤ {r['target_ms']:g}: {'PASS' if r['p50_ms'] <= r['target_ms'] else 'FAIL'}"
        )
        lines.append(
            [
                r["row"],
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                str(r["repeats"]),
                target,
                fmt(r["flops"] / 1e6, 1),
                fmt(r["bytes_distinct"] / 1e6, 2),
                fmt(r["floor_ms"], 3),
                f"{r['p50_ms'] / r['floor_ms']:,.0f}x",
                fmt(r["bytes_path"] / 1e6, 1),
                fmt(r["path_floor_ms"], 3),
                f"{r['p50_ms'] / r['path_floor_ms']:,.1f}x",
            ]
        )
    return harness.markdown_table(header, lines)


def render_memory(memory: list[dict[str, Any]]) -> str:
    if not memory:
        return ""
    L = memory[0]["L"]
    header = ["method", f"request, L = {L:,} (MB)", f"train step, L = {L:,} (MB)"]
    return harness.markdown_table(header, [[r["method"], fmt(r["infer_mb"], 0), fmt(r["train_mb"], 0)] for r in memory])


def plot(
    inference: list[dict[str, Any]],
    training: list[dict[str, Any]],
    path: Path,
    args: argparse.Namespace,
    lengths: list[int],
) -> None:
    with harness.figure(path, 2, (12, 4.5), f"Cost vs history length, {args.threads} CPU threads") as (left, right):
        colours = dict(zip(METHODS, ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"), strict=True))

        def series(rows_: list[dict[str, Any]], method: str, key: str) -> tuple[list[int], list[float]]:
            pts = [(r["L"], r[key]) for r in sorted(rows_, key=lambda r: r["L"]) if r["method"] == method and key in r]
            return [p[0] for p in pts], [p[1] for p in pts]

        for method in METHODS:
            cached = METHODS[method][1] == "cached"
            x, y = series(inference, method, "per_candidate_us")
            left.plot(x, y, marker="o", color=colours[method], label=method + (" cached (score)" if cached else ""))
            if cached:
                x, y = series(inference, method, "hit_per_candidate_us")
                left.plot(x, y, marker=".", linestyle=":", color=colours[method], label=f"{method} incl. cache hit")
                x, y = series(inference, method, "miss_per_candidate_us")
                left.plot(
                    x, y, marker="x", linestyle="--", color=colours[method], label=f"{method} miss (user_state + score)"
                )
            x, y = series(training, method, "step_ms")
            right.plot(x, y, marker="o", color=colours[method], label=method)
        rows_ = args.train_users * args.train_candidates
        for ax, ylabel, title in (
            (left, "µs per candidate", f"inference, one user x {args.candidates} candidates"),
            (
                right,
                "ms per step",
                f"train step, {args.train_users} users x {args.train_candidates} candidates = {rows_} rows",
            ),
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(lengths, [f"{L:,}" for L in lengths])
            ax.set_xlabel("history length L")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------------ main
def measure(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    lengths = args.lengths = sorted(args.lengths or ([100, 1000, 10_000] if quick else [100, 1000, 10_000, 100_000]))
    args.repeats = args.repeats or (2 if quick else 5)
    args.score_repeats = args.score_repeats or (20 if quick else 100)
    args.score_rounds = args.score_rounds or (2 if quick else 5)
    args.budget = args.budget or (0.5 if quick else 10.0)
    args.latency_repeats = args.latency_repeats or (15 if quick else 200)
    args.reference_repeats = args.reference_repeats or (2 if quick else 30)
    if quick:
        args.warmup = min(args.warmup, 1)
    allocator = "reuse_freed_memory()" if reuse_freed_memory() else "glibc default"
    peak = harness.peaks()
    print(f"peaks on {args.threads} threads: {peak['gflops']:.0f} GFLOP/s GEMM, {peak['gbytes_per_s']:.1f} GB/s copy")

    print("A. cost vs L", flush=True)
    inference: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    scorers: dict[tuple[str, int], Callable[[], Any]] = {}
    for L in lengths:
        batch = one_user(make_batch(1, args.candidates, L, args))
        check_batch(batch, ("history_category", "target_category", "history_time_delta"), args.num_items, "request")
        for method in METHODS:
            r = inference_row(method, L, batch, args, scorers)
            inference.append(r)
            extra = (
                f" (user_state {fmt(r['user_state_ms'])} ms once, cache hit {fmt(r['cache_hit_ms'])} ms, "
                f"score {fmt(r['score_ms'])} ms)"
                if "score_ms" in r
                else ""
            )
            previous = next((t for t in reversed(training) if t["method"] == method), None)
            t = train_row(method, L, args, previous)
            training.append(t)
            step = (
                f"train step {fmt(t['step_ms'])} ms (Adam {fmt(t['adam_ms'])})"
                if "step_ms" in t
                else f"train skipped: {t['skipped']}"
            )
            print(
                f"  L={L:>7,} {method:<6} request {fmt(r['request_ms']):>9} ms, {fmt(r['per_candidate_us']):>8} µs per "
                f"candidate{extra}; {step}",
                flush=True,
            )
        del batch
    print(f"cached score_with_state, interleaved over L ({args.score_rounds} rounds):", flush=True)
    for (method, L), ms in interleaved_scores(scorers, args.score_rounds, args.score_repeats).items():
        r = next(x for x in inference if x["method"] == method and x["L"] == L)
        r["score_ms_in_sequence"], r["score_ms"] = r["score_ms"], ms
        r["request_ms"] = r["cache_hit_ms"] + ms
        r["per_candidate_us"] = 1e3 * ms / r["C"]
        r["hit_per_candidate_us"] = 1e3 * r["request_ms"] / r["C"]
        r["miss_per_candidate_us"] = 1e3 * (r["user_state_ms"] + ms) / r["C"]
        print(f"  {method:<6} L={L:>7,}: {ms:.3f} ms (in sequence {r['score_ms_in_sequence']:.3f} ms)")
    scorers.clear()
    gate = gates(inference, lengths)
    for g in gate:
        print(
            f"gate {g['method']}: per-candidate cost L={g['to_L']:,} / L={g['from_L']:,} = {fmt(g['ratio'])} "
            f"(<= {GATE}): {'PASS' if g['pass'] else 'FAIL'}"
        )

    print(f"B. one request: L = {args.latency_length:,}, C = {args.latency_candidates}", flush=True)
    latency = latency_rows(args, peak)

    memory: list[dict[str, Any]] = []
    if not args.quick and not args.no_memory:
        print("memory: peak RSS growth in fresh processes", flush=True)
        memory = memory_rows(max(lengths), args)
    plot(inference, training, args.png, args, lengths)
    return {"peaks": peak, "allocator": allocator, "png": harness.relative(args.png), "inference": inference,
            "training": training, "gates": gate, "latency": latency, "memory": memory}  # fmt: skip


def render(payload: dict[str, Any]) -> str:
    config, peak, gate = payload["config"], payload["peaks"], payload["gates"]
    inference, training, lengths = payload["inference"], payload["training"], config["lengths"]
    memory = render_memory(payload["memory"])
    gate_text = "; ".join(f"{g['method']} {fmt(g['ratio'])}x ({'PASS' if g['pass'] else 'FAIL'})" for g in gate)
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} "
        + harness.load_line(payload).removesuffix(".")
        + f"; {payload['seconds'] / 60:.1f} min. Allocator: {payload['allocator']}. Synthetic full histories "
        f"({config['num_items']:,} items, {config['taxonomy_levels']}-level taxonomy, dim {config['dim']}, default "
        f"model configs), TWIN/DARE soft search K = {config['k']} (`search.chunk` auto). Inference: one user x C = "
        f"{config['candidates']} candidates, no gradient, the request built by `one_user_request` (C rows viewing one "
        f"history), median of up to {config['repeats']} requests ({config['score_repeats']} for `score_with_state`); "
        f"DIN in groups of ⌈{config['din_rows_x_length']:,} / L⌉ candidates. VISTA / VQL: `user_state` once per "
        "user, `UserStateCache.state_for` on the request (a hit), `score_with_state` for the C candidates; 'per "
        f"candidate' of a cached method = score_with_state / C, timed last, in {config['score_rounds']} rounds of "
        f"{config['score_repeats']} calls that visit every L in turn (the JSON keeps the in-sequence medians too)."
        "\n\n"
        + render_inference(inference, lengths)
        + f"\n\nGate (cached per-candidate cost, L = {max(lengths):,} over L = 10³, at most {GATE}x): {gate_text}."
        "\n\n"
        + render_user_side(inference, lengths)
        + "\n\nTraining: `train_step` (search, forward, BCE + extra losses, backward, fused Adam) on "
        f"{config['train_users']} users x {config['train_candidates']} candidates = "
        f"{config['train_users'] * config['train_candidates']} rows, median of up to {config['repeats']}; 'skipped' = "
        f"the step at the previous L scaled linearly in L exceeds {config['train_max_seconds']:g} s.\n\n"
        + render_training(training, lengths)
        + f"\n\nOne request, L = {config['latency_length']:,}, C = {config['latency_candidates']}: p50 / p99 after "
        f"{config['warmup']} warm-up requests. FLOPs counted on the path (FlopCounterMode); MB (distinct) = the "
        "history's ids and embedding rows once, the candidates' rows, the non-embedding weights and the cached "
        "state; MB (path) = what the path as written gathers (DIN, and TWIN and DARE on C copies: the history "
        "once per candidate; TWIN and DARE on the one-user request: the history once plus C·K kept rows; cached "
        "methods: the state per candidate). 'C copies' rows run the same request on a collated batch holding the "
        f"history C times. Floor = max(FLOPs at {peak['gflops']:.0f} GFLOP/s (1024³ matmul), bytes at "
        f"{peak['gbytes_per_s']:.1f} GB/s (copy)), measured in this run.\n\n"
        + render_latency(payload["latency"])
        + ("\n\nPeak RSS growth (VmHWM over VmRSS before the call, fresh process each):\n\n" + memory if memory else "")
        + f"\n\n![scaling]({harness.readme_link(payload['png'])})"
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "scaling", threads=2, png=True, child=True)
    parser.add_argument("--quick", action="store_true", help="L up to 10^4, few repeats, no memory probes (< 1 min)")
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="history lengths L (default 10^2..10^5)")
    parser.add_argument("--candidates", type=int, default=200, help="C candidates per request in part A")
    parser.add_argument("--k", type=int, default=100, help="behaviours TWIN and DARE keep (soft search)")
    parser.add_argument("--num-items", type=int, default=100_000)
    parser.add_argument("--num-categories", type=int, default=5_000, help="ids shared by the taxonomy levels")
    parser.add_argument("--taxonomy-levels", type=int, default=2, choices=(1, 2))
    parser.add_argument("--dim", type=int, default=16, help="embedding dim D of every model")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per part-A cell (median; default 5)")
    parser.add_argument("--score-repeats", type=int, default=None, help="timed runs of score_with_state (default 100)")
    parser.add_argument("--score-rounds", type=int, default=None, help="interleaved rounds over L (default 5)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per part-A cell before it stops early")
    parser.add_argument("--train-users", type=int, default=4)
    parser.add_argument("--train-candidates", type=int, default=4)
    parser.add_argument("--train-max-seconds", type=float, default=30.0, help="skip a train step expected slower")
    parser.add_argument(
        "--din-rows-x-length", type=int, default=2_000_000, help="DIN scores ⌈this / L⌉ candidates per call"
    )
    parser.add_argument("--latency-length", type=int, default=10_000)
    parser.add_argument("--latency-candidates", type=int, default=200)
    parser.add_argument("--latency-repeats", type=int, default=None, help="requests timed per row (default 200)")
    parser.add_argument("--reference-repeats", type=int, default=None, help="for DIN and cache misses (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests before each part-B row")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "scaling", measure, render, child=memory_probe)
