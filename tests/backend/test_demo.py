"""Demo models: seeded from a manifest into the test service's database and storage, then certified through it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sqlmodel import Session, col, func, select

from backend.crud import create_token, get_or_create_owner
from backend.db import make_engine
from backend.demo import PREFIX, seed_demo_models
from backend.modelfiles import load_registered
from backend.models import Model
from engine.denoise import DRUNet
from engine.models import create_model
from engine.train.checkpoint import save_checkpoint
from tests.backend.test_service import DRUNET_KWARGS, all_rows, start_job, wait_for

DIGITS = {"dataset": "digits", "input_shape": [1, 8, 8], "description": "for the test", "command": "pytest"}


def demo_folder(folder: Path) -> Path:
    """A manifest with a digits classifier and a DRUNet that register, and five entries that must be skipped."""
    torch.manual_seed(0)
    save_checkpoint(folder / "digits_cnn.pt", create_model("digits_cnn", width=4), "digits_cnn",
                    {"num_classes": 10, "width": 4}, {"sigma": 0.25})
    save_checkpoint(folder / "drunet.pt", DRUNet(**DRUNET_KWARGS), "drunet_small", DRUNET_KWARGS, {"sigmas": [0.25]})
    (folder / "elsewhere.pt").write_bytes((folder / "digits_cnn.pt").read_bytes())
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    models = [
        {**DIGITS, "file": "digits_cnn.pt", "name": "demo digits CNN", "kind": "classifier", "arch": "digits_cnn",
         "num_classes": 10, "sigma": 0.25},
        {**DIGITS, "file": "drunet.pt", "name": "demo DRUNet", "kind": "denoiser", "arch": "drunet_small",
         "num_classes": None, "sigma": None, "sigmas": [0.25]},
        {**DIGITS, "file": "broken.pt", "name": "broken", "kind": "classifier", "num_classes": 10},
        {**DIGITS, "file": "missing.pt", "name": "missing", "kind": "classifier", "num_classes": 10},
        {**DIGITS, "file": "elsewhere.pt", "name": "elsewhere", "kind": "classifier", "num_classes": 10,
         "dataset": "imagenet"},
        {**DIGITS, "file": "drunet.pt", "name": "the same file again", "kind": "denoiser"},
        {**DIGITS, "file": "no_classes.pt", "name": "no classes", "kind": "classifier"},
        {**DIGITS, "file": "../digits_cnn.pt", "name": "outside", "kind": "classifier", "num_classes": 10},
    ]
    (folder / "manifest.json").write_text(json.dumps({"models": models}))
    return folder


def test_demo_models_register_once_load_and_certify_and_broken_entries_are_skipped(service, tmp_path):
    folder = demo_folder(tmp_path)
    storage_dir = Path(service.env["STORAGE_DIR"])
    engine = make_engine(service.database_url)
    try:
        with Session(engine) as session:
            service.tokens["carol"] = create_token(session=session, owner_name="carol")
            carol = get_or_create_owner(session=session, name="carol")
            first = seed_demo_models(session=session, owner=carol, storage_dir=storage_dir, max_bytes=10**7,
                                     folder=folder)
            second = seed_demo_models(session=session, owner=carol, storage_dir=storage_dir, max_bytes=10**7,
                                      folder=folder)
            rows = session.exec(select(Model).where(Model.owner_id == carol.id).order_by(col(Model.id))).all()
            count = session.exec(select(func.count(col(Model.id))).where(Model.owner_id == carol.id)).one()
            for empty in (tmp_path / "none", tmp_path / "bad"):
                empty.mkdir()
            (tmp_path / "bad" / "manifest.json").write_text("{not json")
            for empty in (tmp_path / "none", tmp_path / "bad"):
                nothing = seed_demo_models(session=session, owner=carol, storage_dir=storage_dir, max_bytes=10**7,
                                           folder=empty)
                assert nothing.added == [] and nothing.skipped == {}
    finally:
        engine.dispose()

    assert [m.name for m in first.added] == ["demo digits CNN", "demo DRUNet"]
    assert set(first.skipped) == {"broken.pt", "missing.pt", "elsewhere.pt", "no_classes.pt", "../digits_cnn.pt"}
    assert "cannot load the file" in first.skipped["broken.pt"]
    assert "no file" in first.skipped["missing.pt"]
    assert "'imagenet' is not installed" in first.skipped["elsewhere.pt"]
    assert "num_classes is required" in first.skipped["no_classes.pt"]
    assert "must name a file" in first.skipped["../digits_cnn.pt"]
    assert second.added == [] and count == 2
    assert [Path(m.path).name for m in rows] == [PREFIX + "digits_cnn.pt", PREFIX + "drunet.pt"]
    assert not any(p.name.startswith(PREFIX + "broken") for p in storage_dir.glob("models/*/*"))

    for row, out_shape in zip(rows, [(1, 10), (1, 1, 8, 8)], strict=True):
        assert Path(row.path).parent == storage_dir / "models" / str(row.owner_id)
        net = load_registered(row.path, format=row.format.value, arch=row.arch, num_classes=row.num_classes,
                              input_shape=row.input_shape)
        with torch.inference_mode():
            assert tuple(net(torch.zeros(1, 1, 8, 8)).shape) == out_shape

    with service.client("carol") as client:
        listed = client.get("/api/v1/models").json()
        assert listed["count"] == 2 and [m["kind"] for m in listed["data"]] == ["classifier", "denoiser"]
        created = start_job(client, rows[0].id, subset={"count": 4}, denoiser_id=rows[1].id)
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done", job
        assert [r["index"] for r in all_rows(client, job["id"])] == [0, 1, 2, 3]
