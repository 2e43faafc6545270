"""The evaluator around the maths: npz checks, asset fetching, detector graphs, `sfd evaluate`.

TensorFlow never enters the pytest process (after it, loading triton segfaults, and other test
files load timm): everything that needs it runs in a subprocess and is skipped without it.
"""

import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from sfd import cli
from sfd.config import validate
from sfd.evaluation import EVALUATOR_VERSION, assets
from sfd.evaluation.batches import (
    EvalInputError,
    iter_images,
    open_image_batch,
    read_labels,
    require_finite,
    statistics,
)
from sfd.evaluation.evaluate import default_cache_dir, evaluate, resolve_metric_label
from sfd.evaluation.metrics import feature_statistics, frechet_distance, inception_score
from sfd.io import sha256
from sfd.transfer import DownloadError

HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install '.[eval]')")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_sfd(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "sfd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**ENV, **(env or {})},
    )


def images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------
# Sample batches: validation and streaming (no TensorFlow)


@pytest.mark.parametrize(
    "arrays, num, needle",
    [
        ({"images": images(10)}, None, "no 'arr_0' array (it holds: images)"),
        ({"arr_0": images(10).astype(np.float32)}, None, "dtype float32; expected uint8"),
        ({"arr_0": images(10)[..., 0]}, None, "expected [N, H, W, 3]"),
        ({"arr_0": np.full((10, 8, 8, 3), 300, np.int16)}, None, "values in [0, 255]"),
        ({"arr_0": images(10)}, 50, "holds 10 images, fewer than the 50 required"),
    ],
    ids=["key", "dtype", "shape", "range", "too-few"],
)
def test_bad_sample_batch_is_rejected_naming_the_file(tmp_path, arrays, num, needle):
    bad = tmp_path / "samples.npz"
    np.savez(bad, **arrays)
    np.savez(tmp_path / "ref.npz", arr_0=images(20))
    with pytest.raises(EvalInputError, match=r"samples\.npz: ") as err:
        evaluate(bad, tmp_path / "ref.npz", tmp_path / "missing.pb", num_samples=num)
    assert needle in str(err.value)


def test_cli_writes_nothing_on_bad_input(tmp_path, capsys):
    (tmp_path / "samples.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "ref.npz", arr_0=images(20))
    out = tmp_path / "metrics.json"
    rc = cli.main(
        [
            "evaluate",
            str(tmp_path / "samples.npz"),
            "--reference",
            str(tmp_path / "ref.npz"),
            "--detector",
            str(tmp_path / "missing.pb"),
            "--out",
            str(out),
            "--csv",
            str(tmp_path / "m.csv"),
        ]
    )
    assert rc == 2
    assert "samples.npz: not a readable .npz archive" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz", "samples.npz"]


def test_reference_of_another_image_size_is_refused_unless_allowed(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=images(10, size=8))
    np.savez(tmp_path / "ref.npz", arr_0=images(10, size=16))
    with pytest.raises(EvalInputError, match=r"s\.npz holds 8x8 images, .*ref\.npz 16x16; pass --allow-size"):
        evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", tmp_path / "missing.pb")
    with pytest.raises(EvalInputError, match="missing.pb: no such detector graph"):  # past the size check
        evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", tmp_path / "missing.pb", allow_size_mismatch=True)


@pytest.mark.parametrize(
    "values, needle",
    [((0, 2), "values in [0, 1]; were [0, 1] floats"), ((7, 1), "all the constant 7")],
    ids=["0..1", "constant"],
)
def test_suspicious_value_ranges_warn(tmp_path, caplog, values, needle):
    rng = np.random.default_rng(0)
    constant = values[1] == 1
    np.savez(
        tmp_path / "s.npz",
        arr_0=np.full((10, 8, 8, 3), values[0], np.uint8)
        if constant
        else rng.integers(*values, (10, 8, 8, 3), dtype=np.uint8),
    )
    np.savez(tmp_path / "ref.npz", arr_0=images(10))
    with pytest.raises(EvalInputError, match="missing.pb"):
        evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", tmp_path / "missing.pb")
    assert [r.message for r in caplog.records if needle in r.message and "s.npz" in r.message]
    assert not [r for r in caplog.records if "ref.npz" in r.getMessage()]


def test_cache_defaults_to_the_user_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("SFD_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "sfd" / "eval"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "sfd" / "eval"
    monkeypatch.setenv("SFD_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "eval"


def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "s.npz", arr_0=images(10))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "ro" and real_access(p, mode))
    (tmp_path / "ro").mkdir()
    argv = [
        "evaluate",
        str(tmp_path / "s.npz"),
        "--reference",
        str(tmp_path / "s.npz"),
        "--detector",
        str(tmp_path / "missing.pb"),
        "--out",
        str(tmp_path / "ro" / "m.json"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ro/m.json: cannot write here" in err and "missing.pb" not in err


def test_missing_detector_is_reported_before_any_work(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=images(10))
    with pytest.raises(EvalInputError, match="missing.pb: no such detector graph"):
        evaluate(tmp_path / "s.npz", tmp_path / "s.npz", tmp_path / "missing.pb")


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_streaming_reader_yields_file_order_batches(tmp_path, save):
    data = images(23, size=5)
    save(tmp_path / "s.npz", arr_0=data, arr_1=np.arange(23))
    batch = open_image_batch(tmp_path / "s.npz", 20)
    assert (batch.count, batch.image_shape, batch.has_statistics) == (23, (5, 5, 3), False)
    chunks = list(iter_images(batch, 8, count=20))
    assert [len(c) for c in chunks] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(chunks), data[:20])


def test_statistics_stored_in_the_npz_win_only_when_they_apply(tmp_path):
    """ADM's rule (stored mu/sigma are used) for Inception on the whole file; else computed."""
    rng = np.random.default_rng(0)
    stored = {"mu": np.ones(4), "sigma": np.eye(4), "mu_s": np.zeros(2), "sigma_s": 2 * np.eye(2)}
    np.savez(tmp_path / "ref.npz", arr_0=images(6), **stored)
    batch = open_image_batch(tmp_path / "ref.npz")
    pool, spatial = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    pool_stats, spatial_stats, source = statistics(batch, pool, spatial, "inception")
    np.testing.assert_array_equal(pool_stats.mu, stored["mu"])
    np.testing.assert_array_equal(spatial_stats.sigma, stored["sigma_s"])
    assert source == "precomputed in ref.npz"
    for kind, n in (("toy", 6), ("inception", 5)):
        pool_stats, _, source = statistics(batch, pool[:n], spatial[:n], kind)
        np.testing.assert_array_equal(pool_stats.mu, pool[:n].mean(0))
        assert source == f"computed from {n} images"


def test_non_finite_features_are_reported_with_the_file():
    pool = np.ones((5, 4), np.float32)
    pool[3, 1] = np.nan
    require_finite("a.npz", spatial=np.zeros((5, 2), np.float32))
    with pytest.raises(
        EvalInputError,
        match=r"a\.npz: the detector produced non-finite pool features for 1 images \(first: index 3\)",
    ):
        require_finite("a.npz", pool=pool)


def test_metric_labels():
    assert resolve_metric_label("inception", 50000, None) == "FID-50K"
    assert resolve_metric_label("inception", 12345, None) == "FID-12345"
    assert resolve_metric_label("toy", 50000, None) == "toy-FID"
    assert resolve_metric_label("toy", 1000, "toy-FID-1K") == "toy-FID-1K"
    with pytest.raises(EvalInputError, match="must be labelled 'toy-"):
        resolve_metric_label("toy", 50000, "FID-50K")


def test_make_reference_takes_the_first_images_and_labels(tmp_path):
    from sfd.data.toy import save_npz

    data, labels = images(12), np.arange(12) % 3
    save_npz(tmp_path / "val.npz", data, labels, ["a", "b", "c"])
    out = tmp_path / "ref.npz"
    assert (
        cli.main(["make-reference", "--data", str(tmp_path / "val.npz"), "--num", "9", "--out", str(out)])
        == 0
    )
    with np.load(out) as ref:
        np.testing.assert_array_equal(ref["arr_0"], data[:9])
        np.testing.assert_array_equal(ref["arr_1"], labels[:9])
    assert (
        cli.main(
            [
                "make-reference",
                "--data",
                str(tmp_path / "val.npz"),
                "--num",
                "13",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------
# Asset fetching against a local HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    """ADM's asset host: honours Range (416 past the end) unless told not to, can drop the first
    response after `break_after` bytes, or stall after `stall_after` bytes until released."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        srv.auth.append(self.headers.get("Authorization"))
        start = 0
        if self.headers.get("Range") and srv.honour_range:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(srv.payload):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(srv.payload) - 1}/{len(srv.payload)}")
        else:
            self.send_response(200)
        body = srv.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.break_after is not None:
            body, srv.break_after = body[: srv.break_after], None
            self.close_connection = True
        if srv.stall_after is not None:
            self.wfile.write(body[: srv.stall_after])
            self.wfile.flush()
            srv.release.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets it
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload = np.random.default_rng(0).bytes(300_000)
    srv.ranges, srv.auth, srv.honour_range = [], [], True
    srv.break_after = srv.stall_after = None
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/ref_batches/asset.bin"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_unpinned_asset_is_downloaded_and_its_hash_recorded(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretTOKENvalue123")
    path = assets.fetch(server.url, tmp_path)
    assert path == tmp_path / "asset.bin" and path.read_bytes() == server.payload
    assert server.auth == [None]  # the Hub token never goes to another host
    digest = _sha(server.payload)
    assert (tmp_path / "asset.bin.sha256").read_text().split()[0] == digest
    assert f"sha256 {digest} (not pinned" in capsys.readouterr().out
    path.write_bytes(b"tampered")
    with pytest.raises(assets.AssetError, match="differs from the expected"):
        assets.fetch(server.url, tmp_path)


def test_pinned_hash_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="expected 0000"):
        assets.fetch(server.url, tmp_path, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_killed_download_resumes_on_the_next_run_with_a_range_request(server, tmp_path):
    """A process killed mid-transfer leaves its part (whole chunks of huggingface_hub's
    DOWNLOAD_CHUNK_SIZE); the next run asks for the bytes past it and checks the whole file.
    huggingface_hub's own retries cover a dropped connection within one call only."""
    import time

    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE as CHUNK

    server.payload = np.random.default_rng(1).bytes(CHUNK + CHUNK // 2)
    server.stall_after = CHUNK + CHUNK // 4
    digest, part = _sha(server.payload), tmp_path / "asset.bin.part"
    code = (  # the transfer's imports, then the fetch; the evaluator's side must stay torch-free
        "import sys, huggingface_hub.file_download, sfd.transfer; from sfd.evaluation import assets; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        f"assets.fetch({server.url!r}, {str(tmp_path)!r}, {digest!r})"
    )
    run = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "0"})
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size >= CHUNK):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    run.kill()
    run.wait()
    assert part.stat().st_size == CHUNK and not (tmp_path / "asset.bin").exists()
    server.stall_after = None
    path = assets.fetch(server.url, tmp_path, digest)
    assert server.ranges == [None, f"bytes={CHUNK}-"]
    assert path.read_bytes() == server.payload and not part.exists()


def test_dropped_connection_is_retried_within_the_call(server, tmp_path):
    server.break_after = 120_000
    path = assets.fetch(server.url, tmp_path, _sha(server.payload))
    assert len(server.ranges) == 2 and path.read_bytes() == server.payload


def test_whole_part_answered_416_is_verified_and_kept(server, tmp_path):
    (tmp_path / "asset.bin.part").write_bytes(server.payload)  # killed between the last byte and the rename
    assert assets.fetch(server.url, tmp_path, _sha(server.payload)).read_bytes() == server.payload
    assert server.ranges == ["bytes=300000-"] and not (tmp_path / "asset.bin.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    (tmp_path / "asset.bin.part").write_bytes(b"stale bytes")
    assert assets.fetch(server.url, tmp_path, _sha(server.payload)).read_bytes() == server.payload
    assert server.ranges == ["bytes=11-"]


def test_offline_gives_a_clear_error(server, tmp_path, monkeypatch):
    import socket

    import huggingface_hub.constants

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"may be offline.*put it at .*model\.pb"):
        assets.fetch(f"http://127.0.0.1:{port}/model.pb", tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE is set.*put it at .*asset\.bin"):
        assets.fetch(server.url, tmp_path)
    assert not server.ranges


def test_fetch_eval_assets_command(server, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "evaluation": {"assets": {"graph": {"url": server.url}}}}))
    assert cli.main(["fetch-eval-assets", "--config", str(cfg), "--out-dir", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "asset.bin").read_bytes() == server.payload
    assert (
        cli.main(
            ["fetch-eval-assets", "--config", str(cfg), "--out-dir", str(tmp_path / "a"), "--only", "nope"]
        )
        == 2
    )


def test_config_defaults_point_at_adm_assets():
    urls = {k: v["url"] for k, v in validate({}, "evaluation")["assets"].items()}
    assert urls["inception"].endswith("/jul-2021/ref_batches/classify_image_graph_def.pb")
    assert urls["reference"].endswith("/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz")


# ----------------------------------------------------------------------------
# TensorFlow: precision/recall distances against ADM's own graph (subprocess)

ADM_MANIFOLD = r"""
import numpy as np
import tensorflow.compat.v1 as tf1


class AdmManifold:  # guided-diffusion's DistanceBlock + ManifoldEstimator (k=3), op for op
    def __init__(self, batch=10000):
        self.batch = batch
        graph = tf1.Graph()
        with graph.as_default():
            self.u = tf1.placeholder(tf1.float32, [None, None])
            self.v = tf1.placeholder(tf1.float32, [None, None])

            def block(a, b):
                na = tf1.reshape(tf1.reduce_sum(tf1.square(a), 1), [-1, 1])
                nb = tf1.reshape(tf1.reduce_sum(tf1.square(b), 1), [1, -1])
                return tf1.maximum(na - 2 * tf1.matmul(a, b, False, True) + nb, 0.0)

            self.fp16 = block(tf1.cast(self.u, tf1.float16), tf1.cast(self.v, tf1.float16))
            self.fp32 = block(self.u, self.v)
            self.dist = tf1.cond(
                tf1.reduce_all(tf1.math.is_finite(self.fp16)),
                lambda: tf1.cast(self.fp16, tf1.float32),
                lambda: block(self.u, self.v),
            )
            self.ru = tf1.placeholder(tf1.float32, [None, None])
            self.rv = tf1.placeholder(tf1.float32, [None, None])
            d = tf1.cast(self.dist, tf1.float32)[..., None]
            self.u_in = tf1.reduce_any(d <= self.rv, axis=1)
            self.v_in = tf1.reduce_any(d <= self.ru[:, None], axis=0)
        config = tf1.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        self.session = tf1.Session(graph=graph, config=config)

    def run(self, fetch, u, v):
        return self.session.run(fetch, {self.u: u, self.v: v})

    def radii(self, x):
        n, b = len(x), self.batch
        radii, rows = np.zeros([n, 1], np.float32), np.zeros([b, n], np.float32)
        for r in range(0, n, b):
            r1 = min(r + b, n)
            for c in range(0, n, b):
                rows[0 : r1 - r, c : min(c + b, n)] = self.run(self.dist, x[r:r1], x[c : c + b])
            radii[r:r1] = np.partition(rows[0 : r1 - r], np.arange(4), axis=1)[:, [3]]
        return radii

    def precision_recall(self, ref, samples):
        r_ref, r_samples, b = self.radii(ref), self.radii(samples), self.batch
        ref_in, samples_in = np.zeros([len(ref), 1], bool), np.zeros([len(samples), 1], bool)
        for r in range(0, len(ref), b):
            for c in range(0, len(samples), b):
                feed = {self.u: ref[r : r + b], self.v: samples[c : c + b],
                        self.ru: r_ref[r : r + b], self.rv: r_samples[c : c + b]}
                got_ref, got_samples = self.session.run([self.u_in, self.v_in], feed)
                ref_in[r : r + b] |= got_ref
                samples_in[c : c + b] |= got_samples
        return [float(np.mean(samples_in.astype(np.float64), axis=0)[0]),
                float(np.mean(ref_in.astype(np.float64), axis=0)[0])]
"""

TF_DISTANCE_WORKER = (
    ADM_MANIFOLD
    + r"""
import json, sys
from sfd.evaluation import tf_ops
from sfd.evaluation.metrics import precision_recall
out = sys.argv[1]
adm, ours = AdmManifold(), tf_ops.adm_distance_block()
rng = np.random.default_rng(0)
report = {"built_once": ours is tf_ops.adm_distance_block()}

# 1. Inception-like pool features (non-negative, 2048-d): an fp16 block, and one that overflows
#    (a row with |u|^2 > 65504) and is recomputed in float32.
u = rng.gamma(0.6, 0.6, (130, 2048)).astype(np.float32)
v = rng.gamma(0.6, 0.6, (90, 2048)).astype(np.float32)
big = u.copy()
big[7] *= 20
for name, (a, b) in {"fp16": (u, v), "overflow": (big, v)}.items():
    got = ours(a, b)
    adm_d, adm16, adm32 = adm.run([adm.dist, adm.fp16, adm.fp32], a, b)
    report[name] = {
        "dtype": str(got.dtype), "shape": list(got.shape),
        "equals_adm": bool(np.array_equal(got, adm_d)),
        "fp16_finite": bool(np.isfinite(adm16).all()),
        "equals_fp16": bool(np.array_equal(got, adm16.astype(np.float32))),
        "equals_fp32": bool(np.array_equal(got, adm32)),
    }

# 2. The whole P/R against ADM's estimator, with small blocks (its row/col batching exercised)
#    and with ADM's 10000.
ref = rng.gamma(0.6, 0.6, (150, 256)).astype(np.float32)
samples = (rng.gamma(0.6, 0.6, (170, 256)) * np.linspace(0.8, 1.2, 170)[:, None]).astype(np.float32)
report["pr_blocked"] = [list(precision_recall(ref, samples, block=64, distance_fn=ours)),
                        AdmManifold(batch=64).precision_recall(ref, samples)]
report["pr"] = [list(precision_recall(ref, samples, distance_fn=ours)), adm.precision_recall(ref, samples)]

# 3. Well-separated clusters: no point is within fp16 rounding of changing sides, so TF's fp16
#    blocks and a plain float32 computation must agree. 20 reference clusters of 4 points; the
#    samples copy the first 12 and add 8 clusters of their own, away from the reference.
centres = rng.normal(0, 1.5, (28, 32))
clusters = [centres[c] + rng.normal(0, 0.3, (4, 32)) for c in range(28)]
ref = np.concatenate(clusters[:20]).astype(np.float32)
samples = np.concatenate([ref[:48] + rng.normal(0, 0.01, (48, 32))] + clusters[20:]).astype(np.float32)

def plain(x, y):
    return ((x[:, None] - y[None]) ** 2).sum(-1, dtype=np.float32)

r_ref, r_samples = np.sort(plain(ref, ref), 1)[:, 3], np.sort(plain(samples, samples), 1)[:, 3]
d = plain(ref, samples)
report["separated"] = {
    "tf": list(precision_recall(ref, samples, distance_fn=ours)),
    "float32": [float(np.mean((d <= r_ref[:, None]).any(0))), float(np.mean((d <= r_samples).any(1)))],
    # how far each point is from changing sides: inside its roomiest ball, or outside every ball
    "margin": float(min(np.abs((r_ref[:, None] - d).max(0)).min(), np.abs((r_samples - d).max(1)).min())),
}
json.dump(report, open(out, "w"))
"""
)


@pytest.fixture(scope="module")
def tf_distances(tmp_path_factory):
    if not HAS_TF:
        pytest.skip("tensorflow is not installed")
    out = tmp_path_factory.mktemp("tf_distances") / "report.json"
    worker = subprocess.run(
        [sys.executable, "-c", TF_DISTANCE_WORKER, str(out)], capture_output=True, text=True, env=ENV
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    return json.loads(out.read_text())


@needs_tf
def test_tf_distance_block_is_adms_graph(tf_distances):
    assert tf_distances["built_once"]
    fp16, overflow = tf_distances["fp16"], tf_distances["overflow"]
    assert (fp16["dtype"], fp16["shape"]) == ("float32", [130, 90])
    assert fp16["equals_adm"] and fp16["fp16_finite"] and fp16["equals_fp16"]
    assert not fp16["equals_fp32"]  # the fp16 rounding is really there
    assert overflow["equals_adm"] and not overflow["fp16_finite"] and overflow["equals_fp32"]


@needs_tf
def test_tf_precision_recall_is_adms(tf_distances):
    for ours, adm in (tf_distances["pr_blocked"], tf_distances["pr"]):
        assert ours == adm
    precision, recall = tf_distances["pr"][0]
    assert 0 < precision < 1 and 0 < recall < 1


@needs_tf
def test_tf_precision_recall_equals_float32_on_separated_data(tf_distances):
    separated = tf_distances["separated"]
    assert separated["margin"] > 1.0  # premise: far beyond the fp16 rounding of these distances
    assert separated["tf"] == separated["float32"] == [0.6, 0.6]


# ----------------------------------------------------------------------------
# TensorFlow: detector graphs, the toy detector and `sfd evaluate` end to end (subprocesses)

TF_WORKER = (
    ADM_MANIFOLD
    + r"""
import json, sys
import numpy as np
from sfd.evaluation import inception, toy_detector
from sfd.evaluation.batches import EvalInputError
tf = inception.tf
out, det_path, samples_path, ref_path, cache_dir = sys.argv[1:6]
report = {}

# 1. A hand-built graph with Inception's tensor names: features must follow the ADM recipe.
rng = np.random.default_rng(0)
kernel = rng.normal(size=(1, 1, 3, 9)).astype(np.float32)
weights = rng.normal(size=(9, 5)).astype(np.float32)
g = tf.Graph()
with g.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
    r = tf.raw_ops.ResizeBilinear(images=x, size=[4, 4], align_corners=False, half_pixel_centers=False)
    conv = tf.nn.relu(tf.nn.conv2d((r - 128.0) / 128.0, kernel, 1, "VALID"), name="mixed_6/conv")
    pool = tf.nn.avg_pool2d(conv, 4, 1, "VALID", name="pool_3")
    mm = tf.matmul(tf.reshape(pool, [-1, 9]), weights, name="softmax/logits/MatMul")
    tf.nn.bias_add(mm, np.full(5, 7.0, np.float32), name="softmax/logits")
graph_path = out + ".hand.pb"
open(graph_path, "wb").write(g.as_graph_def().SerializeToString())
det = inception.Detector(graph_path, batch_size=3)
imgs = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
pool_f, spatial_f = det.features([imgs[i:i + 3] for i in range(0, 7, 3)], 7)
probs = det.class_probs(pool_f)
det.close()
sub = (imgs[:, ::2, ::2].astype(np.float32) - 128) / 128  # TF1 bilinear 8->4 samples even pixels
act = np.maximum(sub @ kernel[0, 0], 0)
logits = act.mean((1, 2)) @ weights
expected_probs = np.exp(logits - logits.max(1, keepdims=True))
expected_probs /= expected_probs.sum(1, keepdims=True)
report["hand"] = {
    "kind": det.kind, "pool_dim": det.pool_dim, "num_classes": det.num_classes,
    "pool_err": float(np.abs(pool_f - act.mean((1, 2))).max()),
    "spatial_shape": list(spatial_f.shape),
    "spatial_err": float(np.abs(spatial_f - act[..., :7].reshape(7, -1)).max()),
    "probs_err": float(np.abs(probs - expected_probs).max()),
}

# 2. Graphs that are not detectors.
errors = {}
bad = tf.Graph()
with bad.as_default():
    tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
open(out + ".bad.pb", "wb").write(bad.as_graph_def().SerializeToString())
open(out + ".junk.pb", "wb").write(b"\x00\xff" * 50)
for name in ("bad", "junk"):
    try:
        inception.Detector(out + "." + name + ".pb")
    except EvalInputError as err:
        errors[name] = str(err)
report["errors"] = errors

# 3. The toy detector: training is bit-reproducible; the exported graph is the eager model.
data = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
labels = np.arange(40) % 4
cfg = dict(image_size=32, widths=[4, 8, 8, 8], steps=3, batch_size=16, learning_rate=1e-3, seed=1)
p1 = toy_detector.train(data, labels, 4, cfg)
p2 = toy_detector.train(data, labels, 4, cfg)
report["deterministic"] = all(np.array_equal(p1[k], p2[k]) for k in p1)
initial = toy_detector.init_params(cfg["widths"], 4, 1)
report["trained"] = not all(np.array_equal(p1[k], initial[k]) for k in p1)
gd = toy_detector.export_graph_def(p1, 32, {"val_accuracy": 0.5})
eg = tf.Graph()
with eg.as_default():
    tf.compat.v1.import_graph_def(gd, name="")
with tf.compat.v1.Session(graph=eg) as s:
    graph_probs = s.run("softmax:0", {"ExpandDims:0": data[:5].astype(np.float32)})
_, _, eager_logits = toy_detector.forward(p1, tf.constant(data[:5], tf.float32), 32)
report["export_err"] = float(np.abs(graph_probs - tf.nn.softmax(eager_logits).numpy()).max())
report["node_names"] = [n.name for n in gd.node]

# 4. Features of the end-to-end batches, for recomputing the metrics outside the evaluator;
#    a second evaluation served from the reference cache; a label that contradicts the graph.
det = inception.Detector(det_path)
feats = {}
for key, path, n in (("s", samples_path, 120), ("r", ref_path, None)):
    with np.load(path) as f:
        arr = f["arr_0"][:n]
    pool_f, spatial_f = det.features([arr[i:i + 64] for i in range(0, len(arr), 64)], len(arr))
    feats[key + "_pool"], feats[key + "_spatial"] = pool_f, spatial_f
feats["s_probs"] = det.class_probs(feats["s_pool"])
np.savez(out + ".feats.npz", **feats)
from sfd.evaluation.metrics import precision_recall
from sfd.evaluation.tf_ops import adm_distance_block
report["pr_tf"] = list(precision_recall(feats["r_pool"], feats["s_pool"], distance_fn=adm_distance_block()))
report["pr_adm"] = AdmManifold().precision_recall(feats["r_pool"], feats["s_pool"])
report["toy_kind"], report["toy_info"] = det.kind, det.info
report["predicted"] = det.predicted_classes(feats["s_pool"]).tolist()
det.close()
with tf.compat.v1.Session(graph=tf.Graph()) as s:  # the exported graph's own softmax: bias included
    tf.compat.v1.import_graph_def(inception.read_graph_def(det_path), name="")
    with np.load(samples_path) as f:
        probs = s.run("softmax:0", {"ExpandDims:0": f["arr_0"][:120]})
        report["graph_predicted"] = np.argmax(probs, 1).tolist()

import logging
from sfd.evaluation.evaluate import evaluate
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("sfd.evaluation").addHandler(handler)
logging.getLogger("sfd.evaluation").setLevel(logging.INFO)
again = evaluate(samples_path, ref_path, det_path, num_samples=120, cache_dir=cache_dir)
report["again"] = {k: again[k] for k in ("fid", "sfid", "inception_score", "precision", "recall")}
report["log"] = records
try:
    evaluate(samples_path, ref_path, det_path, label="inception", cache_dir=cache_dir)
except EvalInputError as err:
    report["label_error"] = str(err)
with np.load(samples_path) as f:
    np.savez(out + ".unlabelled.npz", arr_0=f["arr_0"])
try:
    evaluate(out + ".unlabelled.npz", ref_path, det_path, cache_dir=cache_dir)
except EvalInputError as err:
    report["unlabelled_error"] = str(err)
json.dump(report, open(out, "w"))
"""
)


def colour_classes(n, seed):
    """Images whose class is the dominant colour channel: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    base = rng.integers(0, 120, (n, 32, 32, 3))
    base[np.arange(n), :, :, labels] += 120
    return base.astype(np.uint8), labels


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """train-detector -> make-reference -> evaluate, then the TF worker's checks and report."""
    if not HAS_TF:
        pytest.skip("tensorflow is not installed")
    from sfd.data.toy import save_npz

    d = tmp_path_factory.mktemp("toy_eval")
    save_npz(d / "train.npz", *colour_classes(600, 0), ["red", "green", "blue"])
    save_npz(d / "val.npz", *colour_classes(100, 1), ["red", "green", "blue"])
    cfg = d / "toy.yaml"
    toy = {"steps": 40, "batch_size": 32, "widths": [8, 16, 8, 16], "learning_rate": 0.003}
    cfg.write_text(
        yaml.safe_dump(
            {"name": "t", "evaluation": {"detector": "toy", "num_samples": 120, "toy_detector": toy}}
        )
    )
    train = run_sfd(
        "train-detector",
        "--config",
        cfg,
        "--data",
        d / "train.npz",
        "--val",
        d / "val.npz",
        "--out",
        d / "det.pb",
        "--metrics",
        d / "det.json",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (
        cli.main(
            [
                "make-reference",
                "--config",
                str(cfg),
                "--data",
                str(d / "val.npz"),
                "--num",
                "100",
                "--out",
                str(d / "ref.npz"),
            ]
        )
        == 0
    )
    with np.load(d / "train.npz") as t:
        labels = t["labels"][:150].copy()
        labels[:30] = (labels[:30] + 1) % 3  # a fifth of the samples drawn against their label
        np.savez(d / "samples.npz", arr_0=t["images"][:150], arr_1=labels)
    first = run_sfd(
        "evaluate",
        "samples.npz",
        "--reference",
        "ref.npz",
        "--detector",
        "det.pb",
        "--config",
        cfg,
        "--label",
        "toy",
        "--out",
        "m.json",
        "--csv",
        "m.csv",
        cwd=d,
        env={"SFD_CACHE_DIR": str(d / "user-cache")},
    )
    assert first.returncode == 0, first.stderr[-3000:]
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            TF_WORKER,
            str(d / "report.json"),
            str(d / "det.pb"),
            str(d / "samples.npz"),
            str(d / "ref.npz"),
            str(d / "user-cache" / "eval"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    return types.SimpleNamespace(dir=d, first=first, report=json.loads((d / "report.json").read_text()))


@needs_tf
def test_detector_graph_is_driven_the_adm_way(toy_run):
    hand = toy_run.report["hand"]
    assert (hand["kind"], hand["pool_dim"], hand["num_classes"]) == ("inception", 9, 5)
    assert hand["spatial_shape"] == [7, 4 * 4 * 7]  # first 7 channels, flattened h, w, c
    assert max(hand["pool_err"], hand["spatial_err"]) < 1e-5
    assert hand["probs_err"] < 1e-6  # softmax(pool @ W): the graph's bias (7.0) is not used


@needs_tf
def test_non_detector_graphs_are_rejected(toy_run):
    errors = toy_run.report["errors"]
    assert ".bad.pb: not a usable detector graph" in errors["bad"]
    assert ".junk.pb: not a TensorFlow GraphDef" in errors["junk"]


@needs_tf
def test_toy_detector_training_and_export(toy_run):
    report = toy_run.report
    assert report["deterministic"] and report["trained"]
    assert report["export_err"] < 1e-6
    for name in (
        "ExpandDims",
        "ResizeBilinear",
        "mixed_6/conv",
        "pool_3",
        "softmax/logits/MatMul",
        "sfd_toy_detector/info",
    ):
        assert name in report["node_names"]
    facts = json.loads((toy_run.dir / "det.json").read_text())
    assert facts["num_classes"] == 3 and facts["val_accuracy"] > 0.9  # chance is 1/3
    assert report["toy_kind"] == "toy" and report["toy_info"]["val_accuracy"] == facts["val_accuracy"]


@needs_tf
def test_evaluate_outputs(toy_run):
    m = json.loads((toy_run.dir / "m.json").read_text())
    assert m["metric_label"] == "toy-FID" and m["detector_kind"] == "toy"
    assert (m["num_samples"], m["num_reference"], m["evaluator_version"]) == (120, 100, EVALUATOR_VERSION)
    assert m["samples_sha256"] == sha256(toy_run.dir / "samples.npz")
    assert "order-sensitive" in m["notes"]["inception_score"]
    assert 1.0 <= m["inception_score"] <= 3.0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["fid"] > 0 and m["sfid"] > 0
    header, row = (toy_run.dir / "m.csv").read_text().splitlines()
    assert header.startswith("metric_label,fid,sfid,inception_score,precision,recall")
    assert row.split(",")[1] == repr(m["fid"])
    assert toy_run.first.stdout.strip().startswith(f"toy-FID: FID {m['fid']:.4f}")


@needs_tf
def test_class_accuracy_is_the_toy_detectors_decision_against_arr_1(toy_run):
    m = json.loads((toy_run.dir / "m.json").read_text())
    with np.load(toy_run.dir / "samples.npz") as f:
        labels = f["arr_1"][:120]
    predicted = np.array(toy_run.report["predicted"])
    assert predicted.tolist() == toy_run.report["graph_predicted"]
    assert m["class_acc"] == float(np.mean(predicted == labels))
    assert 0.6 < m["class_acc"] <= 0.75  # 30 of the 120 labels are wrong; the detector is right on the rest
    header, row = (toy_run.dir / "m.csv").read_text().splitlines()
    assert row.split(",")[header.split(",").index("class_acc")] == repr(m["class_acc"])
    assert f"class acc {m['class_acc']:.4f}" in toy_run.first.stdout
    assert toy_run.report["unlabelled_error"].endswith("(`sfd pack` writes them)")


def test_labels_are_checked_against_the_detector_classes(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=images(4), arr_1=np.array([0, 1, 2, 3]))
    batch = open_image_batch(tmp_path / "s.npz")
    assert read_labels(batch, 3, 3).tolist() == [0, 1, 2]
    with pytest.raises(EvalInputError, match=r"s.npz: arr_1 labels must lie in \[0, 3\)"):
        read_labels(batch, 4, 3)
    with pytest.raises(EvalInputError, match="5 or more integer labels"):
        read_labels(batch, 5, 10)


@needs_tf
def test_evaluate_equals_the_metric_maths_on_its_features(toy_run):
    m = json.loads((toy_run.dir / "m.json").read_text())
    f = np.load(toy_run.dir / "report.json.feats.npz")
    sample_stats, ref_stats = feature_statistics(f["s_pool"]), feature_statistics(f["r_pool"])
    assert m["fid"] == frechet_distance(sample_stats, ref_stats)
    assert m["sfid"] == frechet_distance(
        feature_statistics(f["s_spatial"]), feature_statistics(f["r_spatial"])
    )
    assert m["inception_score"] == inception_score(f["s_probs"])
    assert [m["precision"], m["recall"]] == toy_run.report["pr_tf"] == toy_run.report["pr_adm"]


@needs_tf
def test_reference_features_are_cached_by_hash(toy_run):
    assert "cached reference features in" in toy_run.first.stderr
    assert any(line.startswith("reference features from cache") for line in toy_run.report["log"])
    m = json.loads((toy_run.dir / "m.json").read_text())
    assert toy_run.report["again"] == {k: m[k] for k in toy_run.report["again"]}
    cached = list((toy_run.dir / "user-cache" / "eval").glob("reference-*.npz"))
    assert len(cached) == 1 and m["reference_sha256"][:16] in cached[0].name
    assert not (toy_run.dir / ".cache").exists()  # never in the working directory


@needs_tf
def test_label_must_match_the_detector(toy_run):
    assert toy_run.report["label_error"].endswith(
        "det.pb: is the toy detector, but label 'inception' was asked for"
    )


# ----------------------------------------------------------------------------
# Opt-in: ADM's published numbers (needs ~100 MB + 2 x 1-10 GB of ADM files, hours on a CPU)

ADM_EXPECTED = {
    "inception_score": 215.8370361328125,
    "fid": 3.9425574129223264,
    "sfid": 6.140433703346162,
    "precision": 0.8265,
    "recall": 0.5309,
}


@pytest.mark.integration
@needs_tf
def test_adm_published_numbers(tmp_path):
    root = os.environ.get("SFD_ADM_ASSETS")
    names = (
        "classify_image_graph_def.pb",
        "VIRTUAL_imagenet256_labeled.npz",
        "admnet_guided_upsampled_imagenet256.npz",
    )
    if not root or not all((Path(root) / n).is_file() for n in names):
        pytest.skip("set SFD_ADM_ASSETS to a directory holding " + ", ".join(names))
    root = Path(root)
    res = run_sfd(
        "evaluate",
        root / names[2],
        "--reference",
        root / names[1],
        "--detector",
        root / names[0],
        "--label",
        "inception",
        "--out",
        tmp_path / "adm.json",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "adm.json").read_text())
    assert m["metric_label"] == "FID-50K"
    for key in ("inception_score", "fid", "sfid"):
        assert m[key] == pytest.approx(ADM_EXPECTED[key], rel=2e-3), key
    for key in ("precision", "recall"):
        assert m[key] == pytest.approx(ADM_EXPECTED[key], abs=2e-3), key
