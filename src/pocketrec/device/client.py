"""The device's side of the fleet service (:mod:`pocketrec.fleet`): fetch a device file fitted to a budget, grow
it later with a delta. numpy and httpx only (no torch), like the rest of the device side.

Nothing is written unless it verifies: the body's SHA-256 against the server's header, the artifact's own
checksum (tensors and manifest) against the header, and, given the signing key, the signature (a safetensors
file's ``signature`` entry; an ONNX file's ``X-Pocketrec-Signature`` header, HMAC-SHA256 of its SHA-256). The
file is written to a temporary name next to OUT and renamed: never a partial file.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketrec.device.np_resize import Delta, DeltaError, apply_delta, save_artifact, write_atomically
from pocketrec.device.runtime import ArtifactError, read_artifact
from pocketrec.device.signing import signature_matches
from pocketrec.extras import require

CLIENT_HINT = "talking to a pocketrec server needs httpx: pip install 'pocketrec[serve]' (or httpx)"
PREFIX = "X-Pocketrec-"


class FetchError(ValueError):
    """The server refused, could not be reached, or sent something that does not verify (one line)."""


@dataclass
class Fetched:
    """A file written by :func:`fetch` or :func:`grow`."""

    path: Path
    nbytes: int
    received: int  #: bytes that came from the server (a delta's, for grow)
    table_bytes: int
    checksum: str
    signature_checked: bool
    cache: str
    seconds: float  #: the whole call: request, verification, write
    http_seconds: float  #: the request alone
    headers: dict[str, str]


def _post(server: str, route: str, body: dict[str, Any], timeout: float, client: Any = None
          ) -> tuple[bytes, dict[str, str], float]:
    """The verified body, the ``X-Pocketrec-`` headers (prefix removed) and the seconds of a POST (on ``client``,
    an ``httpx.Client`` that keeps its connection, when given); :class:`FetchError` else."""
    require(("httpx",), CLIENT_HINT)
    import httpx

    url = server.rstrip("/") + route
    start = time.perf_counter()
    try:
        response = (client or httpx).post(url, json=body, timeout=timeout)
    except httpx.HTTPError as err:
        raise FetchError(f"{url}: {type(err).__name__}: {err}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = " ".join(response.text.split())[:200]
        raise FetchError(f"{url}: {response.status_code} {message}")
    seconds = time.perf_counter() - start
    headers = {k[len(PREFIX):].title(): v for k, v in response.headers.items() if k.lower().startswith(PREFIX.lower())}
    content = response.content
    if hashlib.sha256(content).hexdigest() != headers.get("Sha256"):
        raise FetchError(f"{url}: the response does not match its SHA-256 header (damaged in transit)")
    return content, headers, seconds


def fetch(server: str, model: str, budget: str | int, out: str | Path, user: str | None = None,
          group: int | None = None, fmt: str = "safetensors", key: bytes | None = None,
          timeout: float = 120.0, client: Any = None) -> Fetched:
    """Ask ``server`` for ``model``'s file at ``budget`` (item-table bytes or '5%', '20x', '40KB') for ``user``
    or PEEL user ``group``, and write it at ``out`` once verified (module docstring); ``key``: the signing key,
    which makes the signature required; ``client``: an ``httpx.Client`` to reuse (a new connection costs tens of
    milliseconds: httpx builds a TLS context for every new client)."""
    start = time.perf_counter()
    body: dict[str, Any] = {"model": model, "budget": budget, "format": fmt}
    if user is not None:
        body["user"] = str(user)
    if group is not None:
        body["group"] = int(group)
    content, headers, http_seconds = _post(server, "/v1/artifacts", body, timeout, client)

    def verify(tmp: str) -> None:
        Path(tmp).write_bytes(content)
        if fmt == "onnx":
            checksum = hashlib.sha256(content).hexdigest()
            signature = headers.get("Signature")
        else:
            try:
                _, manifest = read_artifact(tmp, key)
            except ArtifactError as err:
                raise FetchError(f"the file from {server} does not verify: {str(err).split(': ', 1)[-1]}") from None
            checksum, signature = manifest["checksum"], manifest.get("signature")
        if checksum != headers.get("Checksum"):
            raise FetchError(f"the file from {server} does not have the checksum the server announced")
        if key is not None and fmt == "onnx" and not (signature and signature_matches(checksum, signature, key)):
            raise FetchError(f"the ONNX file from {server} is not signed with this key")

    written = write_atomically(Path(out), verify)
    return Fetched(Path(written), int(written.nbytes), len(content), int(headers.get("Table-Bytes", 0)),
                   headers["Checksum"],
                   key is not None, headers.get("Cache", ""), time.perf_counter() - start, http_seconds, headers)


def grow(server: str, artifact: str | Path, budget: str | int, out: str | Path, key: bytes | None = None,
         model: str | None = None, timeout: float = 120.0, client: Any = None) -> Fetched:
    """Grow the elastic file ``artifact`` (fetched from ``server``) to ``budget`` with the server's delta and
    write the result at ``out``: the delta must be for this file, the grown file must have the checksum the
    server announced, and with ``key`` it must carry a signature made with it (the file grown from is checked by
    its checksum: it may have been signed with a key the server has rotated since). ``client``: as for
    :func:`fetch`."""
    start = time.perf_counter()
    try:  # the checksum only: the file may be signed with a key since rotated; the grown file must carry `key`'s
        tensors, manifest = read_artifact(artifact)
    except ArtifactError as err:
        raise FetchError(str(err)) from None
    body: dict[str, Any] = {"base_checksum": manifest["checksum"], "budget": budget}
    if model is not None:
        body["model"] = model
    content, headers, http_seconds = _post(server, "/v1/deltas", body, timeout, client)
    with tempfile.TemporaryDirectory(prefix=".pocketrec-delta-", dir=Path(out).parent) as folder:
        path = Path(folder) / "delta.safetensors"
        path.write_bytes(content)
        try:
            delta = Delta.load(path)
            grown_tensors, grown_manifest = apply_delta(tensors, manifest, delta, key)
        except DeltaError as err:
            raise FetchError(f"the delta from {server} does not verify: {err}") from None
    if grown_manifest["checksum"] != headers.get("Target-Checksum"):
        raise FetchError(f"the grown file does not have the checksum {server} announced")
    written = save_artifact(out, grown_tensors, grown_manifest)
    return Fetched(Path(written), int(written.nbytes), len(content), int(grown_manifest["table_bytes"]),
                   grown_manifest["checksum"], key is not None, headers.get("Cache", ""),
                   time.perf_counter() - start, http_seconds, headers)
