"""Graphs built once per image and reused: across settings that share them, and across the class lists of one
encoding (datasets sharing a pass), with each class list's scores equal bit for bit to its own run."""

import numpy as np
import pytest
import torch
from test_segmentor import FakeBackbones

import lposs.segmentation.label_propagation as lp
from lposs.segmentation import Segmentor, SegmentorSettings, propagate_patches, propagate_pixels
from lposs.segmentation.image_graphs import ImageGraphs
from lposs.segmentation.segmentor import ClassColumns

# Small enough for the tests, large enough that every level runs: 2 x 2 windows, pixel level with r = 5.
SMALL = SegmentorSettings(short_side=48, crop=32, stride=16, k=10, r=5, tau=0.05, pixel_refine=True)


def textured(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def two_list_encoding(settings=SMALL):
    """An encoding whose scores hold two class lists (6 and 7 aliases), and the encoding of each list alone."""
    backbones = FakeBackbones(aliases=13)
    segmentor = Segmentor(backbones, settings)
    shared = segmentor.encode(textured())
    alone = []
    for columns in (slice(0, 6), slice(6, 13)):
        encoding = segmentor.encode(textured())
        encoding.scores = encoding.scores[:, columns].contiguous()  # what a backbone with this list alone gives
        alone.append(encoding)
    maps = [torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 3, 3, 3])]
    groups = [ClassColumns(slice(0, 6), maps[0]), ClassColumns(slice(6, 13), maps[1])]
    return segmentor, shared, alone, groups


def alone_scores(segmentor, encoding, alias_to_class, settings):
    segmentor.backbones.alias_to_class = alias_to_class
    return segmentor.propagate(encoding, settings)


@pytest.mark.parametrize(
    "settings",
    [
        SMALL,
        SegmentorSettings(**{**SMALL.__dict__, "pixel_refine": False}),
        SegmentorSettings(**{**SMALL.__dict__, "patch_propagation": False}),
    ],
    ids=["lposs_plus", "lposs", "maskclip"],
)
def test_each_class_list_of_a_shared_encoding_equals_its_own_run_bit_for_bit(settings):
    segmentor, shared, alone, groups = two_list_encoding(settings)
    together = segmentor.propagate_columns(shared, settings, groups)
    for group, encoding, scores in zip(groups, alone, together):
        expected = alone_scores(segmentor, encoding, group.alias_to_class, settings)
        assert scores.shape == expected.shape == (int(group.alias_to_class.max()) + 1, 40, 56)
        assert torch.equal(scores, expected)  # not close: equal, bit for bit
    # one list of a shared encoding on its own (a --resume pass where the other dataset is complete)
    (second,) = segmentor.propagate_columns(shared, settings, groups[1:])
    assert torch.equal(second, together[1])


def test_a_shared_encoding_builds_each_graph_once(builds):
    segmentor, shared, _, groups = two_list_encoding()
    segmentor.propagate_columns(shared, SMALL, groups)
    assert builds == {"patch": 1, "pixel": 1}  # not one per class list


def test_a_grid_over_alpha_and_tol_builds_each_graph_once(builds):
    segmentor = Segmentor(FakeBackbones(), SMALL)
    encoding = segmentor.encode(textured())
    graphs = ImageGraphs(encoding)
    grid = [SegmentorSettings(**{**SMALL.__dict__, "alpha": a, "tol": t}) for a in (0.8, 0.95) for t in (1e-6, 1e-3)]
    every = [ClassColumns(slice(None), FakeBackbones().alias_to_class)]
    reused = [segmentor.propagate_columns(encoding, s, every, graphs)[0] for s in grid]
    assert builds == {"patch": 1, "pixel": 1}
    # and each result is the one of a fresh run with that setting (a graph or operator that kept the first
    # alpha would fail here)
    for setting, scores in zip(grid, reused):
        assert torch.equal(scores, segmentor.propagate(encoding, setting))
    assert not torch.equal(reused[0], reused[2])  # alpha does change the result
    # the graphs' own parameters do build new graphs
    builds.update(patch=0, pixel=0)
    for change in ({"k": 5}, {"tau": 0.1}, {"r": 3}, {"sigma": 0.02}):
        segmentor.propagate_columns(encoding, SegmentorSettings(**{**SMALL.__dict__, **change}), every, graphs)
    assert builds == {"patch": 2, "pixel": 3}  # k and sigma: patch graphs; tau and r: pixel graphs


def test_reused_graphs_equal_the_one_call_functions():
    g = torch.Generator().manual_seed(0)
    n = 60
    features = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    locations = torch.rand(n, 2, generator=g) * 100
    scores = torch.randn(n, 5, generator=g)
    graph = lp.build_patch_graph(features, locations, k=12, sigma=0.02)
    for alpha, tol in ((0.9, 1e-6), (0.5, 1e-3)):
        ours = lp.solve_patches(scores, graph, alpha=alpha, tol=tol)
        assert torch.equal(ours, propagate_patches(scores, features, locations, k=12, sigma=0.02, alpha=alpha, tol=tol))
    image = torch.rand(3, 12, 15, generator=g)
    pixel_scores = torch.randn(4, 12, 15, generator=g)
    pixel_graph = lp.PixelGraph(image, tau=0.1, r=5)
    for alpha in (0.9, 0.5, 0.9):
        ours = pixel_graph.propagate(pixel_scores, alpha=alpha)
        assert torch.equal(ours, propagate_pixels(pixel_scores, image, tau=0.1, r=5, alpha=alpha))
    with pytest.raises(ValueError, match="graph's nodes"):
        lp.solve_patches(scores[:10], graph)
    with pytest.raises(ValueError, match="image"):
        pixel_graph.propagate(torch.rand(4, 12, 14))
