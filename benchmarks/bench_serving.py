"""Serving under load: QPS and latency of `longrec serve` for DARE and VISTA at L = 10^3 and 10^4, what HTTP + JSON
add to the same request scored in process, and whether model swaps under load fail or mislabel any request.

Data: a synthetic store (`harness.Stores.synthetic`, mechanisms (a) and (f), Protocol T) of `--users` users with
exactly `--events` behaviours each (events_spread 0), so that every user has at least 10^4 behaviours. Every request
is timed at one instant after every behaviour of the store (its newest timestamp + 1, sent as `timestamp`), so a
user's history is its newest L behaviours.

Models: DARE (soft search, K = `--k`, as `bench_scaling.py`'s request) and VISTA (no search), dim 16, otherwise
their default configs, each trained by `harness.train_run` with `data.max_history = L` for `--steps` steps (batch
`--batch-size`, Adam lr `--lr`; accuracy is not the point) and exported with `longrec.serve.artifact.export_run`:
the weights of the last step (last.pt), not the best checkpoint, which a few steps need not move. Training runs in a
child process, so this one (the client and the in-process baseline) keeps no training state (allocator, threads).

Load: for each model and L, and each N in `--workers`, a fresh `longrec serve` process (127.0.0.1, a free port, its
own SQLite history log, `OMP_NUM_THREADS = --threads`) answers an asyncio httpx client with N concurrent workers,
each sending its next request when its previous answer arrived, `--requests` in all after `--warmup` untimed ones
(one worker). A request holds one user drawn Zipf-like (`--zipf` over the users in a seeded random order) and C =
`--candidates` distinct items drawn uniformly from the store's item vocabulary (raw ids); the same list for every
run, bodies encoded before the clock starts. Per request: the latency (send to response read), the status, the
version and the server's own `timings_ms` (history / model / total). QPS = requests / wall time of the run; errors
= non-2xx answers and exceptions, warm-ups included (must be 0). Warm-up requests carry one inline behaviour, so
they bypass the user-state cache (and do not fill it): each run starts cold. VISTA's user-state cache hits are read
from `/metrics` (`longrec_state_cache_hit_ratio` x lookups) after the run.

Baseline, same run: with N = 1 the same requests are also scored in this process by a `ScoringService` on the same
artifact and store (`ScoringService.score`, its own cold cache, the same warm-up; the `ScoreRequest`s parsed
before the clock starts), alternating request by request with the HTTP ones (which goes first alternates too), so
that a slow spell of the shared machine hits both alike; 'vs in-process' = p50 / in-process p50. The scores of the
two are compared request by request.

Swaps under load: DARE at the first L, max(`--workers`) workers, `--swap-requests` requests on a fresh server: when
1/3 of them are answered, the client pushes a delta (`POST /v1/models`, kind delta), at 2/3 a full model. The delta
comes from a real second training run: the base run resumed (`longrec.run.train(..., resume=True)`) for
`--swap-steps` more steps (Adam state carried), `export_delta` of its last weights against the served artifact;
the full model is the run resumed again for `--swap-steps` steps and exported (parent: the delta's version).
Reported: errors, the responses per version, the time each POST took, the sizes (weights, artifact, delta) and the
check that every request that started after a swap's POST returned carries that version or a newer one (start and
end times per request, on the client's clock).

Run:       python benchmarks/bench_serving.py --update-readme       (~12 min on 2 cores)
Quick:     python benchmarks/bench_serving.py --quick --json /tmp/serving.json       (< 2 min)
Re-render: python benchmarks/bench_serving.py --from-json benchmarks/results/serving.json --update-readme
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
import httpx
import numpy as np

from longrec.run import train
from longrec.serve.artifact import export_run
from longrec.serve.delta import export_delta
from longrec.serve.schema import ScoreRequest
from longrec.serve.server import open_service
from longrec.serve.service import ScoringService

logger = logging.getLogger("bench_serving")

# name -> (model table, search table): dim 16, default configs otherwise; DARE's K as bench_scaling.py's request.
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "DARE": ({"name": "dare", "dim": 16}, {"method": "soft"}),
    "VISTA": ({"name": "vista", "dim": 16}, {"method": "none"}),
}
START_S = 120.0  # a server must answer /readyz within this
STOP_S = 15.0
JSON_HEADERS = {"content-type": "application/json"}


# ------------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Traffic:
    """Request bodies (JSON bytes) for the load runs and the swap run, and how they were drawn."""

    requests: list[bytes]
    warmup: list[bytes]  # one inline behaviour each: they bypass the state cache
    swap: list[bytes]
    info: dict[str, Any]


def draw_traffic(store: harness.Store, args: argparse.Namespace) -> Traffic:
    """Zipf-like users (over the users with >= max L behaviours, in a seeded random order), uniform candidates."""
    opened = store.open()
    users, items = opened.vocab("user_id").to_list(), opened.vocab("item_id").to_list()
    lengths = np.diff(opened.offsets)  # [U] behaviours per dense user (row 0 = padding)
    eligible = [users[u - 1] for u in np.flatnonzero(lengths >= max(args.lengths))]
    if not eligible:
        raise ValueError(f"no user has >= {max(args.lengths)} behaviours: raise --events (now {args.events}).")
    now = int(np.max(opened.arrays["timestamp"])) + 1  # after every behaviour
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(eligible))
    weights = 1.0 / np.arange(1, len(eligible) + 1) ** args.zipf
    weights /= weights.sum()

    def bodies(count: int, inline: bool) -> list[bytes]:
        out = []
        for rank in rng.choice(len(eligible), size=count, p=weights):
            chosen = rng.choice(len(items), size=args.candidates, replace=False)
            body: dict[str, Any] = {
                "user": eligible[order[rank]],
                "candidates": [{"item": items[i]} for i in chosen],
                "timestamp": now,
            }
            if inline:
                body["events"] = [{"item": items[int(chosen[0])], "timestamp": now - 1}]
            out.append(json.dumps(body).encode())
        return out

    requests, warmup, swap = bodies(args.requests, False), bodies(args.warmup, True), bodies(args.swap_requests, False)
    distinct = len({json.loads(b)["user"] for b in requests})
    info = {"eligible_users": len(eligible), "items": len(items), "distinct_users": distinct, "timestamp": now}
    return Traffic(requests, warmup, swap, info)


# ------------------------------------------------------------------------------------------------------ models
def run_values(method: str, L: int, job: dict[str, Any], steps: int) -> dict[str, Any]:
    model, search = METHODS[method]
    values = {f"model.{k}": v for k, v in model.items()}
    values |= {f"search.{k}": v for k, v in search.items()}
    if search["method"] != "none":
        values["search.k"] = job["k"]
    return values | {
        "data.path": job["store"],
        "data.max_history": L,
        "train.batch_size": job["batch_size"],
        "train.lr": job["lr"],
        "train.epochs": 1000,  # max_steps stops it
        "train.max_steps": steps,
        "train.threads": job["threads"],
        "train.progress": False,
    }


def version_of(artifact: Path) -> str:
    return str(json.loads((artifact / "model.json").read_text())["version"])


def exported(artifact: Path, **record: Any) -> dict[str, Any]:
    return record | {
        "artifact": str(artifact),
        "version": version_of(artifact),
        "weights_bytes": (artifact / "weights.safetensors").stat().st_size,
        "artifact_bytes": harness.folder_bytes(artifact),
    }


def prepare_models(job: dict[str, Any]) -> dict[str, Any]:
    """In a child process (this one keeps no training state: allocator settings, threads): train and export every
    model, then the swap run's delta and full model. The base run of DARE at the first L is resumed (real training,
    Adam state carried) by `swap_steps` and exported as a delta on the served artifact, then resumed again by as many
    steps and exported in full (parent: the delta's version)."""
    work = Path(job["work"])
    models: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        for L in job["lengths"]:
            values = run_values(method, L, job, job["steps"])
            run = work / "runs" / f"{method}-{L}"
            result = harness.train_run(values, run)
            artifact = export_run(harness.newest_run(run), work / "models" / f"{method}-{L}")
            settings = {k: v for k, v in values.items() if k != "data.path"}
            models[f"{method} {L}"] = exported(artifact, method=method, L=L, settings=settings, steps=result["steps"],
                                               train_seconds=result["seconds"])  # fmt: skip
    L = job["lengths"][0]
    run, steps = work / "runs" / f"DARE-{L}", job["steps"]
    previous = Path(models[f"DARE {L}"]["artifact"])
    swap: dict[str, dict[str, Any]] = {}
    for kind in ("delta", "full"):
        steps += job["swap_steps"]
        result = train(harness.config_from(run_values("DARE", L, job, steps)), run, resume=True)
        trained = harness.newest_run(run)
        artifact = export_run(trained, work / "models" / f"DARE-{L}-{kind}", parent=previous)
        swap[kind] = exported(artifact, steps=result["steps"], train_seconds=result["segments"][-1]["seconds"])
        if kind == "delta":
            delta = export_delta(previous, trained, work / "deltas" / f"DARE-{L}")
            swap[kind] |= {"delta": str(delta), "delta_bytes": harness.folder_bytes(delta)}
        previous = artifact
    return {"models": models, "swap": swap}


# ------------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_S)


@contextlib.contextmanager
def server(artifact: Path, store: Path, folder: Path, threads: int) -> Iterator[str]:
    """`longrec serve` on 127.0.0.1 (a free port; three tries if another process takes it) until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    source = str(harness.ROOT / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": str(threads),
    }
    for attempt in range(3):
        port, log = free_port(), folder / f"server-{attempt}.log"
        command = [
            sys.executable,
            "-m",
            "longrec.cli",
            "--quiet",
            "serve",
            str(artifact),
            "--store",
            str(store),
            "--history-log",
            str(folder / "history.sqlite"),
            "--port",
            str(port),
        ]
        with open(log, "wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_S
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            else:
                tail = log.read_text(errors="replace")[-2000:]
                if process.poll() is not None and "address already in use" in tail.lower():
                    continue
                raise RuntimeError(f"longrec serve did not become ready within {START_S:.0f} s:\n{tail}")
            yield url
            return
        finally:
            stop(process)
    raise RuntimeError("longrec serve found no free port in three tries")


def scrape(client: httpx.Client, name: str) -> float:
    """One unlabelled sample of the server's /metrics."""
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    if found is None:
        raise ValueError(f"/metrics has no sample {name}")
    return float(found.group(1))


# ------------------------------------------------------------------------------------------------------ load
@dataclass
class Outcome:
    """One request as the client saw it (seconds on the client's perf_counter)."""

    started: float
    ended: float
    status: int  # 0: no answer (an exception)
    version: str | None = None
    history_length: int | None = None
    timings_ms: dict[str, float] | None = None
    scores: list[float] | None = None
    error: str | None = None


async def send(client: httpx.AsyncClient, body: bytes) -> Outcome:
    """POST one encoded score request; the latency runs from the send to the response read."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/score", content=body, headers=JSON_HEADERS)
        ended = time.perf_counter()
        answer = response.json()
    except (httpx.HTTPError, ValueError) as err:
        return Outcome(started, time.perf_counter(), 0, error=f"{type(err).__name__}: {err}"[:300])
    if response.status_code != 200:
        return Outcome(started, ended, response.status_code, error=str(answer)[:300])
    return Outcome(started, ended, 200, answer["version"], answer["history_length"], answer["timings_ms"],
                   answer["scores"])  # fmt: skip


def client(url: str, workers: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=workers + 2, max_keepalive_connections=workers + 2)
    return httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits)


async def load(
    url: str,
    bodies: list[bytes],
    workers: int,
    after: Callable[[int, httpx.AsyncClient], Awaitable[None]] | None = None,
) -> tuple[list[Outcome], float]:
    """Send `bodies` from `workers` concurrent workers, each taking the next body when its previous answer arrived;
    `after(answered, client)` runs after each answer. The outcomes in body order, and the wall seconds from the
    first send to the last answer."""
    outcomes: list[Outcome | None] = [None] * len(bodies)
    taken = answered = 0
    async with client(url, workers) as http:

        async def worker() -> None:
            nonlocal taken, answered
            while taken < len(bodies):
                index, taken = taken, taken + 1
                outcomes[index] = await send(http, bodies[index])
                answered += 1
                if after is not None:
                    await after(answered, http)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        wall = time.perf_counter() - started
    return [o for o in outcomes if o is not None], wall


async def paired(url: str, bodies: list[bytes], service: ScoringService) -> tuple[list[Outcome], list[Outcome]]:
    """Each request over HTTP (one at a time) and through `service.score` in this process, alternating which goes
    first, so that a slow spell of the shared machine hits both alike."""
    requests = [ScoreRequest.model_validate_json(b) for b in bodies]  # parsed before the clock starts
    http_out, local_out = [], []
    async with client(url, 1) as http:
        for index, (body, request) in enumerate(zip(bodies, requests, strict=True)):
            for side in (0, 1) if index % 2 == 0 else (1, 0):
                if side == 0:
                    http_out.append(await send(http, body))
                    continue
                started = time.perf_counter()
                answer = service.score(request)
                local_out.append(Outcome(started, time.perf_counter(), 200, answer.version, answer.history_length,
                                         answer.timings_ms, answer.scores))  # fmt: skip
    return http_out, local_out


def summary(
    outcomes: list[Outcome], wall: float | None, name: str, cache: tuple[int, int] | None, warmup: list[Outcome]
) -> dict[str, Any]:
    """A row: QPS (requests / wall; one request at a time: 1 / mean latency), p50 / p99 / mean latency (ms), errors
    (the warm-up's included), the server's p50 split, cache hits / lookups, the history lengths and versions served."""
    ok = [o for o in outcomes if o.status == 200]
    ms = [1e3 * (o.ended - o.started) for o in ok]
    timings = [o.timings_ms for o in ok if o.timings_ms]
    lengths = [o.history_length for o in ok if o.history_length is not None]
    errors = [o for o in [*warmup, *outcomes] if o.status != 200]
    return {
        "client": name,
        "requests": len(outcomes),
        "qps": len(ok) / wall if wall else 1e3 / statistics.fmean(ms),
        "p50_ms": harness.percentile(ms, 50),
        "p99_ms": harness.percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "errors": len(errors),
        "error_samples": sorted({o.error or "" for o in errors})[:5],
        "server_p50_ms": {k: statistics.median(t[k] for t in timings) for k in ("history", "model", "total")},
        "cache_hits": cache[0] if cache else None,
        "cache_lookups": cache[1] if cache else None,
        "history_length": [min(lengths), max(lengths)],
        "versions": dict(Counter(o.version for o in ok)),
    }


def state_cache(url: str, requests: int) -> tuple[int, int]:
    """(hits, lookups) of a server's user-state cache from /metrics. Warm-ups bypass the cache and every measured
    request is one lookup (one known user, no inline behaviour), so lookups = requests."""
    with httpx.Client(base_url=url, timeout=10.0) as http:
        text = http.get("/metrics").text
    found = re.search(r"^longrec_state_cache_hit_ratio (\S+)$", text, re.M)
    if found is None:
        raise ValueError("/metrics has no longrec_state_cache_hit_ratio")
    return round(float(found.group(1)) * requests), requests


def load_runs(model: dict[str, Any], store: Path, traffic: Traffic, args: argparse.Namespace, folder: Path) -> dict:
    """One model's rows: per N in --workers a fresh server (cold cache) answering N workers; N = 1 paired with the
    in-process baseline (a `ScoringService` on the same artifact and store, in this process, its own cold cache)."""
    artifact, cached = Path(model["artifact"]), model["method"] == "VISTA"
    rows, diff = [], None
    for workers in args.workers:
        logger.info("%s L=%d: HTTP x %d", model["method"], model["L"], workers)
        local: list[Outcome] | None = None
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(server(artifact, store, folder / f"server-x{workers}", args.threads))
            warm, _ = asyncio.run(load(url, traffic.warmup, 1))
            if workers == 1:
                (folder / "in-process").mkdir(parents=True, exist_ok=True)
                service = open_service(artifact, store, history_log=folder / "in-process" / "history.sqlite")
                stack.callback(service.history.close)
                for body in traffic.warmup:
                    service.score(ScoreRequest.model_validate_json(body))
                outcomes, local = asyncio.run(paired(url, traffic.requests, service))
                wall = None
                c = service.state_cache
                local_cache = (c.hits, c.hits + c.misses + c.refreshes) if cached else None
            else:
                outcomes, wall = asyncio.run(load(url, traffic.requests, workers))
            cache = state_cache(url, len(outcomes)) if cached else None
        rows.append(summary(outcomes, wall, f"HTTP x {workers}", cache, warm))
        if local is not None:
            rows.append(summary(local, None, "in process", local_cache, []))
            diff = max(float(np.max(np.abs(np.subtract(a.scores or [np.inf], b.scores or [0.0])))) for a, b in
                       zip(outcomes, local, strict=True))  # fmt: skip
    return {"rows": rows, "score_max_abs_diff": diff}


# ------------------------------------------------------------------------------------------------------ swaps
async def swap_load(url: str, bodies: list[bytes], workers: int, pushes: list[dict[str, Any]]) -> dict[str, Any]:
    """Load with a delta pushed when 1/3 of the requests are answered and a full model at 2/3."""
    due = [len(bodies) // 3, 2 * len(bodies) // 3]
    tasks: list[asyncio.Task[None]] = []

    async def push(entry: dict[str, Any], client: httpx.AsyncClient) -> None:
        entry["sent"] = time.perf_counter()
        try:
            response = await client.post("/v1/models", json={"path": str(entry["path"]), "kind": entry["kind"]})
            entry["status"], entry["answer"] = response.status_code, response.json()
        except (httpx.HTTPError, ValueError) as err:
            entry["status"], entry["answer"] = 0, {"error": f"{type(err).__name__}: {err}"}
        entry["returned"] = time.perf_counter()

    async def after(answered: int, client: httpx.AsyncClient) -> None:
        for entry, at in zip(pushes, due, strict=True):
            if answered == at:
                entry["at_request"] = at
                tasks.append(asyncio.create_task(push(entry, client)))

    outcomes, wall = await load(url, bodies, workers, after)
    await asyncio.gather(*tasks)
    return {"outcomes": outcomes, "wall": wall}


def swap_run(base: dict[str, Any], made: dict[str, Any], store: Path, traffic: Traffic, args: argparse.Namespace,
             folder: Path) -> dict[str, Any]:  # fmt: skip
    """The swap run on a fresh server of `base`: the delta pushed at 1/3 of the requests, the full model at 2/3."""
    pushes = [
        {"kind": "delta", "path": made["delta"]["delta"], "expected": made["delta"]["version"]},
        {"kind": "full", "path": made["full"]["artifact"], "expected": made["full"]["version"]},
    ]
    workers = max(args.workers)
    with server(Path(base["artifact"]), store, folder, args.threads) as url:
        warm, _ = asyncio.run(load(url, traffic.warmup, 1))
        result = asyncio.run(swap_load(url, traffic.swap, workers, pushes))
    outcomes: list[Outcome] = result["outcomes"]
    ok = [o for o in outcomes if o.status == 200]
    # every request that started after a push returned must carry that push's version or a newer one (a request
    # that started before a later push returned may already carry the later one)
    order = [base["version"], *(p.get("answer", {}).get("version") for p in pushes)]
    checked = wrong = 0
    for o in ok:
        done = [i for i, p in enumerate(pushes, 1) if p.get("returned", float("inf")) < o.started]
        if done:
            checked += 1
            wrong += o.version not in order[done[-1] :]
    overlapping = [o for o in ok if any(o.started < p["returned"] and o.ended > p["sent"] for p in pushes)]
    return summary(outcomes, result["wall"], f"HTTP x {workers}", None, warm) | {
        "workers": workers,
        "base_version": base["version"],
        "pushes": [
            {
                "kind": p["kind"],
                "at_request": p.get("at_request"),
                "status": p.get("status"),
                "version": p.get("answer", {}).get("version"),
                "expected": p["expected"],
                "post_ms": 1e3 * (p["returned"] - p["sent"]) if "returned" in p else None,
            }
            for p in pushes
        ],
        "started_after_a_swap": checked,
        "wrong_version": wrong,
        "in_flight_during_a_swap": len(overlapping),
        "in_flight_versions": dict(Counter(o.version for o in overlapping)),
    }


# ------------------------------------------------------------------------------------------------------ measure
def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.users, args.events, args.lengths, args.steps, args.swap_steps = 20, 1_200, [1_000], 4, 4
        args.requests, args.warmup, args.swap_requests = 60, 5, 90
    if args.events < max(args.lengths):
        raise ValueError(f"--events ({args.events}) must be >= the largest L ({max(args.lengths)}).")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        started = time.perf_counter()
        store = harness.Stores(args.cache).synthetic(num_users=args.users, events_per_user=args.events,
                                                     events_spread=0.0, impressions_per_user=args.impressions,
                                                     mechanisms=("a", "f"))  # fmt: skip
        traffic = draw_traffic(store, args)
        data = {"counts": store.info["counts"], "prepare_s": time.perf_counter() - started, **traffic.info}
        job = {"store": str(store.path), "work": str(work), "threads": args.threads, "lengths": args.lengths,
               "steps": args.steps, "swap_steps": args.swap_steps, "batch_size": args.batch_size, "lr": args.lr,
               "k": args.k}  # fmt: skip
        logger.info("training and exporting the models (a child process)")
        prepared = harness.in_subprocess(__file__, job)
        models, made = prepared["models"], prepared["swap"]
        rows, diffs = [], {}
        for key, model in models.items():
            runs = load_runs(model, store.path, traffic, args, work / "servers" / key.replace(" ", "-"))
            rows += [row | {"model": key} for row in runs["rows"]]
            diffs[key] = runs["score_max_abs_diff"]
        logger.info("swaps under load")
        base = models[f"DARE {args.lengths[0]}"]
        swap = swap_run(base, made, store.path, traffic, args, work / "servers" / "swap")
    for entry in [*models.values(), *made.values()]:  # paths of this machine
        entry.pop("artifact")
        entry.pop("delta", None)
    swap |= {"models": made, "L": args.lengths[0], "swap_steps": args.swap_steps}
    return {"data": data, "models": models, "rows": rows, "score_max_abs_diff": diffs, "swap": swap,
            "server_threads": args.threads}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ render
def failures(payload: dict[str, Any]) -> list[str]:
    """What must not happen: an error, a response after a swap with the old version, a swap that failed."""
    found = [f"{r['model']} {r['client']}: {r['errors']} errors" for r in payload["rows"] if r["errors"]]
    swap = payload["swap"]
    if swap["errors"]:
        found.append(f"swap run: {swap['errors']} errors")
    if swap["wrong_version"]:
        found.append(f"swap run: {swap['wrong_version']} responses after a swap carried an older version")
    found += [
        f"swap run: the {p['kind']} push answered {p['status']} with version {p['version']} (expected {p['expected']})"
        for p in swap["pushes"]
        if p["status"] != 200 or p["version"] != p["expected"]
    ]
    return found


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def render(payload: dict[str, Any]) -> str:
    config, data, swap = payload["config"], payload["data"], payload["swap"]
    first = next(iter(payload["models"].values()))
    settings = first["settings"]
    head = (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)} The servers, the client and the "
        f"in-process baseline share these cores; each server runs torch with {payload['server_threads']} threads "
        f"(`OMP_NUM_THREADS`), one uvicorn process, requests on its thread pool. Data: synthetic, "
        f"{data['counts']['users']} users x {config['events']:,} behaviours ({data['items']:,} items), prepared in "
        f"{data['prepare_s']:.0f} s; every request at one time after every behaviour. Models: DARE (soft search, K = "
        f"{config['k']}) and VISTA, dim 16, trained with max_history = L for {config['steps']} steps (batch "
        f"{settings['train.batch_size']}, lr {settings['train.lr']}), exported. Requests: one user drawn Zipf "
        f"(a = {config['zipf']}) over {data['eligible_users']} users ({data['distinct_users']} distinct in a run), C "
        f"= {config['candidates']} random items; per run {config['requests']:,} requests after {config['warmup']} "
        f"warm-ups (which bypass the state cache), each run on a fresh server (cold cache); 'HTTP x N' = N "
        f"concurrent asyncio httpx workers in this process. 'in process' = the same requests through "
        f"`ScoringService.score` in this process (same artifact and store, its own cold cache), alternating request "
        f"by request with 'HTTP x 1' (so a slow spell of the shared machine hits both); 'vs in-process' = p50 over "
        f"its p50. QPS = requests / wall time; one request at a time: 1 / mean latency. Server split = the "
        f"server's own `timings_ms` (history read / search + model / total), p50. State-cache hits = hits / "
        f"lookups of VISTA's user-state cache (`longrec_state_cache_hit_ratio` of /metrics; in process its "
        f"counters)."
    )
    header = [
        "model",
        "L",
        "client",
        "requests",
        "QPS",
        "p50 (ms)",
        "p99 (ms)",
        "errors",
        "server p50: history / model / total (ms)",
        "vs in-process",
        "state-cache hits",
        "history length",
    ]
    table = []
    for key, model in payload["models"].items():
        mine = [r for r in payload["rows"] if r["model"] == key]
        base = next((r for r in mine if r["client"] == "in process"), None)
        for r in mine:
            split = r["server_p50_ms"]
            cache = f"{r['cache_hits']} / {r['cache_lookups']}" if r["cache_lookups"] else "—"
            lo, hi = r["history_length"]
            table.append(
                [
                    model["method"],
                    f"{model['L']:,}",
                    r["client"],
                    f"{r['requests']:,}",
                    f"{r['qps']:.1f}",
                    ms(r["p50_ms"]),
                    ms(r["p99_ms"]),
                    str(r["errors"]),
                    " / ".join(ms(split[k]) for k in ("history", "model", "total")),
                    f"{r['p50_ms'] / base['p50_ms']:.2f}x" if base and r is not base else "—",
                    cache,
                    f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}",
                ]
            )
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in payload["score_max_abs_diff"].items() if v is not None)
    parity = f"Scores, HTTP x 1 against in-process, request by request: largest absolute difference {diffs}."
    made = swap["models"]
    delta, full = made["delta"], made["full"]
    base_model = payload["models"][f"DARE {swap['L']}"]
    pushes = [
        [
            p["kind"],
            f"{p['at_request']:,}" if p["at_request"] is not None else "—",
            str(p["status"]),
            f"{p['post_ms']:,.0f}" if p["post_ms"] is not None else "—",
            f"`{p['version']}`",
            f"{made[p['kind']]['steps']}",
        ]
        for p in swap["pushes"]
    ]
    versions = ", ".join(f"`{v}` {n:,}" for v, n in swap["versions"].items())
    in_flight = ", ".join(f"`{v}` {n}" for v, n in swap["in_flight_versions"].items()) or "none"
    swap_text = (
        f"**Swaps under load** (DARE, L = {swap['L']:,}, HTTP x {swap['workers']}, {swap['requests']:,} requests, "
        f"{swap['qps']:.1f} QPS, p50 {ms(swap['p50_ms'])} ms, p99 {ms(swap['p99_ms'])} ms, errors {swap['errors']}). "
        f"Base `{swap['base_version']}` ({base_model['steps']} steps); the delta's run resumes it for "
        f"{swap['swap_steps']} more steps, the full model's for {swap['swap_steps']} more again (Adam state "
        f"carried; the weights of the last step).\n\n"
        + harness.markdown_table(
            ["push", "after request", "status", "POST /v1/models (ms)", "version", "run steps"], pushes
        )
        + f"\n\nResponses per version: {versions}. Requests that started after a swap's POST returned: "
        f"{swap['started_after_a_swap']:,}, of which carried an older version: {swap['wrong_version']}. Requests in "
        f"flight during a POST: {swap['in_flight_during_a_swap']} ({in_flight}). Sizes: weights "
        f"{delta['weights_bytes']:,} B, full artifact {delta['artifact_bytes']:,} B (vocabularies and item tables "
        f"included), delta {delta['delta_bytes']:,} B ({delta['delta_bytes'] / delta['weights_bytes']:.1%} of the "
        f"weights); the full model pushed second: {full['artifact_bytes']:,} B."
    )
    problems = failures(payload)
    verdict = "Checks: " + (
        "; ".join(problems) + ": FAIL."
        if problems
        else "no failed request, every response after a swap carried the new version: PASS."
    )
    return "\n\n".join([head, harness.markdown_table(header, table), parity, swap_text, verdict])


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "serving", threads=2, scratch=True, child=True)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1_000, 10_000], help="L: history lengths served")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 4], help="concurrent client workers per run")
    parser.add_argument("--requests", type=int, default=2_000, help="measured requests per load run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before each run (inline: no cache)")
    parser.add_argument("--swap-requests", type=int, default=3_000, help="requests of the swap run")
    parser.add_argument("--candidates", type=int, default=200, help="C: candidates per request")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the users' request shares")
    parser.add_argument("--users", type=int, default=100, help="users of the synthetic store")
    parser.add_argument("--events", type=int, default=12_000, help="behaviours per user (>= the largest L)")
    parser.add_argument("--impressions", type=int, default=10, help="labelled impressions per user (training)")
    parser.add_argument("--k", type=int, default=100, help="DARE's soft search keeps K behaviours")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each model")
    parser.add_argument("--swap-steps", type=int, default=10, help="more steps for the delta, and again for the full")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request draws")
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 2 min): small store, L = 10^3 only")
    return parser


if __name__ == "__main__":
    args = parser().parse_args()
    payload = harness.main(args, "serving", measure, render, child=prepare_models)
    if args.from_json is None and args.child is None and failures(payload):
        sys.exit(1)
