"""Rewrite a journal written before the run ledger to its one encoding of a diverged run.

Before, the tuner stored a diverged run as value −inf (and a held speculative one as
``pending_value`` −inf); sweeps and experiments stored value 0.0 with ``diverged=True``. The
ledger (``ridgeline.runs.ledger``) writes only the latter. This rewrites the journal's lines in
place, atomically, keeping every other byte; each −inf trial already carries ``diverged=True``
(checked). Run it once on a journal no process is writing:

    python scripts/migrate_diverged.py benchmarks/results/landscapes/ridgeline.journal
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ridgeline.runs.ledger import DIVERGED_VALUE

SET_STATE, SET_USER_ATTR = 6, 8  # Optuna's journal op codes


def migrate(lines: list[bytes]) -> tuple[list[bytes], int]:
    diverged = {(op["trial_id"]) for op in map(json.loads, lines)
                if op["op_code"] == SET_USER_ATTR and op["user_attr"].get("diverged") is True}
    out, changed = [], 0
    for line in lines:
        op = json.loads(line)
        if op["op_code"] == SET_STATE and op.get("values") == [-math.inf]:
            if op["trial_id"] not in diverged:
                raise SystemExit(f"trial id {op['trial_id']}: value -inf without diverged=True")
            op["values"] = [DIVERGED_VALUE]
        elif op["op_code"] == SET_USER_ATTR and op["user_attr"].get("pending_value") == -math.inf:
            op["user_attr"]["pending_value"] = None
        else:
            out.append(line)
            continue
        out.append(json.dumps(op, separators=(",", ":")).encode())
        changed += 1
    return out, changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("journal", type=Path)
    path = p.parse_args().journal
    lines = path.read_bytes().splitlines()
    out, changed = migrate(lines)
    tmp = path.with_name(path.name + ".migrating")
    tmp.write_bytes(b"\n".join(out) + b"\n")
    os.replace(tmp, path)
    print(f"{path}: {changed} line(s) rewritten", file=sys.stderr)


if __name__ == "__main__":
    main()
