"""CLIP heads (maskclip, sclip, clearclip, naclip, proxyclip) against references written from the authors' code.

The model is open_clip's ViT-B-16-quickgelu (the OpenAI CLIP layout that SCLIP and NACLIP load) with random weights,
its last block's query/key weights doubled so that attention is far from uniform, run on two structured 224 x 224
windows. Each comparison is on the features and on their variation between patches (features minus their mean over
the window), so a head that only gets the part common to all patches right cannot pass. ProxyCLIP's proxy is a
28 x 28 grid of features of the windows' 8 x 8 patches (the grid of DINO ViT-B/8, ProxyCLIP's proxy). Other patch
sizes run on open_clip's ViT at patch 14 and 32, tiny.
"""

import copy
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from head_reference import neighbourhood_addition, proxyclip_reference, reference_head, tokens_before_last_block
from tiny_models import TINY_CLIP_14, TINY_CLIP_32
from torch.testing import assert_close

import lposs.models.clip_heads as clip_heads
from lposs.models import CLIP_HEADS, PROXY_BETA, PROXY_GAMMA, dense_clip_features

RTOL = 1e-5
REFINED = ("sclip", "clearclip", "naclip")
ATTENTION_HEADS = CLIP_HEADS[:-1]  # all but proxyclip, which needs proxy features
# (head, planted bug) pairs: each must move the features far outside the tolerance
MUTANTS = [
    ("naclip", {"std": 4.0}),
    ("naclip", {"std": 6.0}),
    ("naclip", {"mutations": ("q_for_k",)}),
    ("sclip", {"mutations": ("q_for_k",)}),
    ("naclip", {"mutations": ("keep_residual",)}),
    ("clearclip", {"mutations": ("keep_residual",)}),
]


def structured_windows(height: int = 224, width: int = 224) -> torch.Tensor:
    """Two [3, H, W] images in [0, 1]: gradients with an edge, and a checkerboard with a sine (no flat image)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    first = torch.stack([xx, yy, (xx > 0.5).float() * 0.8])
    second = torch.stack([(xx * 4).floor() % 2, ((yy * 4).floor() % 2) * 0.7, 0.5 + 0.5 * torch.sin(8 * xx)])
    return torch.stack([first, second])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    width = clip.visual.transformer.width
    with torch.no_grad():
        for param in clip.visual.parameters():  # biases and norms not trivially 0 / 1
            param.add_(0.02 * torch.randn_like(param))
        clip.visual.transformer.resblocks[-1].attn.in_proj_weight[: 2 * width] *= 2.0  # peaked attention
    return clip


@pytest.fixture(scope="module")
def windows():
    return structured_windows()


@pytest.fixture(scope="module")
def tokens(model, windows):
    return tokens_before_last_block(model, windows)


@pytest.fixture(scope="module")
def ours(model, windows):
    """One forward per head: [B, E, 14, 14] each."""
    return {head: dense_clip_features(model, windows, head) for head in ATTENTION_HEADS}


@pytest.fixture(scope="module")
def references(model, tokens):
    return {head: reference_head(model, *tokens, head) for head in ATTENTION_HEADS}


def proxy_of(windows: torch.Tensor, patch: int = 8, channels: int = 24) -> torch.Tensor:
    """Structured proxy features [B, channels, H / patch, W / patch]: a fixed random projection of each patch."""
    weight = torch.randn(channels, 3, patch, patch, generator=torch.Generator().manual_seed(1))
    return F.conv2d(windows - 0.5, weight, stride=patch)


def centred(features: torch.Tensor) -> torch.Tensor:
    """Variation between patches: features [B, E, h, w] minus their mean over the window's patches."""
    return features - features.mean(dim=(2, 3), keepdim=True)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to 1e-5 relative to the features' scale, on the features and on their variation between patches."""
    for a, e in ((actual, expected), (centred(actual), centred(expected))):
        assert_close(a, e, rtol=RTOL, atol=RTOL * e.abs().max().item())


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of the variation between patches, relative to its scale."""
    return ((centred(a) - centred(b)).abs().max() / centred(b).abs().max()).item()


def test_attention_is_far_from_uniform(model, tokens):
    x, _ = tokens
    block = model.visual.transformer.resblocks[-1]
    q = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)[..., : x.shape[-1]]
    q = q.reshape(x.shape[0], -1, 64).transpose(0, 1)  # [B * heads, N, 64]
    weights = torch.softmax(q @ q.transpose(1, 2) / 8, dim=-1)
    assert weights.max(dim=-1).values.mean() > 10 / x.shape[0]  # 10x the uniform weight, on average


@pytest.mark.parametrize("head", ATTENTION_HEADS)
def test_head_equals_its_authors_code(ours, references, head):
    out = ours[head]
    assert out.shape == (2, 512, 14, 14) and out.dtype == torch.float32
    assert_matches(out, references[head])
    assert centred(out).abs().max() > 0.3 * out.abs().max()  # patches do differ


def test_default_is_maskclip_bit_for_bit(model, windows, ours, references):
    """The paper's head is unchanged: the default path gives the very bits of the step-4 reference (same ops)."""
    assert torch.equal(dense_clip_features(model, windows), ours["maskclip"])
    assert torch.equal(ours["maskclip"], references["maskclip"])


def test_every_head_differs_from_every_other(references):
    for first in ATTENTION_HEADS:
        for second in ATTENTION_HEADS:
            if first != second:
                assert distance(references[first], references[second]) > 1000 * RTOL, (first, second)


@pytest.mark.parametrize(("head", "bug"), MUTANTS, ids=[f"{h}-{b}" for h, b in MUTANTS])
def test_planted_bugs_fall_far_outside_the_tolerance(model, tokens, ours, head, bug):
    """A wrong std, q where k belongs or a kept residual changes the features by > 100x the tolerance."""
    assert distance(reference_head(model, *tokens, head, **bug), ours[head]) > 100 * RTOL


def test_wrong_gaussian_std_in_the_code_fails(model, windows, references, monkeypatch):
    monkeypatch.setattr(clip_heads, "NACLIP_GAUSSIAN_STD", 4.0)
    with pytest.raises(AssertionError):
        assert_matches(dense_clip_features(model, windows[:1], "naclip"), references["naclip"][:1])


def test_neighbourhood_bias_equals_naclip_construction():
    for grid in ((14, 14), (10, 14), (3, 5)):
        ours = clip_heads.neighbourhood_bias(grid, clip_heads.NACLIP_GAUSSIAN_STD)
        assert_close(ours, neighbourhood_addition(grid, 5.0), rtol=1e-6, atol=1e-7)
    assert clip_heads.NACLIP_GAUSSIAN_STD == 5.0  # NACLIP's paper and code


def test_naclip_on_a_non_square_window(model):
    """160 x 224: a 10 x 14 grid, so a transposed neighbourhood or a lost row order would show."""
    window = structured_windows(160, 224)[1:]
    out = dense_clip_features(model, window, "naclip")
    assert out.shape == (1, 512, 10, 14)
    assert_matches(out, reference_head(model, *tokens_before_last_block(model, window), "naclip"))


def test_each_window_of_a_batch_is_its_own(model, windows, ours):
    """Attention never mixes windows: one window alone gives its row of the batch."""
    for head in REFINED:
        assert_close(dense_clip_features(model, windows[1:], head), ours[head][1:], rtol=RTOL, atol=1e-5)


def test_half_precision_autocast_and_non_batch_first(model, windows, ours):
    small = windows[:1, :, :64, :80]
    seq_first = copy.deepcopy(model)
    seq_first.visual.transformer.batch_first = False
    for block in seq_first.visual.transformer.resblocks:
        block.attn.batch_first = False
    low = copy.deepcopy(model).to(torch.bfloat16)
    for head in REFINED:
        full = dense_clip_features(model, small, head)
        assert_close(dense_clip_features(seq_first, small, head), full, rtol=1e-4, atol=1e-4)
        half = dense_clip_features(low, small, head)
        assert half.dtype == torch.float32 and F.cosine_similarity(half, full, dim=1).min() > 0.9
        for dtype in (torch.float16, torch.bfloat16):  # float32 weights under autocast, as model.dtype runs them
            with torch.autocast("cpu", dtype=dtype):
                mixed = dense_clip_features(model, small, head)
            assert mixed.dtype == torch.float32 and F.cosine_similarity(mixed, full, dim=1).min() > 0.99


def test_unknown_head_is_refused(model, windows):
    with pytest.raises(ValueError, match="'maskclip2'.*maskclip, sclip, clearclip, naclip, proxyclip"):
        dense_clip_features(model, windows, "maskclip2")
    with pytest.raises(ValueError, match=r"proxyclip.*needs proxy \[2, C, h, w\]"):
        dense_clip_features(model, windows, "proxyclip")
    with pytest.raises(ValueError, match="for head='proxyclip', not 'naclip'"):
        dense_clip_features(model, windows, "naclip", proxy=proxy_of(windows))


# ProxyCLIP: the proxy on a finer grid than CLIP's (28 x 28 against 14 x 14), as DINO ViT-B/8 with ViT-B/16.
PROXY_MUTANTS = [{"mutations": ("row_mean",)}, {"mutations": ("batch_mean",)}, {"mutations": ("keep_residual",)}]
PROXY_MUTANTS += [{"beta": 1.0}, {"gamma": 1.0}]


@pytest.fixture(scope="module")
def proxy(windows):
    return proxy_of(windows)


@pytest.fixture(scope="module")
def proxy_ours(model, windows, proxy):
    return dense_clip_features(model, windows, "proxyclip", proxy=proxy)


def test_proxyclip_equals_its_authors_code(model, tokens, proxy, proxy_ours):
    assert proxy_ours.shape == (2, 512, 28, 28) and proxy_ours.dtype == torch.float32  # on the proxy's grid
    assert_matches(proxy_ours, proxyclip_reference(model, *tokens, proxy))
    assert (PROXY_BETA, PROXY_GAMMA) == (1.2, 3.0)  # ProxyCLIP's defaults


def test_proxy_attention_is_neither_empty_nor_full(proxy):
    """About half of the similarities fall below beta * mean and are cut: the -inf rule matters here."""
    weights = clip_heads.proxy_attention(proxy)
    assert weights.shape == (2, 784, 784) and torch.isfinite(weights).all()
    assert_close(weights.sum(-1), torch.ones(2, 784))
    assert 0.2 < (weights == 0).float().mean() < 0.8


@pytest.mark.parametrize("bug", PROXY_MUTANTS, ids=lambda bug: "-".join(f"{k}={v}" for k, v in bug.items()))
def test_proxyclip_planted_bugs_fall_far_outside_the_tolerance(model, tokens, proxy, proxy_ours, bug):
    """The mean over one axis or over the batch, a kept residual, other constants: > 100x the tolerance."""
    assert distance(proxyclip_reference(model, *tokens, proxy, **bug), proxy_ours) > 100 * RTOL


def test_proxyclip_batch_equals_one_window_at_a_time(model, windows, proxy, proxy_ours):
    """The mean is each window's own: a window alone gives its row of the batch."""
    alone = dense_clip_features(model, windows[1:], "proxyclip", proxy=proxy[1:])
    assert_close(alone, proxy_ours[1:], rtol=RTOL, atol=RTOL * proxy_ours.abs().max().item())


def test_proxyclip_rows_below_the_cut_attend_to_their_own_patch(model, windows, tokens, proxy, proxy_ours, caplog):
    """A window whose proxy features are all alike (every row below beta * mean) and one with a zero feature at
    patch (5, 7) (that row alone): the authors' code gives NaN exactly there, ours the features of attention on
    the patch itself, which the authors' code gives for one-hot proxy features (S = I: only the diagonal is kept);
    everywhere else ours is the authors'."""
    triggering = torch.stack([torch.ones_like(proxy[0]), proxy[1].clone()])
    triggering[1, :, 5, 7] = 0.0
    with caplog.at_level(logging.DEBUG, logger="lposs.models.clip_heads"):
        out = dense_clip_features(model, windows, "proxyclip", proxy=triggering)
    assert "785 of 1568 attention rows fell below beta * mean" in caplog.text
    assert torch.isfinite(out).all()
    theirs = proxyclip_reference(model, *tokens, triggering)
    nan_patches = torch.isnan(theirs).any(dim=1)  # [B, 28, 28]
    expected_nan = torch.zeros_like(nan_patches)
    expected_nan[0] = True
    expected_nan[1, 5, 7] = True
    assert torch.equal(nan_patches, expected_nan)  # the authors' NaN, where the fix applies
    scale = RTOL * theirs[~torch.isnan(theirs)].abs().max().item()
    finite = ~nan_patches[:, None].expand_as(theirs)
    assert_close(out[finite], theirs[finite], rtol=RTOL, atol=scale)
    one_hot = torch.eye(28 * 28).reshape(28 * 28, 28, 28).expand(2, -1, -1, -1)
    own_patch = proxyclip_reference(model, *tokens, one_hot)
    assert_close(out[~finite], own_patch[~finite], rtol=RTOL, atol=scale)
    assert distance(own_patch, proxy_ours) > 100 * RTOL  # attention on the patch itself is not the usual


def test_proxyclip_constants_and_a_non_square_window(model):
    """160 x 224: a 10 x 14 CLIP grid resized to a 20 x 28 proxy grid (rows and columns cannot be swapped)."""
    window = structured_windows(160, 224)[1:]
    proxy = proxy_of(window)
    out = dense_clip_features(model, window, "proxyclip", proxy=proxy, beta=1.1, gamma=2.0)
    assert out.shape == (1, 512, 20, 28)
    expected = proxyclip_reference(model, *tokens_before_last_block(model, window), proxy, beta=1.1, gamma=2.0)
    assert_matches(out, expected)


@pytest.fixture(scope="module")
def other_patch_models():
    """open_clip's ViT at patch 14 and 32 (tiny, registered for the tests), random weights."""
    torch.manual_seed(0)
    return {
        patch: open_clip.create_model(name, pretrained=None).eval()
        for patch, name in ((14, TINY_CLIP_14), (32, TINY_CLIP_32))
    }


@pytest.mark.parametrize("patch", [14, 32])
@pytest.mark.parametrize("head", ["maskclip", "naclip", "proxyclip"])
def test_other_patch_sizes_equal_the_authors_code(other_patch_models, patch, head):
    """ViT-L/14's and ViT-B/32's layout: the pretraining grid at 224, another grid (resized positions) and black
    padding to a multiple of the patch at 200 x 150."""
    model = other_patch_models[patch]
    for windows in (structured_windows(), structured_windows(200, 150)[:1]):
        grid = (-(-windows.shape[-2] // patch), -(-windows.shape[-1] // patch))
        padded = F.pad(windows, (0, grid[1] * patch - windows.shape[-1], 0, grid[0] * patch - windows.shape[-2]))
        tokens = tokens_before_last_block(model, padded)
        if head == "proxyclip":
            proxy = proxy_of(padded, patch=patch // 2)  # a proxy grid twice as fine, as DINO /8 with CLIP /16
            out, expected = (
                dense_clip_features(model, windows, head, proxy=proxy),
                proxyclip_reference(model, *tokens, proxy),
            )
        else:
            out, expected = dense_clip_features(model, windows, head), reference_head(model, *tokens, head)
            assert out.shape[-2:] == grid
        assert_matches(out, expected)
