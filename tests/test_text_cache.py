"""On-disk cache of the text embeddings: reuse, every key field, untrusted entries, atomic 0644 files, progress."""

import re
import stat
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from lposs.models import clear_text_cache, text_cache_dir, text_classifier
from lposs.models.text_cache import text_weights_fingerprint

TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")
CLASSES = ["cat; kitty", "dog"]


class CountingText(nn.Module):
    """Cheap stand-in CLIP: bag of token embeddings as the text tower, a `visual` part, and a call counter."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(49408, 8, generator=generator), requires_grad=False)
        self.visual = nn.Linear(2, 2)
        self.calls = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table[tokens].sum(dim=1)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-S-16")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh cache folder; the in-memory cache cleared so that every call reaches the disk cache."""
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path / "cache"))
    clear_text_cache()
    yield tmp_path / "cache" / "text_embeddings"
    clear_text_cache()


def _encode(model, tokenizer, classes=CLASSES, templates=TEMPLATES, **kwargs) -> torch.Tensor:
    clear_text_cache()  # only the disk cache may answer
    return text_classifier(model, tokenizer, classes, templates, **kwargs)[0]


def test_second_call_reads_the_cache_and_equals_the_computed_result(cache, tokenizer):
    model = CountingText()
    computed = _encode(model, tokenizer)
    assert model.calls == 1 and len(list(cache.glob("*.pt"))) == 1
    cached = _encode(model, tokenizer)
    assert model.calls == 1  # the encoder did not run
    assert torch.equal(cached, computed) and cached.dtype == torch.float32
    assert torch.equal(cached, _encode(model, tokenizer, model_id=None))


@pytest.mark.parametrize(
    "change",
    ["classes", "alias", "templates", "precision", "model_id", "text_weights", "random_init"],
)
def test_a_changed_key_recomputes(cache, tokenizer, change):
    model = CountingText()
    _encode(model, tokenizer, model_id={"name": "ViT-S-16", "pretrained": "a"})
    kwargs = {"model_id": {"name": "ViT-S-16", "pretrained": "a"}}
    if change == "classes":
        kwargs["classes"] = ["cat; kitty", "bird"]
    elif change == "alias":
        kwargs["classes"] = ["cat; kitten", "dog"]
    elif change == "templates":
        kwargs["templates"] = ("a photo of a {}.", "a sketch of a {}.")
    elif change == "precision":
        kwargs["precision"] = torch.bfloat16
    elif change == "model_id":
        kwargs["model_id"] = {"name": "ViT-S-16", "pretrained": "b"}
    elif change == "text_weights":
        with torch.no_grad():
            model.table[0, 0] += 1.0  # one value of the text tower changed in place
    else:
        model = CountingText(seed=1)  # same name and tag, other random weights
    _encode(model, tokenizer, **kwargs)
    assert model.calls == (1 if change == "random_init" else 2)  # a fresh model counts from 0
    assert len(list(cache.glob("*.pt"))) == 2


def test_fingerprint_covers_the_text_tower_only():
    model = CountingText()
    before = text_weights_fingerprint(model)
    with torch.no_grad():
        model.visual.weight.add_(1.0)
    assert text_weights_fingerprint(model) == before  # image weights do not change text embeddings
    with torch.no_grad():
        model.table[123, 4] = model.table[123, 4] + 1e-3
    assert text_weights_fingerprint(model) != before


def _only_entry(cache: Path) -> Path:
    (entry,) = cache.glob("*.pt")
    return entry


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "wrong_key", "not_finite"])
def test_an_entry_that_does_not_match_is_recomputed(cache, tokenizer, damage):
    model = CountingText()
    computed = _encode(model, tokenizer)
    entry = _only_entry(cache)
    stored = torch.load(entry, weights_only=True)
    if damage == "garbage":
        entry.write_bytes(b"not a torch file")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "wrong_shape":
        torch.save({"key": stored["key"], "embeddings": stored["embeddings"][:2]}, entry)
    elif damage == "wrong_key":
        torch.save({"key": stored["key"].replace("kitty", "puppy"), "embeddings": stored["embeddings"]}, entry)
    else:
        torch.save({"key": stored["key"], "embeddings": stored["embeddings"] * float("nan")}, entry)
    again = _encode(model, tokenizer)
    assert model.calls == 2 and torch.equal(again, computed)
    assert torch.equal(torch.load(entry, weights_only=True)["embeddings"], computed)  # the entry was rewritten


def test_files_are_0644_and_written_atomically(cache, tokenizer, monkeypatch):
    model = CountingText()
    _encode(model, tokenizer)
    assert stat.S_IMODE(_only_entry(cache).stat().st_mode) == 0o644
    assert [p.name for p in cache.iterdir() if p.suffix != ".pt"] == []  # no temporary file left behind

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.warns(RuntimeWarning, match="disk full"):
        _encode(model, tokenizer, classes=["bird"])
    assert len(list(cache.iterdir())) == 1  # neither a partial entry nor a temporary file


def test_location_and_off_switch(tmp_path, monkeypatch, tokenizer):
    monkeypatch.delenv("LPOSS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert text_cache_dir() == tmp_path / "xdg" / "lposs" / "text_embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert text_cache_dir() == tmp_path / "home" / ".cache" / "lposs" / "text_embeddings"
    monkeypatch.setenv("LPOSS_CACHE_DIR", "off")
    assert text_cache_dir() is None
    model = CountingText()
    _encode(model, tokenizer)
    _encode(model, tokenizer)
    assert model.calls == 2 and not (tmp_path / "home" / ".cache").exists()


def test_progress_bar_with_eta(cache, tokenizer, capsys):
    model = CountingText()
    text_classifier(model, tokenizer, ["cat", "dog", "bird"], TEMPLATES, batch_size=2)  # 6 prompts, 3 batches
    err = capsys.readouterr().err
    assert "CLIP text encoding" in err and re.search(r"6/6 \[\d\d:\d\d<\d\d:\d\d", err), err  # count and ETA
    clear_text_cache()
    text_classifier(model, tokenizer, ["cat", "dog", "fish"], TEMPLATES, batch_size=256)  # one batch: no bar
    assert "CLIP text encoding" not in capsys.readouterr().err
