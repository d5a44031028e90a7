"""The segmentor against a straightforward re-implementation of SPEC steps 2-12 written here (any DINO patch size),
and refining external scores (``Segmentor.refine``)."""

import mmcv
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F
from lp_reference import normalised, reference_patch_graph, reference_pixel_graph

from lposs.segmentation import Segmentor, SegmentorSettings

ALIAS_TO_CLASS = torch.tensor([0, 0, 1, 2, 2, 2])  # class 0: two aliases, class 2: three


class FakeBackbones:
    """Fixed random 'backbones': features and scores are fixed functions of the pixels of each patch of a window."""

    def __init__(self, dim=32, aliases=6, patch_size=16):
        g = torch.Generator().manual_seed(0)
        self.feature_proj = torch.randn(dim, 3 * 4, generator=g)
        self.text = F.normalize(torch.randn(aliases, 3 * 4, generator=g), dim=1)
        self.alias_to_class = ALIAS_TO_CLASS
        self.device = torch.device("cpu")
        self.patch_size = patch_size

    def patch_descriptors(self, windows):
        # 2 x 2 average colours of each patch: [B, 12, gh, gw]
        b, _, h, w = windows.shape
        p = self.patch_size
        pooled = F.avg_pool2d(windows, p // 2)  # [B, 3, 2 h / p, 2 w / p]
        return pooled.reshape(b, 3, h // p, 2, w // p, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 12, h // p, w // p)

    def __call__(self, windows):
        desc = self.patch_descriptors(windows) - 0.5  # centred, so that features spread over the sphere
        # Window context, as a transformer has: a patch seen in two overlapping windows gets two features
        # (identical features would make the kNN order hang on tie-breaking).
        context = desc + desc.mean(dim=(2, 3), keepdim=True)
        feats = F.normalize(torch.einsum("dc,bchw->bdhw", self.feature_proj, context), dim=1)
        scores = torch.einsum("ac,bchw->bahw", self.text, F.normalize(desc, dim=1))
        return feats, scores


def scipy_cg_columns(s, y, alpha, maxiter=10, tol=1e-6):
    lap = (sp.eye(s.shape[0]) - alpha * s).tocsr()
    return np.stack([spla.cg(lap, y[:, j], rtol=tol, atol=0.0, maxiter=maxiter)[0] for j in range(y.shape[1])], axis=1)


def reference_scores(image, backbones, st: SegmentorSettings):
    """SPEC steps 2-12 spelled out with loops, mmcv and SciPy."""
    resized = mmcv.imrescale(image, (st.long_side, st.short_side))  # step 2 (mmcv's own rescale)
    h, w = resized.shape[:2]
    x = torch.from_numpy(resized).permute(2, 0, 1).float() / 255
    boxes = []
    n_h = max(h - st.crop + st.stride - 1, 0) // st.stride + 1  # step 3
    n_w = max(w - st.crop + st.stride - 1, 0) // st.stride + 1
    for i in range(n_h):
        for j in range(n_w):
            y2 = min(i * st.stride + st.crop, h)
            x2 = min(j * st.stride + st.crop, w)
            boxes.append((max(y2 - st.crop, 0), y2, max(x2 - st.crop, 0), x2))
    if st.crop == 0:  # the whole image; the backbones see its top-left part, a multiple of the patch (as CLIP's conv)
        boxes = [(0, h, 0, w)]
    feats, scores, centres = [], [], []
    for y1, y2, x1, x2 in boxes:  # steps 4-7, one window at a time
        seen_h, seen_w = y2 - y1, x2 - x1
        if st.crop == 0:
            seen_h, seen_w = (
                seen_h // backbones.patch_size * backbones.patch_size,
                seen_w // backbones.patch_size * backbones.patch_size,
            )
        f, s = backbones(x[None, :, y1 : y1 + seen_h, x1 : x1 + seen_w])
        gh, gw = f.shape[-2:]
        for a in range(gh):
            for b in range(gw):
                feats.append(f[0, :, a, b])
                scores.append(s[0, :, a, b])
                p = backbones.patch_size  # DINO's patch: the graph's nodes
                centres.append((y1 + p / 2 + p * a, x1 + p / 2 + p * b))
    feats, scores, centres = torch.stack(feats), torch.stack(scores), torch.tensor(centres, dtype=torch.float32)
    if st.patch_propagation:  # step 8
        graph = normalised(reference_patch_graph(feats, centres, st.k, st.gamma, st.sigma, st.pix_dist_pow))
        scores = torch.from_numpy(scipy_cg_columns(graph, scores.double().numpy(), st.alpha)).float()
    canvas = torch.zeros(scores.shape[1], h, w)  # step 9
    count = torch.zeros(1, h, w)
    per_window = scores.reshape(len(boxes), gh, gw, -1).permute(0, 3, 1, 2)
    for (y1, y2, x1, x2), z in zip(boxes, per_window):
        canvas[:, y1:y2, x1:x2] += F.interpolate(
            z[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
        )[0]
        count[:, y1:y2, x1:x2] += 1
    canvas /= count
    if st.pixel_refine:  # step 10
        graph = normalised(reference_pixel_graph(x, st.tau, st.r))
        flat = scipy_cg_columns(graph, canvas.reshape(canvas.shape[0], -1).T.double().numpy(), st.alpha)
        canvas = torch.from_numpy(flat.T.reshape(canvas.shape)).float()
    classes = torch.stack([canvas[ALIAS_TO_CLASS == c].max(0).values for c in range(3)])  # step 11
    return F.interpolate(classes[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]  # step 12


SMALL = dict(short_side=96, crop=64, stride=32, k=30, r=5, tau=0.05)


@pytest.mark.parametrize(
    ("settings", "patch"),
    [
        (SegmentorSettings(patch_propagation=False, **SMALL), 16),
        (SegmentorSettings(**SMALL), 16),
        (SegmentorSettings(pixel_refine=True, **SMALL), 16),
        (SegmentorSettings(**SMALL), 8),  # DINO ViT-B/8's patches: 64 per window, centres 4 + 8 a
        # crop=0, the whole 115 x 96 image: a 7 x 6 grid (the last 3 rows unseen), its scores stretched to 115 x 96
        (SegmentorSettings(**{**SMALL, "crop": 0}), 16),
        (SegmentorSettings(pixel_refine=True, **{**SMALL, "crop": 0}), 8),  # a 14 x 12 grid
    ],
    ids=["maskclip", "lposs", "lposs_plus", "lposs-patch8", "lposs-crop0", "lposs_plus-crop0-patch8"],
)
def test_segmentor_equals_spec_reimplementation(settings, patch):
    # Noise, so that no two patches have near-equal features (the kNN order would then hang on rounding).
    image = np.random.default_rng(1).integers(0, 256, size=(120, 100, 3)).astype(np.uint8)
    backbones = FakeBackbones(patch_size=patch)
    ours = Segmentor(backbones, settings).predict_scores(image)
    ref = reference_scores(image, backbones, settings)
    assert ours.shape == (3, 120, 100)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    labels = Segmentor(backbones, settings).predict(image)
    margin = ref.topk(2, dim=0).values
    clear = (margin[0] - margin[1] > 1e-3).numpy()
    np.testing.assert_array_equal(labels[clear], ref.argmax(0).numpy()[clear])


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="uint8 RGB"):
        Segmentor(FakeBackbones()).predict(np.zeros((20, 20), np.uint8))


def test_one_encoding_propagated_with_other_settings_equals_their_own_run():
    image = np.random.default_rng(2).integers(0, 256, size=(90, 70, 3)).astype(np.uint8)
    backbones = FakeBackbones()
    base = SegmentorSettings(**SMALL)
    segmentor = Segmentor(backbones, base)
    encoding = segmentor.encode(image)
    for changes in ({"k": 10}, {"alpha": 0.8, "pixel_refine": True}, {"patch_propagation": False}):
        other = SegmentorSettings(**{**SMALL, **changes})
        ours = segmentor.propagate(encoding, other)
        torch.testing.assert_close(ours, Segmentor(backbones, other).predict_scores(image), rtol=0, atol=0)
    with pytest.raises(ValueError, match="crop"):
        segmentor.propagate(encoding, SegmentorSettings(**{**SMALL, "crop": 48}))


def test_crop_must_be_a_multiple_of_the_backbones_patch_sizes():
    backbones = FakeBackbones(patch_size=8)
    backbones.patch_sizes = (16, 8)  # CLIP /16, DINO /8
    Segmentor(backbones, SegmentorSettings(**SMALL))  # 64: fine
    with pytest.raises(
        ValueError,
        match=r"crop=56: expected 0 \(the whole image\) or a multiple of the backbones' patch sizes \(16, 8\)",
    ):
        Segmentor(backbones, SegmentorSettings(**{**SMALL, "crop": 56}))


def test_whole_image_smaller_than_the_patch_multiple_is_one_line():
    backbones = FakeBackbones(patch_size=8)
    backbones.patch_sizes = (16, 8)
    segmentor = Segmentor(backbones, SegmentorSettings(short_side=12, crop=0))
    with pytest.raises(ValueError, match=r"crop=0 \(whole image\): the resized image is 12 x 18, smaller than 16"):
        segmentor.predict(np.zeros((20, 30, 3), np.uint8))


def plain_backbones(patch_size=16):
    """FakeBackbones with one alias per class: class scores are the propagated columns themselves."""
    backbones = FakeBackbones(patch_size=patch_size)
    backbones.alias_to_class = torch.arange(6)
    return backbones


REFINE_SETTINGS = [{"patch_propagation": False}, {}, {"pixel_refine": True}, {"crop": 0}]


@pytest.mark.parametrize("changes", REFINE_SETTINGS, ids=["maskclip", "lposs", "lposs_plus", "lposs-crop0"])
def test_refine_with_the_segmentors_own_window_scores_is_predict(changes):
    """Its own window scores (and boxes) handed back as external scores give predict_scores bit for bit."""
    image = np.random.default_rng(3).integers(0, 256, size=(90, 70, 3)).astype(np.uint8)
    segmentor = Segmentor(plain_backbones(), SegmentorSettings(**{**SMALL, **changes}))
    encoding = segmentor.encode(image)
    expected = segmentor.predict_scores(image)
    assert torch.equal(segmentor.refine(image, encoding.scores, encoding.boxes), expected)
    assert torch.equal(segmentor.refine(image, encoding.scores), expected)  # the default boxes are its windows
    assert segmentor.boxes(image) == encoding.boxes


def bilinear_by_hand(scores: torch.Tensor, y: float, x: float, size) -> torch.Tensor:
    """A [C, H', W'] map covering an image of `size` (h, w), read at image point (y, x): pixel (i, j) of the map is
    centred at ((i + 0.5) h / H', (j + 0.5) w / W'); clamped at the outer centres."""
    rows, cols = scores.shape[1:]
    u = min(max(y * rows / size[0] - 0.5, 0.0), rows - 1.0)
    v = min(max(x * cols / size[1] - 0.5, 0.0), cols - 1.0)
    i, j = int(u), int(v)
    i1, j1, a, b = min(i + 1, rows - 1), min(j + 1, cols - 1), u - i, v - j
    top = (1 - b) * scores[:, i, j] + b * scores[:, i, j1]
    return (1 - a) * top + a * ((1 - b) * scores[:, i1, j] + b * scores[:, i1, j1])


@pytest.mark.parametrize("patch", [16, 8])
def test_refine_whole_image_scores_sampled_at_the_patch_centres(patch):
    """A [C, H', W'] map of any size: each window's Y is the map read at its patches' centres (by hand here)."""
    image = np.random.default_rng(4).integers(0, 256, size=(90, 70, 3)).astype(np.uint8)
    segmentor = Segmentor(plain_backbones(patch), SegmentorSettings(pixel_refine=True, **SMALL))
    score_map = torch.rand(3, 23, 17, generator=torch.Generator().manual_seed(5))  # coarser than the image
    encoding = segmentor.encode(image)
    size = tuple(encoding.image.shape[1:])
    gh, gw = encoding.features.shape[2:]
    by_hand = torch.stack(
        [
            torch.stack(
                [
                    torch.stack(
                        [
                            bilinear_by_hand(score_map, y1 + patch * (a + 0.5), x1 + patch * (b + 0.5), size)
                            for b in range(gw)
                        ],
                        -1,
                    )
                    for a in range(gh)
                ],
                -2,
            )
            for y1, _, x1, _ in encoding.boxes
        ]
    )  # [B, 3, gh, gw]
    torch.testing.assert_close(
        segmentor.refine(image, score_map), segmentor.refine(image, by_hand), rtol=1e-5, atol=1e-6
    )


def test_refine_window_scores_on_another_grid_are_resized_bilinearly():
    image = np.random.default_rng(6).integers(0, 256, size=(90, 70, 3)).astype(np.uint8)
    segmentor = Segmentor(plain_backbones(), SegmentorSettings(**SMALL))
    boxes = segmentor.encode(image).boxes
    coarse = torch.rand(len(boxes), 2, 3, 3, generator=torch.Generator().manual_seed(7))
    resized = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)  # the 4 x 4 grid of 64 / 16
    ours = segmentor.refine(image, coarse, boxes)
    assert ours.shape == (2, 90, 70) and torch.equal(ours, segmentor.refine(image, resized, boxes))
    with pytest.raises(ValueError, match=rf"\[{len(boxes)}, C, h, w\] for its {len(boxes)} windows"):
        segmentor.refine(image, coarse[:1], boxes)
    with pytest.raises(ValueError, match="one size"):
        segmentor.refine(image, coarse[:2], [(0, 64, 0, 64), (0, 32, 0, 32)])
