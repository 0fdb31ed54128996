"""Tests for ridgeline.cifar.data on a tiny CIFAR-10 built in the official format; no network beyond
a loopback HTTP server started here."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ridgeline.cifar import data as D
from ridgeline.errors import DataError

LABEL_NAMES = b"airplane automobile bird cat deer dog frog horse ship truck".split()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_fake_cifar(
    tmpdir: str | os.PathLike, n_per_batch: int = 20, seed: int = 0
) -> tuple[Path, Path, dict[str, str], str]:
    """A small CIFAR-10 in the official format: dicts with bytes keys pickled with protocol 2,
    ``data`` uint8 [n, 3072] channel-major. Returns (extracted folder, tarball, member md5s,
    archive md5); the folder and the tarball sit in different parents so each can be found alone.
    """
    rng = np.random.default_rng(seed)
    folder = Path(tmpdir) / "extracted" / D.FOLDER_NAME
    folder.mkdir(parents=True)
    for name in (*D.TRAIN_FILES, D.TEST_FILE):
        labels = rng.permutation(np.arange(n_per_batch) % D.NUM_CLASSES).tolist()
        batch = {
            b"batch_label": f"fake {name}".encode(),
            b"labels": labels,
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n_per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": LABEL_NAMES, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    file_md5s = {p.name: _md5(p) for p in folder.iterdir()}
    tarball = Path(tmpdir) / "archive" / D.ARCHIVE_NAME
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=D.FOLDER_NAME)
    return folder, tarball, file_md5s, _md5(tarball)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Cache under tmp_path, no inherited data location, and a fresh in-process memo."""
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "_MEMO", {})


@pytest.fixture
def fake(tmp_path):
    return make_fake_cifar(tmp_path / "fake")


def _raw(folder: Path, name: str) -> dict:
    with open(folder / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_folder_load_shapes_dtypes_and_pixel_layout(fake):
    folder, _, md5s, _ = fake
    ds = D.load_cifar10(folder, file_md5s=md5s)
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.shape == (100,) and ds.train_labels.dtype == torch.int64
    assert ds.test_images.shape == (20, 3, 32, 32) and ds.test_labels.shape == (20,)
    raw2, i, y, x = _raw(folder, "data_batch_2"), 7, 5, 11
    for c in range(3):  # R plane, then G, then B, each row-major
        assert ds.train_images[20 + i, c, y, x] == raw2[b"data"][i, c * 1024 + y * 32 + x]
    assert ds.train_labels[20:40].tolist() == raw2[b"labels"]
    assert ds.test_labels.tolist() == _raw(folder, "test_batch")[b"labels"]


def test_parent_folder_and_env_var_are_found(fake, monkeypatch):
    folder, _, md5s, _ = fake
    by_parent = D.load_cifar10(folder.parent, file_md5s=md5s)
    monkeypatch.setenv(D.ENV_VAR, str(folder.parent))
    assert torch.equal(D.load_cifar10(file_md5s=md5s).train_images, by_parent.train_images)


def test_resolve_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert D.resolve_root() == tmp_path / ".cache" / "ridgeline" / "data"
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_root() == tmp_path / "env"
    assert D.resolve_root(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("as_file", [True, False], ids=["tarball", "folder-holding-tarball"])
def test_tarball_load_matches_folder(fake, as_file):
    folder, tarball, md5s, archive_md5 = fake
    ds = D.load_cifar10(
        tarball if as_file else tarball.parent, file_md5s=md5s, archive_md5=archive_md5
    )
    ref = D.load_cifar10(folder, file_md5s=md5s)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(ds, field), getattr(ref, field))


def test_archive_md5_mismatch(fake):
    _, tarball, md5s, archive_md5 = fake
    with pytest.raises(DataError, match=f"expected {'0' * 32}, got {archive_md5}") as e:
        D.load_cifar10(tarball, file_md5s=md5s, archive_md5="0" * 32)
    assert str(tarball) in str(e.value)


def test_member_md5_mismatch(fake):
    folder, tarball, md5s, _ = fake
    bad = {**md5s, "data_batch_4": "f" * 32}
    for root in (folder, tarball):
        with pytest.raises(DataError, match=f"data_batch_4.*expected {'f' * 32}, got "):
            D.load_cifar10(root, file_md5s=bad, archive_md5=None)


def _truncated(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _wrong_size(blob: bytes) -> bytes:
    batch = pickle.loads(blob, encoding="bytes")
    batch[b"data"] = batch[b"data"][:, :1000]
    return pickle.dumps(batch, protocol=2)


def _code_running(blob: bytes) -> bytes:
    return pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=2)


@pytest.mark.parametrize(
    "damage", [_truncated, _wrong_size, _code_running, lambda b: b"not a pickle"]
)
def test_corrupt_batch_file(fake, damage):
    folder, _, md5s, _ = fake
    path = folder / "data_batch_3"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match="is truncated or corrupt: delete it") as e:
        D.load_cifar10(folder, file_md5s={**md5s, "data_batch_3": _md5(path)})
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_tarball(fake):
    _, tarball, md5s, _ = fake
    tarball.write_bytes(_truncated(tarball.read_bytes()))
    with pytest.raises(DataError, match="is truncated or corrupt") as e:
        D.load_cifar10(tarball, file_md5s=md5s, archive_md5=None)
    assert str(tarball) in str(e.value)


def test_missing_member_file(fake):
    folder, _, md5s, _ = fake
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5 is missing"):
        D.load_cifar10(folder, file_md5s=md5s)


def test_missing_folder_message(tmp_path):
    for root, state in ((tmp_path / "nope", "does not exist"), (tmp_path, "holds no CIFAR-10")):
        with pytest.raises(DataError) as e:
            D.load_cifar10(root)
        msg = str(e.value)
        assert str(root) in msg and state in msg and "\n" not in msg
        assert "--data" in msg and D.ENV_VAR in msg and "--download" in msg


# --- download --------------------------------------------------------------------------------


@contextmanager
def _serve(body: bytes, status: int = 200, claimed_length: int | None = None) -> Iterator[str]:
    """Serve ``body`` on 127.0.0.1 at any path; ``claimed_length`` fakes a cut-off response."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", str(claimed_length or len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{D.ARCHIVE_NAME}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_then_load(fake, tmp_path):
    folder, tarball, md5s, archive_md5 = fake
    with _serve(tarball.read_bytes()) as url:
        dest = D.download(url, tmp_path / "dl" / D.ARCHIVE_NAME, archive_md5)
        assert _md5(dest) == archive_md5 and os.listdir(dest.parent) == [D.ARCHIVE_NAME]
        root = tmp_path / "auto"
        ds = D.load_cifar10(root, download=True, url=url, file_md5s=md5s, archive_md5=archive_md5)
    assert os.listdir(root) == [D.ARCHIVE_NAME]
    assert torch.equal(ds.train_images, D.load_cifar10(folder, file_md5s=md5s).train_images)


def test_download_md5_mismatch_leaves_nothing(fake, tmp_path):
    _, tarball, _, archive_md5 = fake
    with _serve(tarball.read_bytes()) as url, pytest.raises(DataError, match="md5 mismatch") as e:
        D.download(url, tmp_path / "dl" / D.ARCHIVE_NAME, "0" * 32)
    assert f"got {archive_md5}" in str(e.value)
    assert os.listdir(tmp_path / "dl") == []


def test_download_truncated_body(tmp_path):
    with (
        _serve(b"x" * 1000, claimed_length=5000) as url,
        pytest.raises(DataError, match="cut short at 1000 of 5000 bytes"),
    ):
        D.download(url, tmp_path / D.ARCHIVE_NAME, None)
    assert os.listdir(tmp_path) == []


def test_download_http_error(tmp_path):
    with _serve(b"gone", status=404) as url, pytest.raises(DataError, match="404") as e:
        D.download(url, tmp_path / D.ARCHIVE_NAME, None)
    assert url in str(e.value) and "--data" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_download_unreachable(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago is closed now
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/{D.ARCHIVE_NAME}"
    with pytest.raises(DataError, match="could not download") as e:
        D.load_cifar10(tmp_path, download=True, url=url)
    assert url in str(e.value) and "--data" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_download_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "TIMEOUT_S", 0.3)
    with socket.socket() as s:  # accepts the connection (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x"
        with pytest.raises(DataError, match="timed out"):
            D.download(url, tmp_path / D.ARCHIVE_NAME, None)
    assert os.listdir(tmp_path) == []


# --- stratified subsets ----------------------------------------------------------------------


def test_stratified_subset_deterministic_sorted_and_balanced():
    labels = torch.arange(1000) % 10
    a, b = D.stratified_subset(labels, 95, seed=3), D.stratified_subset(labels, 95, seed=3)
    assert torch.equal(a, b) and a.dtype == torch.int64
    assert torch.equal(a, a.sort().values) and len(a.unique()) == 95
    assert sorted(torch.bincount(labels[a]).tolist()) == [9] * 5 + [10] * 5
    assert not torch.equal(a, D.stratified_subset(labels, 95, seed=4))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=300), st.data())
def test_stratified_subset_keeps_class_shares(label_list, data):
    labels = torch.tensor(label_list)
    n = len(labels)
    size = data.draw(st.integers(1, n))
    idx = D.stratified_subset(labels, size, seed=data.draw(st.integers(0, 2**31)))
    assert len(idx) == size and len(idx.unique()) == size and 0 <= idx.min() <= idx.max() < n
    full, got = torch.bincount(labels, minlength=10), torch.bincount(labels[idx], minlength=10)
    for c in range(10):
        assert (size * full[c]) // n <= got[c] <= -(-(size * full[c]) // n)


@pytest.mark.parametrize("size", [0, 101, -1, 2.5, True])
def test_stratified_subset_rejects_bad_size(size):
    with pytest.raises(DataError, match="out of range: pick an integer from 1 to 100"):
        D.stratified_subset(torch.arange(100) % 10, size)


def test_subset_method_keeps_test_set(fake):
    folder, _, md5s, _ = fake
    ds = D.load_cifar10(folder, file_md5s=md5s)
    assert ds.subset(None) is ds
    sub = ds.subset(30, seed=1)
    idx = D.stratified_subset(ds.train_labels, 30, seed=1)
    assert torch.equal(sub.train_images, ds.train_images[idx])
    assert torch.equal(sub.train_labels, ds.train_labels[idx])
    assert sub.test_images is ds.test_images and sub.test_labels is ds.test_labels


# --- caching ---------------------------------------------------------------------------------


def _forbid_parsing(monkeypatch):
    def fail(*_):
        raise AssertionError("parsed again instead of using the cache")

    monkeypatch.setattr(D, "_parse_batch", fail)


def test_memo_returns_same_object(fake, monkeypatch):
    folder, _, md5s, _ = fake
    first = D.load_cifar10(folder, file_md5s=md5s)
    _forbid_parsing(monkeypatch)
    assert D.load_cifar10(folder, file_md5s=md5s) is first


def test_disk_cache_reused_across_processes(fake, monkeypatch, tmp_path):
    folder, _, md5s, _ = fake
    first = D.load_cifar10(folder, file_md5s=md5s)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]  # no temp files left
    monkeypatch.setattr(D, "_MEMO", {})  # as if in a new process
    _forbid_parsing(monkeypatch)
    second = D.load_cifar10(folder, file_md5s=md5s)
    assert second is not first and torch.equal(second.train_images, first.train_images)


def test_corrupt_cache_is_rebuilt(fake, monkeypatch, tmp_path):
    folder, _, md5s, _ = fake
    first = D.load_cifar10(folder, file_md5s=md5s)
    (cache,) = (tmp_path / "cache").iterdir()
    for garbage in (b"", b"garbage", cache.read_bytes()[:500]):
        cache.write_bytes(garbage)
        monkeypatch.setattr(D, "_MEMO", {})
        assert torch.equal(D.load_cifar10(folder, file_md5s=md5s).train_images, first.train_images)
        assert cache.stat().st_size > 500  # rewritten whole


def test_changed_source_invalidates_cache(fake, monkeypatch):
    folder, _, md5s, _ = fake
    D.load_cifar10(folder, file_md5s=md5s)
    path = folder / "test_batch"
    batch = _raw(folder, "test_batch")
    batch[b"labels"] = [9 - y for y in batch[b"labels"]]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    os.utime(path, ns=(0, 123))  # a new mtime, even on coarse-grained file systems
    with pytest.raises(DataError, match="test_batch: md5 mismatch"):  # not served from cache
        D.load_cifar10(folder, file_md5s=md5s)
    ds = D.load_cifar10(folder, file_md5s={**md5s, "test_batch": _md5(path)})
    assert ds.test_labels.tolist() == batch[b"labels"]


def test_cache_write_failure_only_warns(fake, monkeypatch, tmp_path):
    folder, _, md5s, _ = fake
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "blocked"))
    with pytest.warns(UserWarning, match="could not cache CIFAR-10"):
        ds = D.load_cifar10(folder, file_md5s=md5s)
    assert len(ds.train_labels) == 100


def test_cifar10_rejects_wrong_dtypes():
    images, labels = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DataError, match="train_images has dtype torch.float32"):
        D.Cifar10(images.float(), labels, images, labels)
    with pytest.raises(DataError, match="test_labels has dtype torch.int64 and shape"):
        D.Cifar10(images, labels, images, labels[:3])


def test_pickled_bytes_round_trip_like_the_official_files(fake):
    """The builder's batches load with the recipe the CIFAR-10 site gives."""
    folder, *_ = fake
    batch = pickle.load(io.BytesIO((folder / "data_batch_1").read_bytes()), encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (20, 3072)
