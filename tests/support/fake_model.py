"""A model folder that the registry lists as a usable SD 1.x model (configs only, no
weights): enough for the API's tests, which never load it."""

from __future__ import annotations

import json
from pathlib import Path


def write_fake_model(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    for part, config in {
        "unet": {"sample_size": 8, "cross_attention_dim": 32},
        "vae": {"block_out_channels": [32, 64]},
    }.items():
        (folder / part).mkdir(exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(config))
