"""Config overrides that swap the paper's backbones for tiny random-weight ones of the same architectures."""

TINY_OVERRIDES = [
    "model.clip.name=ViT-S-16",
    "model.clip.pretrained=null",
    "model.dino.name=vit_small_patch16_224.dino",
    "model.dino.pretrained=null",
    "model.templates=single",  # one prompt per alias: 80 templates take minutes on a CPU
]
