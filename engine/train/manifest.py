"""``python -m engine.train.manifest DIR``: list the trainers' checkpoints in DIR as ``DIR/manifest.json``.

Each entry is read from the checkpoint's own record (weights-only), so the manifest says what made
every file: its kind, architecture, dataset, input shape, noise level and the exact command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.train.checkpoint import read_meta

DATASET_TITLES = {"digits": "Digits", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def manifest_entry(path: Path) -> dict[str, Any]:
    """One manifest entry from a trainer checkpoint's ``meta``."""
    from engine.models.loading import safe_torch_load

    checkpoint = safe_torch_load(path, name=path)
    meta, arch = read_meta(path), checkpoint["arch"]
    dataset = meta.get("dataset", "")
    title = DATASET_TITLES.get(dataset, dataset)
    final = (meta.get("final") or {}).get("metrics", {})
    if meta.get("task") == "denoiser":
        sigmas = meta.get("sigmas", [])
        objective = meta["training"]["objective"]
        name = f"{title} DRUNet denoiser ({objective}, sigma {', '.join(f'{s:g}' for s in sigmas)})"
        return {"file": path.name, "name": name, "kind": "denoiser", "arch": arch, "dataset": dataset,
                "input_shape": meta["input_shape"], "num_classes": None, "sigma": None, "sigmas": sigmas,
                "description": f"held-out MSE {', '.join(f'{k} {v:.4f}' for k, v in final.items() if k.startswith('mse'))}",
                "command": meta["command"]}
    noise = meta.get("noise")
    sigma = noise["sigma"] if noise else None
    method = meta["training"]["method"]
    trained = "no noise (off the shelf)" if noise is None else f"{method}, sigma {sigma:g}"
    accuracy = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in final.items())
    return {"file": path.name, "name": f"{title} CNN, {trained}", "kind": "classifier", "arch": arch,
            "dataset": dataset, "input_shape": meta["input_shape"],
            "num_classes": int(checkpoint["arch_kwargs"].get("num_classes", 10)), "sigma": sigma, "sigmas": None,
            "description": f"test {accuracy}" if accuracy else "", "command": meta["command"]}


def write_manifest(folder: Path) -> Path:
    entries = [manifest_entry(p) for p in sorted(folder.glob("*.pt"))]
    out = folder / "manifest.json"
    out.write_text(json.dumps({"models": entries}, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(write_manifest(Path(sys.argv[1] if len(sys.argv) > 1 else "models/demo")))
