"""Print pip constraints that pin every direct dependency to the lowest version pyproject.toml allows.

CI's second pass installs ``-e ".[dev]"`` with these constraints, so the declared floors are
tested, and a dependency added later (in ``dependencies`` or in an extra that ``dev`` pulls in,
directly or through ``qaflora[...]``) is covered without editing CI. What ``uv pip install
--resolution lowest-direct`` does, with pip and one exception:

* torch is pinned to the local CPU build (``torch==2.13.0``), not to the declared floor
  ``torch>=2.4``: PyPI's Linux wheels of torch are multi-GB CUDA builds, and the CPU machines
  we test on carry only that one local build. The torch floor is the one floor not tested.

Usage: ``python .ci/lowest_pins.py [pyproject.toml] > constraints.txt`` (Python >= 3.11).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

# Pins that replace the declared floor, with the reason (see the module docstring).
OVERRIDES = {"torch": "2.13.0"}
ROOT_EXTRA = "dev"

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[^;]*)(?:;.*)?$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_of(spec: str) -> str | None:
    """The lowest version a specifier set allows (``>=``, ``==`` or ``~=``), or None."""
    for clause in spec.split(","):
        match = re.match(r"\s*(>=|==|~=)\s*([^\s,]+)", clause)
        if match:
            return match.group(2)
    return None


def requirements(project: dict, extras: list[str]) -> list[str]:
    """Direct requirements of the project with ``extras``, following ``qaflora[...]`` references."""
    name = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional.get(extra, []):
            match = _REQUIREMENT.match(line)
            if match and canonical(match.group("name")) == name:
                todo.extend(e.strip() for e in (match.group("extras") or "").split(",") if e.strip())
            else:
                found.append(line)
    return found


def pins(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lines: dict[str, str] = {}
    for requirement in requirements(project, [ROOT_EXTRA]):
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        name = canonical(match.group("name"))
        version = OVERRIDES.get(name) or floor_of(match.group("spec"))
        if version is None:
            print(f"# {name}: no lower bound declared, left to the resolver", file=sys.stderr)
            continue
        lines[name] = f"{name}=={version}"
    return [lines[n] for n in sorted(lines)]


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "pyproject.toml"
    print("\n".join(pins(pyproject)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
