"""The SAM side of the Ref-Diff bundle: ``sam_encoder`` + ``sam_decoder`` + ``sam_masks`` (the per-mask work of
automatic mask generation) and the facts the runtime needs for it (``edgeseg.runtime.sam_auto.generate_masks``).

``sam_components(checkpoint)`` takes what :func:`edgeseg.train.sam.load_sam` takes: a SAM checkpoint folder or the
bundled ``sam_toy``; ``vit_b`` / ``vit_h`` (random seeded weights, for export checks); or
``vit_h:/path/sam_vit_h_4b8939.pth`` (official weights). The lead combines it in ``refdiff_bundle.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from edgeseg.export import sam_decoder, sam_encoder, sam_masks
from edgeseg.export.spec import ComponentSpec

# Official SamAutomaticMaskGenerator settings (points_per_side 32, IoU 0.88, stability 0.95, NMS 0.7) for the
# published models; Ref-Diff keeps the 10 largest proposals. Batches of 16 prompts (SAM's points_per_batch is
# 64; the masks do not depend on it), the sam_decoder profile's opt: its N x 4096 x 256 image-side tensors are
# 67 MB a call instead of 268 MB (4x less activation memory), and the ViT-B proposal stage on ONNX Runtime CPU
# takes 19.2 s for the 32 x 32 grid vs 22.4 s at 64 (benchmarks/sam_proposals.py runs, README "SAM automatic
# masks in the engine").
AMG_FULL: dict[str, Any] = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                            "stability_offset": 1.0, "box_nms_thresh": 0.7, "min_mask_area": 100, "top_k": 10,
                            "batch": 16}


def sam_amg_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """AMG settings of a loaded SAM: those its checkpoint was measured with (``metrics.amg``), else the runtime
    defaults for the toy config, else :data:`AMG_FULL`; plus ``img_size`` (the encoder input side S)."""
    from edgeseg.runtime.sam_auto import AMG_DEFAULTS

    measured = (cfg.get("metrics") or {}).get("amg")
    if measured:
        amg = dict(AMG_DEFAULTS, **measured)
    elif cfg["preprocessing"]["img_size"] < 1024:
        amg = dict(AMG_DEFAULTS)
    else:
        amg = dict(AMG_FULL)
    amg["img_size"] = int(cfg["preprocessing"]["img_size"])
    return amg


def sam_components(checkpoint: str | Path, max_prompts: int = 64, opset: int = 17
                   ) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict[str, Any]]:
    """(name -> (export wrapper, ComponentSpec), info) for the SAM of ``checkpoint`` (see the module docstring).

    info: {"sam_preprocessing": {img_size, pixel_mean, pixel_std}, "mask_threshold": 0.0,
    "amg": {points_per_side, pred_iou_thresh, stability_score_thresh, stability_offset, box_nms_thresh,
    min_mask_area, top_k, batch, img_size}, "sam": {name, embedding_grid, embed_dim, low_res_size,
    decoder_outputs, metrics}}.
    """
    from edgeseg.train.sam import load_sam

    sam, cfg = load_sam(checkpoint)
    size, grid, dim = int(cfg["preprocessing"]["img_size"]), int(cfg["embedding_grid"]), int(cfg["embed_dim"])
    comps = {
        sam_encoder.NAME: (sam_encoder.SamEncoderWrapper(sam).eval(), sam_encoder.spec(size, grid, dim, opset=opset)),
        sam_decoder.NAME: (sam_decoder.SamDecoderWrapper(sam).eval(),
                           sam_decoder.spec(size, grid, dim, max_prompts=max_prompts,
                                            opt_prompts=min(16, max_prompts), opset=opset)),
        # the per-mask work of automatic mask generation for the prompts past the IoU filter, <= 16 a call (the
        # host splits a decoder batch): its P x K x H x W buffers bound the engine's (TensorRT profile) memory
        sam_masks.NAME: (sam_masks.SamMasksWrapper(sam).eval(),
                         sam_masks.spec(grid, dim, max_prompts=min(16, max_prompts), opt_prompts=min(8, max_prompts),
                                        opset=opset)),
    }
    amg = sam_amg_settings(cfg)
    amg["batch"] = min(int(amg["batch"]), max_prompts)
    info = {
        "sam_preprocessing": copy.deepcopy(cfg["preprocessing"]),
        "mask_threshold": float(cfg["mask_threshold"]),
        "amg": amg,
        "sam": {"name": cfg["name"], "embedding_grid": grid, "embed_dim": dim, "low_res_size": cfg["low_res_size"],
                "decoder_outputs": {"single": 0, "multimask": [1, 2, 3]}, "metrics": cfg.get("metrics", {})},
    }
    return comps, info
