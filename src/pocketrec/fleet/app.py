"""The fleet service: devices ask for a device file fitted to their memory, and get it signed.

Endpoints (``pocketrec serve``; docs/fleet.md):

* ``GET /v1/models``: the models served (name, dataset, family, method, dense and full table bytes, the budgets
  they reach, user groups).
* ``POST /v1/artifacts`` ``{"model", "budget", "user"?, "group"?, "format"?}``: the device file's bytes, with
  the headers of :data:`HEADERS`. Built on the first request (in a worker thread), then kept in the disk cache
  (:class:`~pocketrec.fleet.cache.ArtifactCache`); requests for a file being built wait for that build
  (in-flight deduplication): a thousand devices asking for one budget cause one build.
* ``POST /v1/deltas`` ``{"base_checksum", "budget", "model"?}``: the delta that grows a file this server made
  (named by its checksum) to a larger budget (:func:`~pocketrec.device.np_resize.make_delta`).
* ``GET /healthz``; ``GET /metrics`` (Prometheus text format: :class:`~pocketrec.fleet.metrics.Metrics`).

A bad request answers 4xx with ``{"error": "one line"}``; a build that fails answers 500 the same way and is not
cached (the next request builds again). Neither stops the server.

Budgets are item-table bytes, as everywhere in pocketrec: bytes, or the CLI's strings ('5%', '20x' of the dense
table, '40KB').
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketrec.device.np_resize import make_delta
from pocketrec.device.runtime import read_artifact
from pocketrec.device.signing import sign
from pocketrec.fleet.cache import ArtifactCache
from pocketrec.fleet.metrics import Metrics
from pocketrec.fleet.models import Plan, RequestError, ServedModel, Target

#: response headers of a file or delta (all ``X-Pocketrec-``): ``Sha256`` of the body; ``Checksum`` (the
#: artifact's checksum; an ONNX file's is its SHA-256) and ``Signature`` (HMAC-SHA256 of the checksum, when the
#: server has a key); ``Table-Bytes`` and ``Budget-Bytes``; ``Dtype``; ``Group`` (PEEL); ``Format``; ``Cache``
#: (hit, miss or shared); deltas add ``Base-Checksum`` and ``Target-Checksum``
HEADERS = ("Sha256", "Checksum", "Signature", "Table-Bytes", "Budget-Bytes", "Dtype", "Group", "Format", "Cache",
           "Base-Checksum", "Target-Checksum")
PREFIX = "X-Pocketrec-"
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx"}


class ArtifactRequest(BaseModel):
    """``POST /v1/artifacts``: ``budget`` in bytes or as '5%', '20x', '40KB'; ``user`` (RULE, PEEL) or ``group``
    (PEEL) or neither (RULE: the item table alone)."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    budget: StrictStr | StrictInt
    user: StrictStr | None = None
    group: StrictInt | None = None
    format: Literal["safetensors", "onnx"] = "safetensors"


class DeltaRequest(BaseModel):
    """``POST /v1/deltas``: grow the file of checksum ``base_checksum`` to ``budget``."""

    model_config = ConfigDict(extra="forbid")
    base_checksum: StrictStr
    budget: StrictStr | StrictInt
    model: StrictStr | None = None


class Fleet:
    """One server's state: its models, cache, signing key, worker threads and the builds in flight."""

    def __init__(self, models: dict[str, ServedModel], cache: ArtifactCache, key: bytes | None = None,
                 build_threads: int = 2) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self.models, self.cache, self.key = models, cache, key
        #: part of every cache key: a file cached under another key (or unsigned) is never served as this one's
        self.key_id = hashlib.sha256(key).hexdigest()[:16] if key is not None else "unsigned"
        self.metrics = Metrics()
        self._evictions_seen = 0
        self.pool = ThreadPoolExecutor(max_workers=build_threads, thread_name_prefix="pocketrec-build")
        self._inflight: dict[str, asyncio.Future] = {}

    def model(self, name: str | None) -> ServedModel:
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r}: this server serves {', '.join(sorted(self.models))}")
        return self.models[name]

    def sync_cache_metrics(self) -> None:
        """Bring the cache's gauges and eviction counter up to the cache's own figures (at each scrape)."""
        self.metrics.cache_bytes.set(self.cache.nbytes)
        self.metrics.cache_files.set(len(self.cache))
        self.metrics.evictions.inc(self.cache.evictions - self._evictions_seen)
        self._evictions_seen = self.cache.evictions

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ cache + in-flight deduplication
    async def obtain(self, key: str, kind: str, build: Callable[[], tuple[Path, dict[str, str]]]
                     ) -> tuple[bytes, dict[str, str]]:
        """The bytes and headers of ``key``: from the cache, from the build already running, or built now."""
        key = f"{key}|key={self.key_id}"
        hit = self.cache.get(key)
        if hit is not None:
            self.metrics.cache.labels("hit").inc()
            return hit[0], {**hit[1], "Cache": "hit"}
        task = self._inflight.get(key)
        outcome = "shared"
        if task is None:
            outcome = "miss"
            task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
                self.pool, self._build, key, kind, build))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        content, headers = await asyncio.shield(task)  # a client that hangs up does not cancel the build
        self.metrics.cache.labels(outcome).inc()  # counted once answered: a refused request is no miss
        return content, {**headers, "Cache": outcome}

    def _finished(self, key: str, task: asyncio.Future) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failed build is answered to its waiters, not logged as lost

    def _build(self, key: str, kind: str, build: Callable[[], tuple[Path, dict[str, str]]]
               ) -> tuple[bytes, dict[str, str]]:
        start = time.perf_counter()
        try:
            path, headers = build()
            content = path.read_bytes()
            headers["Sha256"] = hashlib.sha256(content).hexdigest()
            self.cache.put(key, path, headers)
        except RequestError:
            raise
        except Exception:
            self.metrics.build_failures.labels(kind).inc()
            raise
        self.metrics.builds.labels(kind).inc()
        self.metrics.build_seconds.labels(kind).observe(time.perf_counter() - start)
        return content, headers

    # ------------------------------------------------------------------ builds (worker threads)
    def _scratch(self, suffix: str) -> Path:
        return self.cache.scratch / f"{uuid.uuid4().hex}{suffix}"

    def _write(self, model: ServedModel, plan: Plan, fmt: str) -> tuple[Path, dict[str, str]]:
        """Write ``plan``'s file into the scratch folder; its headers; safetensors files are verified and
        recorded (to grow them later)."""
        path = self._scratch(SUFFIXES[fmt])
        try:
            model.write(plan, path, fmt, self.key)
            if fmt == "safetensors":
                _, manifest = read_artifact(path, self.key)  # what the device will check, checked first
                checksum, signature = manifest["checksum"], manifest.get("signature")
                self.cache.remember(checksum, plan.record())
            else:
                checksum = hashlib.sha256(path.read_bytes()).hexdigest()
                signature = sign(checksum, self.key) if self.key is not None else None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        headers = {"Checksum": checksum, "Table-Bytes": str(plan.table_bytes), "Budget-Bytes": str(plan.budget_bytes),
                   "Dtype": plan.dtype, "Format": fmt}
        if signature is not None:
            headers["Signature"] = signature
        if plan.target.group is not None:
            headers["Group"] = str(plan.target.group)
        return path, headers

    def build_artifact(self, model: ServedModel, budget_bytes: int, target: Target, fmt: str
                       ) -> tuple[Path, dict[str, str]]:
        try:
            plan = model.plan(budget_bytes, target)
        except RequestError:
            raise
        except ValueError as err:  # e.g. no precision fits the budget
            raise RequestError(422, str(err)) from None
        return self._write(model, plan, fmt)

    def build_delta(self, model: ServedModel, base: Plan, base_checksum: str, budget_bytes: int
                    ) -> tuple[Path, dict[str, str]]:
        grown = model.grow_plan(base, budget_bytes)
        small, small_headers = self._write(model, base, "safetensors")
        try:
            if small_headers["Checksum"] != base_checksum:
                raise RequestError(409, "the file cannot be rebuilt as it was made (the model was retrained since?): "
                                        "fetch a new file")
            big, big_headers = self._write(model, grown, "safetensors")
            try:
                delta = make_delta(big, small)
                path = delta.save(self._scratch(".safetensors"))
            finally:
                big.unlink(missing_ok=True)
        finally:
            small.unlink(missing_ok=True)
        headers = {"Checksum": delta.manifest["checksum"], "Base-Checksum": base_checksum,
                   "Target-Checksum": delta.target_checksum, "Table-Bytes": str(delta.target_table_bytes),
                   "Budget-Bytes": str(budget_bytes), "Dtype": grown.dtype, "Format": "delta"}
        if "Signature" in big_headers:
            headers["Signature"] = big_headers["Signature"]
        if grown.target.group is not None:
            headers["Group"] = str(grown.target.group)
        return Path(path), headers


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _file(content: bytes, headers: dict[str, str]) -> Response:
    return Response(content, media_type="application/octet-stream",
                    headers={f"{PREFIX}{name}": value for name, value in headers.items()})


async def _answer(work: Callable[[], Any]) -> Response:
    """``await work()``, with a :class:`RequestError` as its 4xx and anything else as a 500 (one-line JSON)."""
    try:
        return await work()
    except RequestError as err:
        return _error(err.status, str(err))
    except Exception as err:  # a failed build: answered, not cached, the server goes on
        return _error(500, f"the build failed: {type(err).__name__}: {err}")


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        if e.get("type") == "json_invalid":
            position = next((p for p in e.get("loc", ()) if isinstance(p, int)), None)
            parts.append("invalid JSON" + (f" at character {position}" if position is not None else ""))
            continue
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "malformed request: " + "; ".join(parts)


def create_app(fleet: Fleet) -> FastAPI:
    """The FastAPI application of ``fleet`` (module docstring)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        fleet.close()

    app = FastAPI(title="pocketrec fleet service", version="1", lifespan=lifespan,
                  description="Device files fitted to each device's memory budget, signed.")
    app.state.fleet = fleet
    metrics = fleet.metrics

    @app.middleware("http")
    async def count(request: Request, call_next: Callable) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:  # unknown route, method
        return _error(err.status_code, f"{err.detail}: {request.method} {request.url.path}")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(fleet.models)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        fleet.sync_cache_metrics()
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [m.info() for _, m in sorted(fleet.models.items())]}

    @app.post("/v1/artifacts")
    async def artifacts(body: ArtifactRequest) -> Response:
        async def work() -> Response:
            model = fleet.model(body.model)
            target = model.target(body.user, body.group)
            budget_bytes = model.budget_bytes(body.budget)
            key = f"artifact|{model.name}|{budget_bytes}|{target.key()}|{body.format}"
            content, headers = await fleet.obtain(
                key, "artifact", lambda: fleet.build_artifact(model, budget_bytes, target, body.format))
            return _file(content, headers)

        return await _answer(work)

    @app.post("/v1/deltas")
    async def deltas(body: DeltaRequest) -> Response:
        async def work() -> Response:
            record = fleet.cache.recall(body.base_checksum)
            if record is None:
                raise RequestError(404, f"this server did not make a file with checksum {body.base_checksum[:16]}"
                                        "...: deltas grow files fetched from it")
            if body.model is not None and body.model != record["model"]:
                raise RequestError(422, f"the file {body.base_checksum[:16]}... is of model {record['model']!r}, "
                                        f"not {body.model!r}")
            model = fleet.model(record["model"])
            base = Plan.from_record(record)
            budget_bytes = model.budget_bytes(body.budget)
            key = f"delta|{body.base_checksum}|{budget_bytes}"
            content, headers = await fleet.obtain(
                key, "delta", lambda: fleet.build_delta(model, base, body.base_checksum, budget_bytes))
            return _file(content, headers)

        return await _answer(work)

    return app


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread for the ``with`` block; yields its base URL (``port=0``:
    a free port). For tests and the demo; ``pocketrec serve`` runs uvicorn in the foreground."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="pocketrec-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
