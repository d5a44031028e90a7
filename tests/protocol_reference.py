"""The baselines' whole prediction, written for the tests from the authors' segmentors (read, re-derived; not from
lposs/): SCLIP `clip_segmentor.py`, NACLIP `naclip.py`, ClearCLIP `clearclip_segmentor.py`, ProxyCLIP
`proxyclip_segmentor.py` (their `predict`, `forward_slide`, `forward_feature`, `postprocess_result`, `get_cls_idx`) and
NACLIP's `pamr.py`, in their layout:

- the image resized by mmcv's `imrescale` to fit (2048, S), normalised by the SegDataPreProcessor constants;
- every crop of the mmseg sliding grid through CLIP, its patch logits (cosine similarities with every name's text
  embedding) resized bilinearly to the crop, added into `preds`, divided by `count_mat`; or, NACLIP's `slide_crop=0`
  (`naclip.py` and `clip/model.py` at sinahmr/NACLIP defb7c94), the whole image through CLIP once (`forward_whole`);
- resized to the original size; PAMR (conv-based, as `pamr.py`) on the normalised image resized to that size;
- `softmax(logits * logit_scale)` over names, the max over a class's names by the one-hot product;
- SCLIP's `area_thd` on the argmax areas of the non-background classes, then the argmax and `prob_thd` (class 0).
"""

import math

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from dino_reference import reference_features
from head_reference import proxyclip_reference, reference_head

MEAN_255 = torch.tensor([122.771, 116.746, 104.094]).view(1, 3, 1, 1)  # SegDataPreProcessor(mean=...)
STD_255 = torch.tensor([68.501, 66.632, 70.323]).view(1, 3, 1, 1)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # ProxyCLIP's UnNormalize
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
# ProxyCLIP's beta, gamma in the reference (1.2, 3.0 are its defaults; a test may set others, as on the backbones)
PROXY_CONSTANTS = [1.2, 3.0]


def get_cls_idx(path, separator: str) -> tuple[list[str], list[int]]:
    """The names of a cls_<dataset>.txt and the class of each, as the authors' `get_cls_idx`."""
    with open(path) as handle:
        lines = handle.readlines()
    names, owners = [], []
    for index, line in enumerate(lines):
        parts = line.split(separator)
        names += [part.replace("\n", "") for part in parts]
        owners += [index] * len(parts)
    return names, owners


@torch.no_grad()
def text_features(model, tokenizer, names: list[str], templates) -> torch.Tensor:
    """[Q, E]: per name, each template's embedding normalised, averaged, normalised (the authors' __init__)."""
    tokens = tokenizer([template.format(name) for name in names for template in templates])
    feature = model.encode_text(tokens)  # every name's prompts in one batch: the same rows as name by name
    feature = feature / feature.norm(dim=-1, keepdim=True)
    feature = feature.view(len(names), len(templates), -1).mean(dim=1)
    return feature / feature.norm(dim=-1, keepdim=True)


def _shift_kernel(with_centre: bool, copy: bool) -> torch.Tensor:
    """pamr.py's LocalAffinity kernels: 8 'centre minus neighbour' (or 'neighbour' copies), or 9 taps."""
    positions = [(r, c) for r in range(3) for c in range(3) if with_centre or (r, c) != (1, 1)]
    weight = torch.zeros(len(positions), 1, 3, 3)
    for i, (r, c) in enumerate(positions):
        if not with_centre and not copy:
            weight[i, 0, 1, 1] = 1
            weight[i, 0, r, c] = -1
        else:
            weight[i, 0, r, c] = 1
    return weight


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations) -> torch.Tensor:
    """[B, K, P * len(dilations), H, W]: the kernel per dilation on replicate-padded maps (pamr.py's forward)."""
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    parts = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(parts, 1).reshape(b, k, -1, h, w)


def pamr_reference(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """pamr.py's PAMR(num_iter=steps, dilations)(image, mask)."""
    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    spread = _local(image, _shift_kernel(True, True), dilations).std(2, keepdim=True)
    affinity = -_local(image, _shift_kernel(False, False), dilations).abs() / (1e-8 + 0.1 * spread)
    affinity = F.softmax(affinity.mean(1, keepdim=True), 2)
    for _ in range(steps):
        mask = (_local(mask, _shift_kernel(False, True), dilations) * affinity).sum(2)
    return mask


@torch.no_grad()
def authors_tokens(model, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sequence-first tokens [N, B, C] leaving the second-to-last block of normalised images [B, 3, w, h], the
    positional embedding resized as the repositories' `interpolate_pos_encoding` does: bicubic, scale factor
    (w // p + 0.1) / sqrt(N) per axis, whenever the token count differs from the embedding's."""
    visual = model.visual
    x = visual.conv1(images)
    grid = tuple(x.shape[-2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    pos = visual.positional_embedding
    if x.shape[1] != pos.shape[0]:
        n, dim, side = pos.shape[0] - 1, x.shape[-1], int(math.sqrt(pos.shape[0] - 1))
        w0, h0 = images.shape[-2] // visual.patch_size[0] + 0.1, images.shape[-1] // visual.patch_size[1] + 0.1
        patch = F.interpolate(
            pos[1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
            mode="bicubic",
        )
        pos = torch.cat([pos[[0]], patch.permute(0, 2, 3, 1).reshape(-1, dim)])
    x = visual.ln_pre(x + pos)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x.permute(1, 0, 2), grid


@torch.no_grad()
def crop_logits(model, crop: torch.Tensor, text: torch.Tensor, head: str, proxy_vit=None) -> torch.Tensor:
    """forward_feature: [1, Q, h, w] logits of one normalised crop [1, 3, h, w], resized to the crop.

    ProxyCLIP: the crop un-normalised with CLIP's exact mean/std (its UnNormalize), DINO's `x` features of it
    (normalised with ImageNet's inside reference_features) as the proxy, the logits on the proxy's grid."""
    tokens, grid = authors_tokens(model, crop)
    if head == "proxyclip":
        proxy = reference_features(proxy_vit, crop * CLIP_STD + CLIP_MEAN, "x", 0.1, False)
        features = proxyclip_reference(model, tokens, grid, proxy, *PROXY_CONSTANTS)  # [1, E, I, J]
    else:
        features = reference_head(model, tokens, grid, head)  # [1, E, gh, gw]
    features = features / features.norm(dim=1, keepdim=True)
    logits = torch.einsum("behw,qe->bqhw", features, text)
    return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear")


@torch.no_grad()
def forward_slide(model, image, text, head: str, crop: int, stride: int, proxy_vit=None) -> torch.Tensor:
    """[1, Q, h, w]: the mmseg sliding-window average of the crops' logits, on the resized normalised image."""
    _, _, h_img, w_img = image.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = image.new_zeros((1, text.shape[0], h_img, w_img))
    count = image.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = crop_logits(model, image[:, :, y1:y2, x1:x2], text, head, proxy_vit)
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def forward_whole(model, image, text, head: str) -> torch.Tensor:
    """[1, Q, h, w]: NACLIP's `forward_feature(inputs)` on the whole resized normalised image [1, 3, h, w].

    `conv1` (stride p, no padding) sees the top-left (h // p) x (w // p) patches only, the last h % p rows and w % p
    columns unseen; `interpolate_pos_encoding` resizes the positional embedding with the scale factor
    ((h // p + 0.1) / 14, (w // p + 0.1) / 14); `custom_attn` builds its Gaussian window for `n_patches` =
    (h // p, w // p), (2 gh - 1) x (2 gw - 1) (authors_tokens, reference_head); the [1, Q, gh, gw] logits are resized
    bilinearly to `img.shape[-2:]`, the whole (h, w): a stretch, the grid covers only (gh p, gw p).
    """
    _, _, height, width = image.shape
    logits = crop_logits(model, image, text, head)
    assert logits.shape[-2:] == (height, width)
    return logits


@torch.no_grad()
def reference_predict(model, text, query_idx, image: np.ndarray, head: str, protocol: dict, proxy_vit=None):
    """The authors' predict + postprocess_result but the last step on one [H, W, 3] uint8 RGB image.

    protocol: short_side, crop (0: NACLIP's whole image), stride, logit_scale, area_thd (None), pamr_steps,
    pamr_dilations.

    Returns:
        class probabilities [K, H, W] after area_thd; `reference_labels` makes the labels.
    """
    resized = mmcv.imrescale(image, (2048, protocol["short_side"]), interpolation="bilinear")
    inputs = (torch.from_numpy(resized).permute(2, 0, 1)[None].float() - MEAN_255) / STD_255
    if protocol["crop"] == 0:  # NACLIP's predict: `if self.slide_crop > 0: ... else: self.forward_feature(inputs)`
        logits = forward_whole(model, inputs, text, head)
    else:
        logits = forward_slide(model, inputs, text, head, protocol["crop"], protocol["stride"], proxy_vit)
    size = image.shape[:2]
    # forward_slide's (SCLIP) or predict's (NACLIP); whole image: the second resize (grid -> h x w -> H x W)
    logits = F.interpolate(logits, size=size, mode="bilinear")
    if protocol["pamr_steps"] > 0:
        img = F.interpolate(inputs, size=size, mode="bilinear")
        logits = pamr_reference(img, logits, protocol["pamr_steps"], protocol["pamr_dilations"])
    probs = (logits[0] * protocol["logit_scale"]).softmax(0)
    query_idx = torch.tensor(query_idx)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls != num_queries:
        cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
        probs = (probs[None] * cls_index).max(1)[0]
    if protocol.get("area_thd") is not None:  # SCLIP: before the argmax and prob_thd
        predictions = F.one_hot(probs.argmax(0), num_cls).to(probs.dtype)
        area = predictions[:, :, 1:].sum((0, 1), keepdim=True)
        area = (area > protocol["area_thd"] * area.sum()).to(probs.dtype)
        probs[1:] *= area.transpose(0, -1)
    return probs


def reference_labels(probs: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """postprocess_result's last step: [H, W] argmax, class 0 where the top probability is below prob_thd."""
    labels = probs.argmax(0, keepdim=True)
    labels[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    return labels[0]
