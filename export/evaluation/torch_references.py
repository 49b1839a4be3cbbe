"""PyTorch references of the segmentation pipelines for ``edgeseg eval METHOD --compare-torch CHECKPOINT``
Each is (checkpoint, labels) -> (uint8 HxWx3 image -> HxW int32 label map), named by its method's registry
entry (:data:`edgeseg.methods.METHODS`). Import torch only when called."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def tcl_torch_predictor(checkpoint: str | Path, labels: list[str],
                        order: str = "official") -> Callable[[np.ndarray], np.ndarray]:
    """uint8 HxWx3 image (at the model's input size) -> HxW int32 label map: the same preprocessing, masks, PAMR
    (the checkpoint's iterations and dilations) and resizing as the runtime with post-processing on, in
    PyTorch. ``order`` "official" (TCL's generate_masks: PAMR on the TCL mask at its resolution with the image
    resized to it, align_corners=True, then 0.3 MaskCLIP + 0.7 TCL, bilinear to the input) or "mix-first"
    (mix, bilinear to the input, PAMR there)."""
    import torch
    import torch.nn.functional as F

    from edgeseg.train.tcl import pamr
    from edgeseg.train.train_clip import images_to_tensor
    from edgeseg.train.train_tcl import TextBank, load_tcl

    model, cfg = load_tcl(checkpoint)
    prep, inf = cfg["preprocessing"], cfg["inference"]
    text = TextBank(model.clip, cfg["tokenizer"]["context_length"], cfg["text_encoder"]["template"])(labels)
    its, dil, kp_w = inf["pamr_iterations"], tuple(inf["pamr_dilations"]), model.config.kp_weight

    @torch.no_grad()
    def run(image: np.ndarray) -> np.ndarray:
        x = images_to_tensor(image[None], prep["mean"], prep["std"])
        if tuple(x.shape[-2:]) != tuple(prep["image_size"]):
            raise ValueError(f"the PyTorch reference takes images of the model size {prep['image_size']}, "
                             f"got {image.shape[:2]}")
        mask, kp = model.head_terms(*model.encode(x), text)
        if order == "official":
            small = F.interpolate(x, size=mask.shape[-2:], mode="bilinear", align_corners=True)
            masks = kp_w * kp + (1.0 - kp_w) * pamr(small, mask, its, dil)
            masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        else:
            masks = F.interpolate(kp_w * kp + (1.0 - kp_w) * mask, size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
            masks = pamr(x, masks, its, dil)
        return masks.argmax(1)[0].numpy().astype(np.int32)

    return run


def lseg_torch_predictor(checkpoint: str | Path, labels: list[str]):
    """PyTorch reference: the same preprocessing, argmax of the model's logits at the input size."""
    import torch

    from edgeseg.train.train_clip import images_to_tensor
    from edgeseg.train.train_lseg import load_lseg, text_embeddings

    model, clip, cfg = load_lseg(checkpoint)
    prep = cfg["preprocessing"]
    text = text_embeddings(clip, labels, cfg["tokenizer"]["context_length"], cfg["text_encoder"]["template"])

    @torch.no_grad()
    def run(image: np.ndarray) -> np.ndarray:
        logits = model(images_to_tensor(image[None], prep["mean"], prep["std"]), text)
        return logits.argmax(1)[0].numpy().astype(np.int32)

    return run


def ifseg_torch_predictor(checkpoint: str | Path, labels: list[str]):
    """PyTorch reference of IFSeg, kNN refinement on (the runtime default): compare with post-processing on."""
    from edgeseg.train.train_ifseg import torch_reference

    return torch_reference(checkpoint, labels)

