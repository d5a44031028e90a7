# Shared by every dataset config (merged through `_base_`): load the original image only.
# No resize and no normalisation here: the segmentor resizes to fit (2048, 448) itself (docs/method.md,
# step 2) and each backbone normalises its own input. Labels are loaded by the dataset's own
# `get_gt_seg_map_by_idx` (mmseg LoadAnnotations, which applies reduce_zero_label).
test_pipeline = [dict(type="LoadImageFromFile")]
data = dict(test=dict(pipeline=test_pipeline))
