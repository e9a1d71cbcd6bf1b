"""Does a zoo build reproduce another one? Compare every file of two zoo directories by SHA-256.

``qaflora zoo build --out DIR`` is meant to reproduce the shipped zoo byte for byte; this prints
one row per file (``same`` / ``DIFF`` / ``missing``) and exits non-zero if anything differs.
``build_info.json`` is skipped: it holds wall-clock seconds.

    python benchmarks/zoo_compare.py core/zoo/artifacts /tmp/zoo
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

SKIPPED = {"build_info.json"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def compare(left: Path, right: Path) -> list[tuple[str, str, str, str]]:
    """Rows ``(status, relative path, left digest, right digest)`` over both trees' files."""
    names = sorted(
        {str(p.relative_to(root)) for root in (left, right) for p in root.rglob("*") if p.is_file()} - SKIPPED
    )
    rows = []
    for name in names:
        a, b = left / name, right / name
        da = digest(a) if a.is_file() else "-"
        db = digest(b) if b.is_file() else "-"
        status = "missing" if "-" in (da, db) else "same" if da == db else "DIFF"
        rows.append((status, name, da, db))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    args = parser.parse_args()
    rows = compare(args.left, args.right)
    width = max(len(name) for _, name, _, _ in rows)
    for status, name, da, db in rows:
        print(f"{status:8} {name:{width}}  {da}  {db}")
    differing = sum(status != "same" for status, *_ in rows)
    print(f"{len(rows) - differing} of {len(rows)} files identical")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
