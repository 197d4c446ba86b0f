"""Exit 0 when this Python already has this checkout installed as `make install` leaves it, else say why.

`make install` runs it before trusting its stamp: a stamp outlives a deleted venv, another PYTHON, or an
editable install that points at another clone. It reads metadata only (importing torch costs seconds).
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
EXTRAS = ("", "dev", "web", "plots")  # the extras `make install` installs


def problems() -> list[str]:
    out = []
    for module in ("engine", "backend", "kavach"):
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or not origin.is_relative_to(REPO):
            out.append(f"{module} is not importable from {REPO} (found: {origin})")
    try:
        requires = metadata.distribution("kavach").requires or []
    except metadata.PackageNotFoundError:
        return [*out, "the kavach distribution is not installed"]
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in EXTRAS):
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{req.name} is not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name} {version} does not satisfy {req.specifier}")
    return out


if __name__ == "__main__":
    found = problems()
    for line in found:
        print(f"python env: {line}", file=sys.stderr)
    sys.exit(1 if found else 0)
