"""Demo models for `make run`: every entry of models/demo/manifest.json, registered once per owner.

A demo model is known by its stored file name, ``demo-<file>`` in the owner's model folder, so no
column marks it: a second start adds nothing, and a demo model the owner deleted comes back on the
next start (KAVACH_DEMO_MODELS=0 turns seeding off). Each file goes through the upload checks; an
entry that fails them is skipped with a warning.

A start that finds every entry registered reads the manifest and one query's answer, nothing more: the
upload checks (the model sandbox, torch) and the built-in datasets are imported only for an entry to add.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog
from pydantic import ValidationError
from sqlmodel import Session, select

from backend import storage
from backend.crud import create_model_row
from backend.models import Model, ModelCreate, Owner

log = structlog.get_logger("kavach.demo")
REPO = Path(__file__).resolve().parents[1]
PREFIX = "demo-"
MODEL_FIELDS = ("name", "kind", "format", "arch", "input_shape", "num_classes", "class_names", "input_max", "mean",
                "std", "dataset", "sigma")


class Skipped(ValueError):
    """The manifest entry cannot be registered; the message says why."""


@dataclass
class Seeding:
    added: list[Model] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # the entry's file (or position) -> why


def demo_dir() -> Path:
    return Path(os.environ.get("KAVACH_DEMO_DIR") or REPO / "models" / "demo")


def read_manifest(folder: Path) -> list[dict]:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return []
    entries = json.loads(manifest.read_text())["models"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{manifest}: 'models' must be a list of objects")
    return entries


def entry_file(entry: dict) -> str:
    name = entry.get("file")
    if not isinstance(name, str) or not name or PurePosixPath(name).name != name or name.startswith("."):
        raise Skipped(f"'file' must name a file in the demo folder, got {name!r}")
    return name


def register(session: Session, owner: Owner, entry: dict, folder: Path, storage_dir: Path, max_bytes: int) -> Model:
    from backend.datasets import builtin_names  # imports torch
    from backend.modelfiles import store_checked  # imports torch

    name = entry_file(entry)
    meta = ModelCreate.model_validate({k: entry[k] for k in MODEL_FIELDS if k in entry})
    if entry.get("dataset") not in builtin_names():
        raise Skipped(f"its dataset {entry.get('dataset')!r} is not installed")
    source = folder / name
    if not source.is_file():
        raise Skipped(f"no file {source}")
    path = storage.owner_folder(storage_dir, "models", owner.id) / (PREFIX + name)
    with source.open("rb") as stream:
        size, fmt = store_checked(stream, path, meta, max_bytes, name)
    return create_model_row(session=session, owner=owner, meta=meta, path=path, size=size, fmt=fmt)


def seed_demo_models(*, session: Session, owner: Owner, storage_dir: Path, max_bytes: int,
                     folder: Path | None = None) -> Seeding:
    """Register the manifest's entries that ``owner`` does not have yet; never raises for a bad entry."""
    folder = demo_dir() if folder is None else folder
    seeding = Seeding()
    try:
        entries = read_manifest(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("demo manifest unreadable, no demo models", folder=str(folder), error=str(error))
        return seeding
    have = {Path(p).name for p in session.exec(select(Model.path).where(Model.owner_id == owner.id))}
    for position, entry in enumerate(entries):
        label = str(entry.get("file") or f"entry {position}")
        if PREFIX + label in have:
            continue
        try:
            seeding.added.append(register(session, owner, entry, folder, storage_dir, max_bytes))
            have.add(PREFIX + label)
        except Exception as error:  # noqa: BLE001  a broken demo entry must never stop the service from starting
            session.rollback()
            why = "; ".join(e["msg"] for e in error.errors()) if isinstance(error, ValidationError) else str(error)
            seeding.skipped[label] = why
            log.warning("demo model skipped", file=label, error=why)
    return seeding
