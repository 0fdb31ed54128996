"""CIFAR-10: find, download, verify, parse and cache the official python-format data set.

The data is read only from the official form (the ``cifar-10-batches-py`` folder or the
``cifar-10-python.tar.gz`` archive) and checked against the published md5 sums, so a run can
never silently train on a truncated or different file. Parsing 180 MB of pickles and md5ing them
on every run is wasteful, so the parsed tensors are memoised per process and cached on disk,
keyed on the source files' size and mtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import numbers
import os
import pickle
import posixpath
import tarfile
import urllib.error
import urllib.request
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ridgeline.errors import DataError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
FILE_MD5S = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
ENV_VAR = "RIDGELINE_DATA"
CACHE_ENV_VAR = "RIDGELINE_CACHE"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
TIMEOUT_S = 60.0  # per socket operation, so a dead server fails instead of hanging a run
_CACHE_VERSION = 1  # bump when the cached layout changes, so old cache files are rebuilt
_CHUNK = 1 << 20

# Only what numpy arrays in the official (Python 2) and in re-pickled (Python 3, protocol 2)
# batches need: the data comes from the internet, and pickle can otherwise run any code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as uint8 NCHW images and int64 labels, kept uint8 so it stays 4x smaller than
    float until a training run moves it to the device. Memoised instances are shared: treat the
    tensors as read-only."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise DataError(
                    f"Cifar10.{split}_images has dtype {images.dtype} and shape "
                    f"{tuple(images.shape)}: pass uint8 images shaped [n, 3, H, W]"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"Cifar10.{split}_labels has dtype {labels.dtype} and shape "
                    f"{tuple(labels.shape)}: pass int64 labels shaped [{len(images)}]"
                )

    def subset(self, train_size: int | None, seed: int = 0) -> Cifar10:
        """A stratified subset of the training set, for cheap tuning runs; the test set is kept
        whole so accuracies stay comparable across subset sizes. ``None`` keeps everything."""
        if train_size is None:
            return self
        idx = stratified_subset(self.train_labels, train_size, seed)
        return dataclasses.replace(
            self, train_images=self.train_images[idx], train_labels=self.train_labels[idx]
        )


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of ``size`` elements drawn so each class keeps its share.

    Each class gets the floor or the ceiling of ``size * class_count / len(labels)``
    (largest-remainder rounding, ties broken by ``seed`` so no class is always favoured), so a
    small subset is as balanced as the full set. Deterministic for a given seed.
    """
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= n:
        raise DataError(
            f"train subset size {size!r} is out of range: pick an integer from 1 to {n} "
            f"(the number of training images)"
        )
    size = int(size)
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = [size * int(c) for c in counts]
    take = [q // n for q in quota]
    tiebreak = torch.randperm(len(classes), generator=gen).tolist()
    by_remainder = sorted(range(len(classes)), key=lambda k: (-(quota[k] % n), tiebreak[k]))
    for k in by_remainder[: size - sum(take)]:
        take[k] += 1
    picks = []
    for cls, k in zip(classes, take, strict=True):
        members = torch.nonzero(labels == cls).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(picks).sort().values.to(torch.int64)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Where to look for the data: the argument, else ``$RIDGELINE_DATA``, else
    ``~/.cache/ridgeline/data``."""
    chosen = root if root is not None else os.environ.get(ENV_VAR) or "~/.cache/ridgeline/data"
    return Path(chosen).expanduser()


def download(url: str, dest: Path, md5: str | None) -> Path:
    """Download ``url`` to ``dest``; atomic, so an interrupted or corrupt download can never be
    mistaken for the data set later: the bytes go to a temp file next to ``dest``, which replaces
    ``dest`` only after the length and md5 check out, and is removed on any failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch(out: BinaryIO) -> None:
        digest, got = hashlib.md5(), 0
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                expected = resp.headers.get("Content-Length")
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # an HTTPError holds the open response; don't leak its socket
                reason = e
            else:
                reason = getattr(e, "reason", e)
            reason = " ".join(str(reason).split())  # keep the message on one line
            raise DataError(
                f"could not download {url}: {reason}; check the URL and your connection, "
                f"or fetch {ARCHIVE_NAME} yourself and pass --data DIR"
            ) from e
        # HTTPResponse.read(n) returns b"" on a dropped connection instead of raising.
        if expected is not None and got < int(expected):
            raise DataError(
                f"download of {url} was cut short at {got} of {expected} bytes: retry, "
                f"or fetch {ARCHIVE_NAME} yourself and pass --data DIR"
            )
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"md5 mismatch for {url} (expected {md5}, got {digest.hexdigest()}): nothing was "
                f"saved to {dest}; retry, or fetch {ARCHIVE_NAME} yourself and pass --data DIR"
            )

    _atomic_write(dest, fetch)
    return dest


_download = download  # load_cifar10's ``download`` flag shadows the function inside it


def load_cifar10(
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    url: str = OFFICIAL_URL,
    file_md5s: dict[str, str] | None = None,
    archive_md5: str | None = ARCHIVE_MD5,
) -> Cifar10:
    """Load CIFAR-10 from ``root`` (see :func:`resolve_root`).

    ``root`` may be the extracted ``cifar-10-batches-py`` folder, the archive, or a folder holding
    either (the folder wins). With ``download=True`` and nothing found, ``url`` is fetched into
    ``root``. Members are checked against ``file_md5s`` (default :data:`FILE_MD5S`; files it does
    not list are not checked) and the archive against ``archive_md5`` (``None`` skips it). A cache
    hit skips the md5 pass: the cache is keyed on the source files' size and mtime, so it only
    ever holds data that passed the check.
    """
    root = resolve_root(root)
    file_md5s = FILE_MD5S if file_md5s is None else file_md5s
    source = _find_source(root)
    if source is None:
        if not download:
            state = "does not exist" if not root.exists() else "holds no CIFAR-10"
            raise DataError(
                f"CIFAR-10 data folder {root} {state} (looked for {FOLDER_NAME}/ and "
                f"{ARCHIVE_NAME}): pass --data DIR or set {ENV_VAR}, or use --download"
            )
        source = _download(url, root / ARCHIVE_NAME, archive_md5).resolve()
    key = _fingerprint(source, file_md5s, archive_md5)
    if key in _MEMO:
        return _MEMO[key]
    cache_file = _cache_file(source)
    data = _load_cache(cache_file, key)
    if data is None:
        data = _parse(source, file_md5s, archive_md5)
        _save_cache(cache_file, key, data)
    _MEMO[key] = data
    return data


_MEMO: dict[str, Cifar10] = {}


def _find_source(root: Path) -> Path | None:
    """The extracted folder or the archive under ``root``, or None if neither is there."""
    if root.is_file():
        return root.resolve()
    if root.is_dir():
        if root.name == FOLDER_NAME or any((root / f).exists() for f in (*TRAIN_FILES, TEST_FILE)):
            return root.resolve()
        for candidate in (root / FOLDER_NAME, root / ARCHIVE_NAME):
            if candidate.exists():
                return candidate.resolve()
    return None


def _needed(file_md5s: dict[str, str]) -> list[str]:
    return sorted({*TRAIN_FILES, TEST_FILE, *file_md5s})


def _fingerprint(source: Path, file_md5s: dict[str, str], archive_md5: str | None) -> str:
    """Cache key: the source files' identity plus the sums they are checked against, so that a
    changed file or a stricter check never reuses data parsed under other conditions."""
    files = [source] if source.is_file() else [source / f for f in _needed(file_md5s)]
    stats = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise _missing(path) from None
        stats.append((str(path), st.st_size, st.st_mtime_ns))
    return json.dumps(
        [_CACHE_VERSION, stats, sorted(file_md5s.items()), archive_md5], separators=(",", ":")
    )


def _missing(path: Path) -> DataError:
    return DataError(
        f"{path} is missing: the CIFAR-10 folder is incomplete; delete it and download again "
        f"(--download)"
    )


def _corrupt(where: str) -> DataError:
    return DataError(f"{where} is truncated or corrupt: delete it and download again (--download)")


def _parse(source: Path, file_md5s: dict[str, str], archive_md5: str | None) -> Cifar10:
    """Verify and parse every needed member, reading each one once."""
    batches = {}
    for name, where, blob in _members(source, file_md5s, archive_md5):
        expected, got = file_md5s.get(name), hashlib.md5(blob).hexdigest()
        if expected is not None and got != expected:
            raise DataError(
                f"{where}: md5 mismatch (expected {expected}, got {got}): the file is corrupt or "
                f"not the official CIFAR-10; delete it and download again (--download)"
            )
        if name in (*TRAIN_FILES, TEST_FILE):
            batches[name] = _parse_batch(blob, where)
    train = [batches[f] for f in TRAIN_FILES]
    test_images, test_labels = batches[TEST_FILE]
    return Cifar10(
        train_images=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
    )


def _members(
    source: Path, file_md5s: dict[str, str], archive_md5: str | None
) -> Iterator[tuple[str, str, bytes]]:
    """Yield (name, where, bytes) for each needed member of a folder or of the archive. The
    archive is streamed once in its own member order (seeking back in a gzip re-inflates it), so
    it never has to be extracted to disk."""
    needed = _needed(file_md5s)
    if source.is_dir():
        for name in needed:
            path = source / name
            try:
                yield name, str(path), path.read_bytes()
            except FileNotFoundError:
                raise _missing(path) from None
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from e
        return
    if archive_md5 is not None and (got := md5_file(source)) != archive_md5:
        raise DataError(
            f"{source}: md5 mismatch (expected {archive_md5}, got {got}): the archive is corrupt "
            f"or not the official CIFAR-10; delete it and download again (--download)"
        )
    seen = set()
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in needed and name not in seen:
                    seen.add(name)
                    yield name, f"{source} (member {member.name})", tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _corrupt(str(source)) from e
    if missing := sorted(set(needed) - seen):
        raise DataError(
            f"{source} lacks {FOLDER_NAME}/{missing[0]}: the archive is truncated or corrupt; "
            f"delete it and download again (--download)"
        )


def md5_file(path: Path) -> str:
    """The md5 of a file, read in chunks (CIFAR-10's files are checked against official sums)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _parse_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [n, 3, 32, 32], int64 [n]). Rows are channel-major (1024 R,
    then 1024 G, then 1024 B bytes, each plane row by row), so a plain reshape gives NCHW."""
    try:
        batch = _Unpickler(io.BytesIO(blob), encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # a damaged pickle can raise almost any exception type
        raise _corrupt(where) from e
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.shape[1:] == (3 * 32 * 32,)
        and labels.shape == data.shape[:1]
        and ((labels >= 0) & (labels < NUM_CLASSES)).all()
    ):
        raise _corrupt(where)
    return data.reshape(-1, 3, 32, 32), labels


def _cache_file(source: Path) -> Path:
    """One cache file per source path (the key inside tells whether it is current), so a changed
    source overwrites its stale cache instead of piling up 180 MB files."""
    folder = Path(os.environ.get(CACHE_ENV_VAR) or "~/.cache/ridgeline").expanduser()
    return folder / f"cifar10-{hashlib.sha256(str(source).encode()).hexdigest()[:16]}.pt"


def _load_cache(path: Path, key: str) -> Cifar10 | None:
    """The cached data if ``path`` holds it under ``key``; None on a miss. A missing, stale,
    partial or foreign cache file is a miss, never an error: it is rebuilt from the source."""
    try:
        blob = torch.load(path, weights_only=True)
        if blob["key"] != key:
            return None
        return Cifar10(**{f.name: blob[f.name] for f in dataclasses.fields(Cifar10)})
    except Exception:
        return None


def _save_cache(path: Path, key: str, data: Cifar10) -> None:
    """Write the cache atomically; failing to write it (read-only home, full disk) only costs
    speed next time, so it warns instead of failing the run."""
    blob = {"key": key, **{f.name: getattr(data, f.name) for f in dataclasses.fields(Cifar10)}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: torch.save(blob, f))
    except OSError as e:
        warnings.warn(f"could not cache CIFAR-10 at {path}: {e}", stacklevel=3)


def _atomic_write(dest: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write`` on a fresh temp file beside ``dest`` and move it into place only if it
    succeeds, so readers see the old file or the complete new one, never a partial one."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
