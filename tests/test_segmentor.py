"""The segmentor against a straightforward re-implementation of SPEC steps 2-12 written here."""

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
    """Fixed random 'backbones': features and scores are fixed functions of the pixels of each window."""

    def __init__(self, dim=32, aliases=6):
        g = torch.Generator().manual_seed(0)
        self.feature_proj = torch.randn(dim, 3 * 4, generator=g)
        self.text = F.normalize(torch.randn(aliases, 3 * 4, generator=g), dim=1)
        self.alias_to_class = ALIAS_TO_CLASS
        self.device = torch.device("cpu")

    def patch_descriptors(self, windows):
        # 2 x 2 average colours of each patch: [B, 12, gh, gw]
        b, _, h, w = windows.shape
        pooled = F.avg_pool2d(windows, 8)  # [B, 3, h/8, w/8]
        return pooled.reshape(b, 3, h // 16, 2, w // 16, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 12, h // 16, w // 16)

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
    feats, scores, centres = [], [], []
    for y1, y2, x1, x2 in boxes:  # steps 4-7, one window at a time
        f, s = backbones(x[None, :, y1:y2, x1:x2])
        gh, gw = f.shape[-2:]
        for a in range(gh):
            for b in range(gw):
                feats.append(f[0, :, a, b])
                scores.append(s[0, :, a, b])
                centres.append((y1 + 8 + 16 * a, x1 + 8 + 16 * b))
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
    "settings",
    [
        SegmentorSettings(patch_propagation=False, **SMALL),
        SegmentorSettings(**SMALL),
        SegmentorSettings(pixel_refine=True, **SMALL),
    ],
    ids=["maskclip", "lposs", "lposs_plus"],
)
def test_segmentor_equals_spec_reimplementation(settings):
    # Noise, so that no two patches have near-equal features (the kNN order would then hang on rounding).
    image = np.random.default_rng(1).integers(0, 256, size=(120, 100, 3)).astype(np.uint8)
    backbones = FakeBackbones()
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
