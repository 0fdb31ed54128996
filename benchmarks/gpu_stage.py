"""Stage CIFAR-10 onto a device machine in pieces that fit one device call each.

A device call carries at most 64 MiB, the working tree included, and CIFAR-10 is 178 MiB. So
``split`` cuts the concatenated data files into equal parts of at most ``--max-mib`` MiB (default
54, hence 4 parts) in a git-ignored folder, with a manifest of every file's and every part's
size and md5; each call carries one part; ``join``, on the device, checks every part, puts the
files back together and checks each one against the manifest and the official sums.

    PYTHONPATH=src python benchmarks/gpu_stage.py split    # ../shared/data/... -> stage/
    PYTHONPATH=src python benchmarks/gpu_stage.py join     # stage/ -> stage/cifar-10-batches-py

benchmarks/gpu_paper.md gives the device calls. Errors are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

from ridgeline.cifar.data import FILE_MD5S, FOLDER_NAME, md5_file
from ridgeline.errors import DataError, RidgelineError

MIB = 1 << 20
PART_PREFIX = "cifar10.part"
MANIFEST = "manifest.json"
CALL_LIMIT_MIB = 64  # one device call: working tree + carried paths
DEFAULT_SRC = Path("../shared/data") / FOLDER_NAME
DEFAULT_STAGE = Path("stage")  # /stage*/ is in .gitignore
_BLOCK = 4 * MIB


def _tmp(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")


def part_plan(total: int, max_mib: float) -> tuple[int, int]:
    """(number of parts, bytes per part, the last may be shorter): the fewest equal parts of at
    most ``max_mib`` MiB."""
    max_bytes = int(max_mib * MIB)
    if max_bytes < 1:
        raise RidgelineError(f"--max-mib {max_mib} is too small: pass a positive size")
    n_parts = max(1, math.ceil(total / max_bytes))
    return n_parts, max(1, math.ceil(total / n_parts))


def split(src: Path = DEFAULT_SRC, out: Path = DEFAULT_STAGE, max_mib: float = 54.0,
          names: list[str] | None = None) -> dict:
    """Cut ``names`` (default: every file the loader checks) of ``src`` into the fewest equal
    parts of at most ``max_mib`` MiB under ``out``; returns the manifest (also written there)."""
    src, out = Path(src), Path(out)
    names = sorted(FILE_MD5S) if names is None else list(names)
    files = []
    for name in names:
        path = src / name
        if not path.is_file():
            raise DataError(f"{path} is missing: pass --src, the folder holding {', '.join(names)}")
        files.append({"name": name, "size": path.stat().st_size, "md5": md5_file(path)})
    total = sum(f["size"] for f in files)
    n_parts, part_size = part_plan(total, max_mib)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{PART_PREFIX}*"):
        stale.unlink()
    (out / MANIFEST).unlink(missing_ok=True)

    def source_blocks():
        for f in files:
            with open(src / f["name"], "rb") as fh:
                while block := fh.read(_BLOCK):
                    yield block

    parts, blocks, pending = [], source_blocks(), b""
    for k in range(1, n_parts + 1):
        dest = out / f"{PART_PREFIX}{k}"
        tmp, digest, size = _tmp(dest), hashlib.md5(), 0
        with open(tmp, "wb") as fh:
            while size < part_size:
                if not pending:
                    pending = next(blocks, b"")
                    if not pending:
                        break
                take, pending = pending[:part_size - size], pending[part_size - size:]
                fh.write(take)
                digest.update(take)
                size += len(take)
        os.replace(tmp, dest)
        parts.append({"name": dest.name, "size": size, "md5": digest.hexdigest()})
    manifest = {"format": 1, "source": str(src), "total": total, "files": files, "parts": parts}
    tmp = _tmp(out / MANIFEST)
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)  # written last: a manifest means the parts are complete
    return manifest


def join(stage: Path = DEFAULT_STAGE, dest: Path | None = None, official: bool = True) -> dict:
    """Check every part, rebuild the files into ``dest`` (default ``stage/cifar-10-batches-py``)
    and check each one's md5 against the manifest and, with ``official``, against the official
    sums of the files that have one. Raises DataError (one line) on anything missing or wrong,
    leaving no partial file behind; returns {"dest", "files": {name: md5}, "bytes"}."""
    stage = Path(stage)
    dest = Path(dest) if dest is not None else stage / FOLDER_NAME
    try:
        manifest = json.loads((stage / MANIFEST).read_text())
        files, parts = manifest["files"], manifest["parts"]
    except FileNotFoundError:
        raise DataError(f"{stage / MANIFEST} is missing: carry it with part 1") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{stage / MANIFEST} is not a gpu_stage manifest ({e}): split again "
                        f"and carry it") from None
    for f in files:
        want = FILE_MD5S.get(f["name"])
        if official and want is not None and f["md5"] != want:
            raise DataError(f"manifest lists {f['name']} with md5 {f['md5']}, not the official "
                            f"{want}: split the official CIFAR-10 again")
    for p in parts:  # first pass: every part whole, so an error names the part to re-carry
        path = stage / p["name"]
        if not path.is_file():
            raise DataError(f"{path} is missing: carry it (one part per device call)")
        size = path.stat().st_size
        if size != p["size"] or (got := md5_file(path)) != p["md5"]:
            got = "not read" if size != p["size"] else got
            raise DataError(f"{path} is corrupt ({size} bytes, md5 {got}; expected {p['size']} "
                            f"bytes, md5 {p['md5']}): carry it again")
    if sum(p["size"] for p in parts) != sum(f["size"] for f in files):
        raise DataError(f"{stage / MANIFEST}: the parts and the files differ in length: split "
                        f"again and carry every part")
    dest.mkdir(parents=True, exist_ok=True)
    blocks, pending = _blocks(stage / p["name"] for p in parts), b""
    done: list[tuple[Path, Path]] = []
    try:
        for f in files:  # second pass: rebuild each file to a temp name, then check it
            tmp, digest, left = _tmp(dest / f["name"]), hashlib.md5(), f["size"]
            done.append((tmp, dest / f["name"]))
            with open(tmp, "wb") as out:
                while left:
                    if not pending:
                        pending = next(blocks)  # lengths were checked: it cannot run out
                    block, pending = pending[:left], pending[left:]
                    out.write(block)
                    digest.update(block)
                    left -= len(block)
            if digest.hexdigest() != f["md5"]:
                raise DataError(f"{f['name']}: md5 {digest.hexdigest()} after joining, not "
                                f"{f['md5']}: split again and carry every part")
        for tmp, final in done:
            os.replace(tmp, final)
        done = []
    finally:
        blocks.close()
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
    return {"dest": str(dest), "files": {f["name"]: f["md5"] for f in files},
            "bytes": manifest["total"]}


def _blocks(paths):
    """The files' bytes one after the other, in blocks."""
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                yield block


def tree_mib(root: Path = Path(".")) -> float | None:
    """MiB of what a device call sends by itself (tracked + untracked-not-ignored files), or
    None outside a git checkout."""
    try:
        cmd = ["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"]
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = [root / p for p in out.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file()) / MIB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="cut the data files into parts (here, before the calls)")
    s.add_argument("--src", type=Path, default=DEFAULT_SRC, help=f"default {DEFAULT_SRC}")
    s.add_argument("--out", type=Path, default=DEFAULT_STAGE, help="git-ignored folder (stage)")
    s.add_argument("--max-mib", type=float, default=54.0, help="largest part, MiB (54)")
    j = sub.add_parser("join", help="check the parts and rebuild the files (on the device)")
    j.add_argument("--stage", type=Path, default=DEFAULT_STAGE, help="folder of the parts")
    j.add_argument("--dest", type=Path, help=f"default STAGE/{FOLDER_NAME}")
    j.add_argument("--allow-unofficial", action="store_true",
                   help="check against the manifest only (tests' fake CIFAR-10)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "split":
            m = split(args.src, args.out, args.max_mib)
            tree = tree_mib()
            for part in m["parts"]:
                size = part["size"] / MIB
                line = f"{args.out / part['name']}: {size:.1f} MiB"
                if tree is not None:
                    line += f" + working tree {tree:.1f} MiB = {size + tree:.1f} MiB"
                    if size + tree > CALL_LIMIT_MIB:
                        line += f"  OVER the {CALL_LIMIT_MIB} MiB a call carries"
                print(line)
            print(f"{args.out / MANIFEST}: {len(m['files'])} files, {m['total'] / MIB:.1f} MiB")
        else:
            r = join(args.stage, args.dest, official=not args.allow_unofficial)
            print(f"joined {len(r['files'])} files ({r['bytes'] / MIB:.1f} MiB) into {r['dest']}, "
                  f"md5 checked")
    except RidgelineError as e:
        print(f"gpu_stage: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
