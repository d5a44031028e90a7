"""Config overrides that swap the paper's backbones for tiny random-weight ones of the same architectures."""

from pathlib import Path

import open_clip

# open_clip's own ViT (3 blocks of width 128; a text tower of 2 blocks of width 64) at patch 14, 16 and 32, registered
# from tests/model_configs/ by `add_tiny_clip_configs` (conftest.py does it in every test process, and so in the
# forks of its tests; a process started anew does not have them): open_clip has no small ViT of patch size 14
# (ViT-L-14 is the smallest), and ViT-S-16's 12 text blocks take 15 s for ADE20K's 150 class names.
TINY_CLIP_14 = "ViT-T-14-test"
TINY_CLIP_16 = "ViT-T-16-test"
TINY_CLIP_32 = "ViT-T-32-test"

_TINY_REST = [
    "model.clip.pretrained=null",
    "model.dino.name=vit_small_patch16_224.dino",
    "model.dino.pretrained=null",
    "model.templates=single",  # one prompt per alias: 80 templates take minutes on a CPU
]
TINY_OVERRIDES = ["model.clip.name=ViT-S-16", *_TINY_REST]
# For runs over the benchmarks' long class lists. Which random backbone gives label maps that vary is luck of the
# draw (on the generated images of the voc/voc20 pair, ViT-S-16 gives one class everywhere, this one two to four): a
# check that compares label maps asserts that they vary.
TINY_TEXT_OVERRIDES = [f"model.clip.name={TINY_CLIP_16}", *_TINY_REST]


def add_tiny_clip_configs() -> None:
    """Make the tiny configs of tests/model_configs open_clip model names in this process (its own `add_model_config`)."""
    _register_tiny_trunks()
    if TINY_CLIP_14 not in open_clip.list_models() or TINY_PE not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")


# open_clip towers on timm trunks (EVA02, SigLIP2, PE-Core), tiny: timm's own model functions with embed_dim 64,
# depth 2, 2 heads (every other argument as the real model's, its pretrained_cfg too: mean / std), registered in timm
# under these names by `add_tiny_clip_configs`, and wrapped by open_clip as the real ones (tests/model_configs).
TINY_EVA02 = "EVA02-T-16-test"
TINY_SIGLIP2 = "ViT-T-16-SigLIP2-test"
TINY_PE = "PE-Core-T-16-test"
_TINY_TRUNK_ARGS = {"embed_dim": 64, "depth": 2, "num_heads": 2}
# timm name of the tiny trunk -> the timm model function of the real one
_TINY_TRUNKS = {
    "eva02_test_patch16_clip": "eva02_base_patch16_clip_224",
    "siglip_test_patch16": "vit_base_patch16_siglip_224",
    "pe_core_test_patch16": "vit_pe_core_base_patch16_224",
}


def _register_tiny_trunks() -> None:
    import timm
    from timm.models import model_entrypoint, register_model

    for tiny, real in _TINY_TRUNKS.items():
        if timm.is_model(tiny):
            continue

        def build(pretrained: bool = False, _real: str = real, **kwargs):
            return model_entrypoint(_real)(pretrained=pretrained, **{**_TINY_TRUNK_ARGS, **kwargs})

        build.__name__ = tiny
        register_model(build)


def write_tiny_tokenizer(folder: Path) -> Path:
    """A Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json) standing in for SigLIP2's Gemma one:
    a word-level vocabulary of 40 words, '<pad>' = 0, '<eos>' = 1 appended, '<unk>' = 2 for any other word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = (
        "a photo of the background aeroplane bicycle bird boat bottle bus car cat chair cow dining table dog horse "
        "motorbike person potted plant sheep sofa train tv monitor sky tree grass road building wall floor water"
    ).split()
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{word: 3 + i for i, word in enumerate(dict.fromkeys(words))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}')
    return folder
