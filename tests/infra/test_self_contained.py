"""A clone runs every test on its own: no code reads data from outside the repository (issue 15)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.engine.dsrs_data import ROOT

REPO = Path(__file__).resolve().parents[2]
# "../shared", "shared/reference", or a path built as ... / "shared" / ...
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/reference\b|[\"']shared[\"']\s*/")
CODE_DIRS = ("engine", "backend", "kavach", "bench", "tests", "scripts", "frontend/src", "frontend/e2e", "infra")
CODE_SUFFIXES = {".py", ".sh", ".ts", ".tsx", ".mjs", ".js", ".toml", ".ini", ".cfg", ".yaml", ".yml"}
SKIP_PARTS = {"node_modules", "dist", "__pycache__", "data"}


def code_files() -> list[Path]:
    files = [REPO / "Makefile", REPO / ".ci" / "run", REPO / "pyproject.toml"]
    for top in CODE_DIRS:
        for path in (REPO / top).rglob("*"):
            if path.is_file() and path.suffix in CODE_SUFFIXES and not SKIP_PARTS & set(path.relative_to(REPO).parts):
                files.append(path)
    return files


def test_no_code_reads_the_shared_reference_folder():
    files = code_files()
    assert REPO / "tests" / "engine" / "dsrs_data.py" in files and len(files) > 100
    me = Path(__file__).resolve()
    hits = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            for path in files if path.resolve() != me
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


def test_the_pattern_catches_the_forms_that_were_used():
    assert OUTSIDE.search('ROOT = parents[3] / "shared/reference/dsrs_data"')
    assert OUTSIDE.search('parents[2] / "shared" / "reference" / "dsrs_data"')
    assert OUTSIDE.search("cat ../shared/reference/dsrs.md")
    assert not OUTSIDE.search("torch.from_file(path, shared=False)")


def test_the_published_data_is_vendored_in_the_repository():
    vendored = REPO / "tests" / "data" / "dsrs_data"
    if "KAVACH_DSRS_DATA" not in os.environ:
        assert ROOT == vendored
    sampling = vendored / "sampling" / "cohen-cifar-0.50.pth" / "gaussian-None-0.5-50000-0.0005.txt"
    assert sum(line.startswith("o ") for line in sampling.read_text().splitlines()) == 1000
    assert len(list(vendored.rglob("*.txt"))) == 18
    assert "github.com/llylly/DSRS" in (vendored / "README.md").read_text()
    assert "Copyright 2021-2022 Linyi Li" in (vendored / "LICENSE").read_text()
