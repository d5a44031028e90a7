"""Config overrides that swap the paper's backbones for tiny random-weight ones of the same architectures."""

from pathlib import Path

import open_clip

TINY_OVERRIDES = [
    "model.clip.name=ViT-S-16",
    "model.clip.pretrained=null",
    "model.dino.name=vit_small_patch16_224.dino",
    "model.dino.pretrained=null",
    "model.templates=single",  # one prompt per alias: 80 templates take minutes on a CPU
]
# open_clip has no small ViT of patch size 14 (ViT-L-14 is the smallest): these are open_clip's own ViT, 3 blocks of
# width 128, at patch 14 and 32, registered from tests/model_configs/ by `add_tiny_clip_configs`.
TINY_CLIP_14 = "ViT-T-14-test"
TINY_CLIP_32 = "ViT-T-32-test"


def add_tiny_clip_configs() -> None:
    """Make `TINY_CLIP_14` an open_clip model name in this process (open_clip's own `add_model_config`)."""
    if TINY_CLIP_14 not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
