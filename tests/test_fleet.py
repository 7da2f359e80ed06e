"""The fleet service end to end: a real uvicorn server on 127.0.0.1 serving a RULE and a PEEL run of a small
synthetic dataset, talked to with a real HTTP client (httpx) and pocketrec's own client: every endpoint, every
bad request answered 4xx in one line without stopping the server, failed builds answered 500 and not cached,
files verified (checksum, signature) before they are written, the disk cache (LRU, restart) and the in-flight
deduplication (many concurrent requests for one file, one build)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import cli_on, one_line_error, synthetic_interactions, train_cf_runs
from pocketrec.cli import app as cli_app
from pocketrec.device.client import FetchError, fetch, grow
from pocketrec.device.runtime import OnnxModel, load, read_artifact
from pocketrec.fleet.app import Fleet, create_app, running
from pocketrec.fleet.cache import ArtifactCache
from pocketrec.fleet.models import ServedModel
from pocketrec.tables.elastic import ElasticTable

KEY = b"fleet-test-key"


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    return train_cf_runs(data, tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def models(runs, data):
    rule, peel = runs
    return {"rule": ServedModel("rule", rule, dataset=data, verify_users=100),
            "peel": ServedModel("peel", peel, dataset=data, verify_users=100)}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The base URL of a running server (module-wide) and its :class:`Fleet`."""
    fleet = Fleet(models, ArtifactCache(tmp_path_factory.mktemp("cache"), 64 << 20), KEY)
    with running(create_app(fleet)) as url:
        yield url, fleet


def post(url: str, route: str, body) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(url + route, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(url + route, json=body, timeout=60)


def metric(url: str, name: str, **labels) -> float:
    """The value of one Prometheus sample of the server's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_health_and_models_list_what_is_served(server, models):
    url, _ = server
    assert httpx.get(url + "/healthz").json() == {"status": "ok", "models": 2}
    listed = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["models"]}
    assert set(listed) == {"rule", "peel"}
    assert listed["rule"]["method"] == "rule" and listed["peel"]["method"] == "peel"
    assert listed["peel"]["user_groups"] == models["peel"].customizer.num_groups == 3
    for name, info in listed.items():
        assert info["family"] == "cf" and info["dataset"] == "synthetic-cf"
        assert info["dense_table_bytes"] == models[name].dense_bytes
        low, high = info["budgets"]["min_table_bytes"], info["budgets"]["max_table_bytes"]
        assert 0 < low < high <= info["dense_table_bytes"] and info["full_table_bytes"] >= high


def test_a_rule_file_for_a_user_is_built_once_then_cached_signed_and_verified(server, data, tmp_path):
    url, fleet = server
    first = fetch(url, "rule", "30%", tmp_path / "a.safetensors", user="u5", key=KEY)
    again = fetch(url, "rule", int(0.3 * fleet.models["rule"].dense_bytes), tmp_path / "b.safetensors", user="u5",
                  key=KEY)  # the same budget in bytes: the same file
    assert (first.cache, again.cache) == ("miss", "hit")
    assert first.path.read_bytes() == again.path.read_bytes() and first.signature_checked
    tensors, manifest = read_artifact(first.path, KEY)
    assert manifest["checksum"] == first.checksum and int(manifest["table_bytes"]) == first.table_bytes
    assert first.table_bytes <= int(0.3 * fleet.models["rule"].dense_bytes)
    items, scores = load(first.path, KEY).recommend_user("u5", k=5)
    assert len(items) == 5 and np.all(np.diff(scores) <= 0)
    seen = set(data.matrix("train")[data.users.encode("u5")].indices)  # the user's own items are excluded
    assert not seen & set(data.items.encode(i) for i in items)
    assert metric(url, "pocketrec_cache_total", outcome="hit") >= 1


def test_peel_files_are_per_group_and_a_user_gets_its_group(server, models, tmp_path):
    url, _ = server
    peel = models["peel"].customizer
    group = peel.group_of("u7")
    by_user = fetch(url, "peel", "20%", tmp_path / "u.safetensors", user="u7", key=KEY)
    by_group = fetch(url, "peel", "20%", tmp_path / "g.safetensors", group=group, key=KEY)
    assert by_user.headers["Group"] == by_group.headers["Group"] == str(group)
    user_tensors, _ = read_artifact(by_user.path)
    group_tensors, _ = read_artifact(by_group.path)
    table = {k: v for k, v in group_tensors.items() if k.startswith("table/")}
    assert table and all(np.array_equal(user_tensors[k], v) for k, v in table.items())  # same blocks, + the user
    assert "table/priority" in table  # resizable on the device
    assert load(by_user.path).recommend_user("u7", k=3)[0]


def test_onnx_files_are_served_and_their_signature_checked(server, tmp_path):
    url, _ = server
    got = fetch(url, "rule", "25%", tmp_path / "m.onnx", user="u3", fmt="onnx", key=KEY)
    assert got.headers["Format"] == "onnx" and got.checksum == hashlib.sha256(got.path.read_bytes()).hexdigest()
    items, _ = OnnxModel(got.path).recommend_user("u3", k=5)
    assert len(items) == 5
    with pytest.raises(FetchError, match="not signed with this key"):
        fetch(url, "rule", "25%", tmp_path / "n.onnx", user="u3", fmt="onnx", key=b"another key")
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("name", ["peel", "rule"])
def test_a_delta_grows_a_fetched_file_and_only_the_added_blocks_travel(server, tmp_path, name):
    from pocketrec.formats.elastic_arrays import decode_mask

    url, fleet = server
    target = {"group": 1} if name == "peel" else {}
    small = fetch(url, name, "12%", tmp_path / "small.safetensors", key=KEY, **target)
    model, dtype = fleet.models[name], small.headers["Dtype"]
    full = ElasticTable.bytes_for(model.group_sizes, np.ones(model.shape, bool), model.block_width, dtype, True)
    middle = (small.table_bytes + full) // 2
    grown = grow(url, small.path, middle, tmp_path / "grown.safetensors", key=KEY)
    tensors, manifest = read_artifact(grown.path, KEY)  # signed by the server: the delta carried the signature
    assert small.table_bytes < grown.table_bytes <= middle and grown.headers["Dtype"] == dtype  # same precision
    assert grown.received < grown.nbytes  # the delta, not the whole file
    masks = [decode_mask(read_artifact(f.path)[0]["table/mask"], *model.shape) for f in (small, grown)]
    assert (masks[1] >= masks[0]).all() and masks[1].sum() > masks[0].sum()  # only blocks added
    if name == "peel":  # a group's priority is one order for every budget: the grown file is the direct build's
        assert np.array_equal(model.customizer.architecture(middle, 1, dtype), masks[1])
    again = grow(url, small.path, middle, tmp_path / "again.safetensors", key=KEY)
    assert again.cache == "hit" and again.checksum == grown.checksum
    # the grown file is a file this server made: it grows again, up to every block
    assert grow(url, grown.path, full, tmp_path / "full.safetensors", key=KEY).table_bytes == full
    with pytest.raises(FetchError, match="422 nothing to add"):
        grow(url, tmp_path / "full.safetensors", model.max_bytes, tmp_path / "more.safetensors", key=KEY)


def test_bad_requests_answer_4xx_in_one_line_and_the_server_goes_on(server):
    url, _ = server
    bad = [
        ("/v1/artifacts", {"model": "nope", "budget": "30%"}, 404, "unknown model 'nope'"),
        ("/v1/artifacts", {"model": "rule", "budget": "30%", "user": "ghost"}, 404, "unknown user 'ghost'"),
        ("/v1/artifacts", {"model": "peel", "budget": "30%", "group": 9}, 404, "unknown user group 9"),
        ("/v1/artifacts", {"model": "peel", "budget": "30%"}, 422, "give a user or a user group"),
        ("/v1/artifacts", {"model": "rule", "budget": "30%", "group": 0}, 422, "has no user groups"),
        ("/v1/artifacts", {"model": "rule", "budget": 10}, 422, "below the smallest rule file"),
        ("/v1/artifacts", {"model": "rule", "budget": "150%"}, 422, "more than 100%"),
        ("/v1/artifacts", {"model": "rule", "budget": "10GB"}, 422, "more than the dense item table"),
        ("/v1/artifacts", {"model": "rule", "budget": "five"}, 422, "cannot read budget"),
        ("/v1/artifacts", {"model": "rule", "budget": "30%", "format": "zip"}, 422, "malformed request: format"),
        ("/v1/artifacts", {"model": "rule", "budget": "30%", "colour": "red"}, 422, "malformed request: colour"),
        ("/v1/artifacts", {"budget": "30%"}, 422, "malformed request: model: Field required"),
        ("/v1/artifacts", b"{not json", 422, "malformed request: invalid JSON at character 1"),
        ("/v1/deltas", {"base_checksum": "0" * 64, "budget": "10%"}, 404, "did not make a file"),
        ("/v1/deltas", {"budget": "10%"}, 422, "base_checksum: Field required"),
    ]
    for route, body, status, message in bad:
        response = post(url, route, body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert message in error and "\n" not in error, (body, error)
    for method, route, status, message in [("GET", "/nope", 404, "Not Found: GET /nope"),
                                           ("GET", "/v1/artifacts", 405, "Method Not Allowed: GET /v1/artifacts")]:
        response = httpx.request(method, url + route)
        assert response.status_code == status and response.json() == {"error": message}
    assert httpx.get(url + "/healthz").status_code == 200
    assert metric(url, "pocketrec_requests_total", route="/v1/artifacts", method="POST", status="404") >= 3


def test_a_delta_must_grow_and_be_for_its_model(server, tmp_path):
    url, _ = server
    small = fetch(url, "rule", "20%", tmp_path / "s.safetensors")
    checksum = small.checksum
    misses = metric(url, "pocketrec_cache_total", outcome="miss")
    smaller = post(url, "/v1/deltas", {"base_checksum": checksum, "budget": "10%"})
    assert smaller.status_code == 422 and "must be above" in smaller.json()["error"]
    assert metric(url, "pocketrec_cache_total", outcome="miss") == misses  # refused, not a cache miss
    other = post(url, "/v1/deltas", {"base_checksum": checksum, "budget": "40%", "model": "peel"})
    assert other.status_code == 422 and "of model 'rule'" in other.json()["error"]


def test_concurrent_requests_for_one_file_cause_one_build(server):
    url, _ = server
    builds = metric(url, "pocketrec_builds_total", kind="artifact")
    body = {"model": "rule", "budget": "17%", "user": "u11"}  # a file nobody asked for yet
    barrier, results = threading.Barrier(16), []

    def ask() -> None:
        barrier.wait()
        results.append(post(url, "/v1/artifacts", body))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 16
    assert len({r.content for r in results}) == 1
    assert metric(url, "pocketrec_builds_total", kind="artifact") == builds + 1
    outcomes = sorted(r.headers["x-pocketrec-cache"] for r in results)
    assert outcomes.count("miss") == 1 and set(outcomes) <= {"miss", "shared", "hit"}


def test_a_failed_build_answers_500_is_not_cached_and_the_next_request_builds(server, monkeypatch):
    url, fleet = server
    model = fleet.models["rule"]
    real, calls = model.write, []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "write", broken_once)
    body = {"model": "rule", "budget": "23%"}
    failed = post(url, "/v1/artifacts", body)
    assert failed.status_code == 500 and failed.json() == {"error": "the build failed: RuntimeError: disk on fire"}
    assert metric(url, "pocketrec_build_failures_total", kind="artifact") >= 1
    retried = post(url, "/v1/artifacts", body)
    assert retried.status_code == 200 and retried.headers["x-pocketrec-cache"] == "miss" and len(calls) == 2
    assert not list(fleet.cache.scratch.iterdir())  # nothing half-built left behind


def test_client_refuses_a_file_that_does_not_verify_and_writes_nothing(server, tmp_path, monkeypatch):
    url, _ = server
    out = tmp_path / "device.safetensors"
    with pytest.raises(FetchError, match="signature mismatch"):
        fetch(url, "rule", "30%", out, key=b"not the server's key")
    real_post = httpx.post

    def tampered(*args, **kwargs):  # a byte flipped in the tensors, the SHA-256 header recomputed to match
        response = real_post(*args, **kwargs)
        content = bytearray(response.content)
        content[-3] ^= 0xFF
        headers = dict(response.headers)
        headers["x-pocketrec-sha256"] = hashlib.sha256(bytes(content)).hexdigest()
        headers.pop("content-length", None)
        return httpx.Response(response.status_code, content=bytes(content), headers=headers)

    monkeypatch.setattr(httpx, "post", tampered)
    with pytest.raises(FetchError, match="does not verify"):
        fetch(url, "rule", "30%", out)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left


def test_the_cache_evicts_least_recently_used_files_and_survives_a_restart(tmp_path):
    cache = ArtifactCache(tmp_path / "c", max_bytes=250)
    for name in "abc":
        path = tmp_path / f"{name}.bin"
        path.write_bytes(name.encode() * 100)
        assert cache.put(name, path, {"Checksum": name})
        if name == "b":
            assert cache.get("a")[0] == b"a" * 100  # a is now the most recently used
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 200 and cache.evictions == 1
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 300)
    assert not cache.put("big", big, {}) and not big.exists()  # larger than the cap: served, not kept
    cache.remember("abc123", {"model": "m"})
    again = ArtifactCache(tmp_path / "c", max_bytes=250)
    assert len(again) == 2 and again.get("c") == (b"c" * 100, {"Checksum": "c"})
    assert again.recall("abc123") == {"model": "m"} and again.recall("other") is None
    with pytest.raises(ValueError, match="cap must be"):
        ArtifactCache(tmp_path / "d", max_bytes=-1)


def test_fetch_and_grow_commands(server, data, monkeypatch, tmp_path):
    url, _ = server
    cli = cli_on(data, monkeypatch)
    key = tmp_path / "key.txt"
    key.write_bytes(KEY + b"\n")
    out = tmp_path / "device.safetensors"
    result = cli.invoke(cli_app, ["fetch", "--server", url, "--model", "peel", "--budget", "10%", "--user", "u2",
                                  "-o", str(out), "--verify-key", str(key)])
    assert result.exit_code == 0, result.output
    assert "signature verified" in result.output and out.exists()
    result = cli.invoke(cli_app, ["grow", str(out), "--server", url, "--budget", "30%", "-o", str(out),
                                  "--verify-key", str(key)])
    assert result.exit_code == 0, result.output
    assert "delta" in result.output and load(out, KEY).table_bytes > 0
    text = one_line_error(cli.invoke(cli_app, ["fetch", "--server", url, "--model", "nope", "--budget", "5%",
                                               "-o", str(tmp_path / "x.safetensors")]))
    assert "404 unknown model 'nope'" in text and not (tmp_path / "x.safetensors").exists()
    text = one_line_error(cli.invoke(cli_app, ["fetch", "--server", "http://127.0.0.1:9", "--model", "rule",
                                               "--budget", "5%", "-o", str(tmp_path / "y.safetensors")]))
    assert "ConnectError" in text


def test_serve_command_starts_the_service_and_refuses_bad_runs(runs, data, monkeypatch, tmp_path):
    import uvicorn

    rule, peel = runs
    cli = cli_on(data, monkeypatch)
    seen = {}

    def run_briefly(app, host, port, log_level):  # instead of serving forever: start it, ask it, stop it
        with running(app, host) as url:
            seen["models"] = httpx.get(url + "/v1/models").json()["models"]

    monkeypatch.setattr(uvicorn, "run", run_briefly)
    result = cli.invoke(cli_app, ["serve", f"small={rule}", str(peel), "--cache-dir", str(tmp_path / "c"),
                                  "--verify-users", "50"])
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in seen["models"]] == ["peel", "small"] and "unsigned" in result.output
    text = one_line_error(cli.invoke(cli_app, ["serve", str(Path(rule).parent / "teacher")]))
    assert "serves runs of `pocketrec compress --method rule`" in text
    text = one_line_error(cli.invoke(cli_app, ["serve", f"a={rule}", f"a={peel}"]))
    assert "two models are called 'a'" in text


def test_a_device_fetches_and_grows_without_torch(server, tmp_path):
    """The device side of the service (client, runtime, deltas) in a fresh process: torch is never imported."""
    import subprocess
    import sys

    url, _ = server
    code = (f"import sys; from pocketrec.device.client import fetch, grow; from pocketrec.device.runtime import load\n"
            f"got = fetch({url!r}, 'peel', '15%', {str(tmp_path / 'd.safetensors')!r}, user='u9', key={KEY!r})\n"
            f"big = grow({url!r}, got.path, '35%', {str(tmp_path / 'd.safetensors')!r}, key={KEY!r})\n"
            "assert big.table_bytes > got.table_bytes and load(big.path, " + repr(KEY) + ").recommend_user('u9', k=3)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_new_signing_key_never_gets_files_cached_under_the_old_one(models, tmp_path):
    """Restarting on the same cache with another key (or unsigned): files are built again, signed with it."""
    cache = tmp_path / "cache"
    with running(create_app(Fleet(models, ArtifactCache(cache), KEY))) as url:
        first = fetch(url, "rule", "30%", tmp_path / "a.safetensors", key=KEY)
    with running(create_app(Fleet(models, ArtifactCache(cache), b"rotated key"))) as url:
        rotated = fetch(url, "rule", "30%", tmp_path / "b.safetensors", key=b"rotated key")
        again = fetch(url, "rule", "30%", tmp_path / "c.safetensors", key=b"rotated key")
        # a file made under the old key still grows: the delta carries the new key's signature
        grown = grow(url, first.path, "45%", tmp_path / "d.safetensors", key=b"rotated key")
    assert (first.cache, rotated.cache, again.cache) == ("miss", "miss", "hit")
    assert rotated.checksum == first.checksum and grown.table_bytes > first.table_bytes


def test_a_table_alone_file_says_how_to_rank_with_it(server, tmp_path):
    url, fleet = server
    got = fetch(url, "rule", "30%", tmp_path / "table.safetensors")
    device = load(got.path)
    with pytest.raises(ValueError, match="item table alone, no user: rank with your user's own vector"):
        device.recommend_user()
    vector = fleet.models["rule"].customizer.model.user_vectors[5].detach().numpy()  # a user's own vector
    ids, scores = device.query_top_k(vector, k=5)
    assert len(ids) == 5 and np.all(np.diff(scores) <= 0)
