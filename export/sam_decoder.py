"""Component ``sam_decoder``: SAM prompt encoder (points / box corners) + mask decoder, a batch of prompts.

Inputs (no shape-tensor inputs, no final resize in the graph, unlike segment-anything's ``SamOnnxModel`` whose
``orig_im_size`` crop is frozen at the export image size: export-notes trap 8):

* ``image_embeddings`` 1 x C x g x g float32 (``sam_encoder`` output of one image)
* ``point_coords`` N x P x 2 float32, (x, y) in the S x S encoder-input frame (original coords x resize scale)
* ``point_labels`` N x P float32: 1 foreground, 0 background, -1 padding, 2 / 3 box top-left / bottom-right

N prompts (dynamic, 1..64, opt 16) and P points per prompt (dynamic, 1..8, opt 2). A single point prompt is
the point plus a padding point (label -1) as in SAM; a box is its two corners (labels 2, 3).

Outputs (the mask upscaling is ``sam_masks``, run only for prompts that pass the predicted-IoU filter):

* ``iou_predictions`` N x K float32, K = 4: index 0 is the single-mask output (for boxes / several points),
  1..3 the multimask outputs (for one ambiguous point: automatic mask generation)
* ``hyper_in`` N x K x C/8 float32: the hypernetwork vector of each mask output
* ``image_tokens`` N x g^2 x C float32: the transformer's image side (channels-last), upscaled by ``sam_masks``

Bundles exported before ``sam_masks`` existed hold a decoder with outputs ``low_res_masks`` (N x K x 4g x 4g)
and ``iou_predictions`` (:class:`SamDecoderReference`); the runtime runs them with the numpy post-processing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeseg.train.sam import embed_points, predict_masks

from edgeseg.export.spec import ComponentSpec, TensorSpec

NAME = "sam_decoder"
NUM_OUTPUTS = 4  # single-mask output + 3 multimask outputs
OUTPUTS_BEFORE = ("low_res_masks", "iou_predictions")  # the graph bundles held before sam_masks existed
MULTIMASK = slice(1, 4)


def _head_mask(heads: int, dim: int) -> torch.Tensor:
    """heads x dim: row j is 1 on the channels of head j (block-diagonal attention without head transposes)."""
    return torch.kron(torch.eye(heads), torch.ones(1, dim // heads))


class _TokenToImage(nn.Module):
    """SAM ``Attention`` with few queries (T tokens) and many keys (Ni image tokens), heads kept apart by a
    block-diagonal query (N x hT x Ci; hT < Ci, no Ni-sized head transposes). Shared keys (1 x Ni x C, the
    first layer) are projected once for all prompts; per-prompt keys are not projected at all: the products are
    reassociated, ``(q Wk) keys^T + q (pe Wk^T)^T`` and ``(probs keys) Wv^T`` (the key bias shifts every score
    of a row by the same amount, which softmax ignores), so the Ni-sized MatMuls have output size hT."""

    def __init__(self, attn: nn.Module, key_pe: torch.Tensor):
        super().__init__()
        self.attn = attn
        with torch.no_grad():
            self.register_buffer("k_const", attn.k_proj(key_pe).detach().clone(), persistent=False)  # 1 x Ni x Ci
            self.register_buffer("pe_k", torch.matmul(key_pe, attn.k_proj.weight.t()).detach().clone(),
                                 persistent=False)  # 1 x Ni x Ci, no bias
        self.register_buffer("heads", _head_mask(attn.num_heads, attn.internal_dim), persistent=False)
        self.scale = 1.0 / math.sqrt(attn.internal_dim // attn.num_heads)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, shared: bool) -> torch.Tensor:
        """q N x T x C (token queries incl. their PE), keys B x Ni x C (without PE) -> N x T x C; ``shared``:
        B = 1 (every prompt attends to the same image tokens)."""
        a = self.attn
        qp = a.q_proj(q) * self.scale  # N x T x Ci
        qbd = (qp.unsqueeze(1) * self.heads[None, :, None, :]).flatten(1, 2)  # N x hT x Ci
        if shared:
            k = torch.matmul(keys, a.k_proj.weight.t()) + self.k_const  # 1 x Ni x Ci
            probs = torch.softmax(torch.matmul(qbd, k.transpose(1, 2)), dim=-1)  # N x hT x Ni
            out = torch.matmul(probs, a.v_proj(keys))  # N x hT x Ci
        else:
            qk = torch.matmul(qbd, a.k_proj.weight)  # N x hT x C
            logits = torch.matmul(qk, keys.transpose(1, 2)) + torch.matmul(qbd, self.pe_k.transpose(1, 2))
            out = a.v_proj(torch.matmul(torch.softmax(logits, dim=-1), keys))  # rows sum to 1: v bias passes
        out = out.unflatten(1, (a.num_heads, -1))  # N x h x T x Ci
        return a.out_proj((out * self.heads[None, :, None, :]).sum(1))


class _ImageToToken(nn.Module):
    """SAM ``Attention`` with many queries (Ni image tokens) and few keys (T tokens): per-head softmax over the
    T tokens of a block-diagonal key matrix, the query projection reassociated onto the keys (or computed once
    for shared image tokens; the PE term a 1 x Ni x Ci constant) and the output projection and its bias folded
    into the values, so the Ni-sized MatMuls are N x Ni x C @ C x hT and N x Ni x hT @ hT x C."""

    def __init__(self, attn: nn.Module, key_pe: torch.Tensor):
        super().__init__()
        self.attn = attn
        with torch.no_grad():
            self.register_buffer("q_const", attn.q_proj(key_pe).detach().clone(), persistent=False)  # 1 x Ni x Ci
        self.register_buffer("heads", _head_mask(attn.num_heads, attn.internal_dim), persistent=False)
        self.scale = 1.0 / math.sqrt(attn.internal_dim // attn.num_heads)

    def forward(self, keys: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shared: bool) -> torch.Tensor:
        """keys B x Ni x C (image queries without PE), k N x T x C (tokens incl. PE), v N x T x C -> N x Ni x C."""
        a = self.attn
        kp = a.k_proj(k) * self.scale  # N x T x Ci
        kbd = (kp.unsqueeze(1) * self.heads[None, :, None, :]).flatten(1, 2)  # N x hT x Ci
        if shared:
            q = torch.matmul(keys, a.q_proj.weight.t()) + self.q_const  # 1 x Ni x Ci
            logits = torch.matmul(q, kbd.transpose(1, 2))  # N x Ni x hT
        else:  # (keys + pe) Wq^T + bq = keys Wq^T + q_const
            qk = torch.matmul(kbd, a.q_proj.weight)  # N x hT x C
            logits = torch.matmul(keys, qk.transpose(1, 2)) + torch.matmul(self.q_const, kbd.transpose(1, 2))
        probs = torch.softmax(logits.unflatten(2, (a.num_heads, -1)), dim=-1).flatten(2)
        vp = a.v_proj(v).unsqueeze(1) * self.heads[None, :, None, :]  # N x h x T x Ci
        # each head's probabilities sum to 1: bias / h on every row adds the output bias once (no N x Ni x C Add)
        vw = (torch.matmul(vp, a.out_proj.weight.t()) + a.out_proj.bias / a.num_heads).flatten(1, 2)  # N x hT x C
        return torch.matmul(probs, vw)


class SamDecoderWrapper(nn.Module):
    """Export-only: prompt embedding (arithmetic masks instead of boolean indexing) + SAM's two-way transformer,
    IoU head and hypernetwork MLPs, restructured for automatic-mask grids (same arithmetic up to float rounding;
    :class:`SamDecoderReference` / ``predict_masks`` is the reference): the image embedding enters once (batch 1)
    and the first layer's image-side projections are computed once for all prompts; image tokens stay
    channels-last (N x Ni x C) with no per-prompt copy of the embedding, no Ni-sized head transposes and no
    Ni-sized positional-encoding adds (folded into 1 x Ni x Ci constants). The mask upscaling is left to
    ``sam_masks``, which runs only for the prompts whose predicted IoU passes the filter. No data-dependent
    control flow."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        pe = sam.prompt_encoder
        dec = sam.mask_decoder
        with torch.no_grad():  # constant per model: computed once eagerly (trap 6: no shape logic in the trace)
            self.register_buffer("image_pe", pe.get_dense_pe().detach().clone(), persistent=False)
            self.register_buffer("no_mask", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).detach().clone(),
                                 persistent=False)
            key_pe = self.image_pe.flatten(2).transpose(1, 2).contiguous()  # 1 x Ni x C
            self.register_buffer("key_pe", key_pe, persistent=False)
            t = dec.transformer
            self.t2i = nn.ModuleList([_TokenToImage(b.cross_attn_token_to_image, key_pe) for b in t.layers])
            self.i2t = nn.ModuleList([_ImageToToken(b.cross_attn_image_to_token, key_pe) for b in t.layers])
            self.final = _TokenToImage(t.final_attn_token_to_image, key_pe)
        self.num_outputs = int(dec.num_mask_tokens)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1 x C x g x g, N x P x 2, N x P -> (N x K predicted IoU, N x K x C/8 hypernetwork outputs,
        N x g^2 x C image tokens)."""
        dec, t = self.mask_decoder, self.mask_decoder.transformer
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)  # N x P x C
        n = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)  # N x T x C
        keys = (image_embeddings + self.no_mask).flatten(2).transpose(1, 2)  # 1 x Ni x C: shared by all prompts
        queries = tokens
        for i, layer in enumerate(t.layers):
            shared = i == 0  # N x Ni x C after the first image-to-token update
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            queries = layer.norm2(queries + self.t2i[i](queries + tokens, keys, shared))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + self.i2t[i](keys, queries + tokens, queries, shared))
        queries = t.norm_final_attn(queries + self.final(queries + tokens, keys, False))
        hyper = torch.stack([mlp(queries[:, 1 + k]) for k, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        return dec.iou_prediction_head(queries[:, 0]), hyper, keys


class SamDecoderReference(nn.Module):
    """The straightforward export wrapper (``predict_masks`` on the embedding expanded to N prompts, NCHW
    ConvTransposes): the parity reference of :class:`SamDecoderWrapper` and the graph of bundles exported before
    it (``benchmarks/sam_proposals.py`` times both). Same I/O."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder
        pe = sam.prompt_encoder
        with torch.no_grad():
            self.register_buffer("image_pe", pe.get_dense_pe().detach().clone(), persistent=False)
            self.register_buffer("no_mask", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).detach().clone(),
                                 persistent=False)
        self.low_res, self.num_outputs = 4 * int(pe.image_embedding_size[0]), int(sam.mask_decoder.num_mask_tokens)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1 x C x g x g, N x P x 2, N x P -> (N x 4 x 4g x 4g logits, N x 4 predicted IoU)."""
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)
        src = image_embeddings.expand(point_coords.shape[0], -1, -1, -1)
        masks, iou = predict_masks(self.mask_decoder, src, self.image_pe, sparse, self.no_mask)
        return masks.reshape(-1, self.num_outputs, self.low_res, self.low_res), iou


def spec(img_size: int, grid: int, embed_dim: int, max_prompts: int = 64, opt_prompts: int = 16,
         max_points: int = 8, opset: int = 17) -> ComponentSpec:
    """Spec of ``sam_decoder``: S = ``img_size`` prompt frame, ``grid`` x ``grid`` x ``embed_dim`` embeddings."""
    if not 1 <= opt_prompts <= max_prompts:
        raise ValueError(f"opt_prompts {opt_prompts} must be in [1, max_prompts={max_prompts}]")
    low = 4 * grid
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("image_embeddings", "float32", (1, embed_dim, grid, grid)),
                TensorSpec("point_coords", "float32", ("prompts", "points", 2), (1, 1, 2), (opt_prompts, 2, 2),
                           (max_prompts, max_points, 2)),
                TensorSpec("point_labels", "float32", ("prompts", "points"), (1, 1), (opt_prompts, 2),
                           (max_prompts, max_points))),
        outputs=(TensorSpec("iou_predictions", "float32", ("prompts", NUM_OUTPUTS)),
                 TensorSpec("hyper_in", "float32", ("prompts", NUM_OUTPUTS, embed_dim // 8)),
                 TensorSpec("image_tokens", "float32", ("prompts", grid * grid, embed_dim))),
        opset=opset,
        # INT8 builds keep the decoder FP32 (ViT-H: ~4 M parameters, a few GFLOP per point batch): quantizing it moves
        # every mask outline, and no part alone recovers it (benchmarks/refdiff_int8_isolation.py ->
        # benchmarks/results/refdiff-int8-isolation.json: chosen-mask IoU 0.866 all-INT8 vs 0.984 decoder FP32)
        int8_exclude=(".*",),
        description=f"SAM prompt encoder + two-way transformer: N prompts of P points in the {img_size}px input "
                    f"frame -> predicted IoU (output 0 single-mask, 1-3 multimask), hypernetwork vectors and the "
                    f"{grid}x{grid} image tokens that sam_masks upscales to {low}x{low} mask logits",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Valid prompts: N = ``batch`` (or the spec's ``which`` count) single points inside the S x S frame, each
    with a padding point (label -1) after it, except that every third prompt is a box (labels 2, 3)."""
    emb_t, coords_t = spec.inputs[0], spec.inputs[1]
    n = batch if batch is not None else getattr(coords_t, which)[0]
    p = max(2, getattr(coords_t, which)[1])
    size = float(4 * emb_t.shape[-1])  # only a scale for the coordinates; S is not stored in the spec
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(tuple(emb_t.shape), generator=g)
    coords = torch.rand((n, p, 2), generator=g) * size * 2
    labels = torch.full((n, p), -1.0)
    labels[:, 0] = 1.0
    coords[:, 1:] = torch.where(labels[:, 1:, None] == -1, torch.zeros(()), coords[:, 1:])
    box = torch.arange(n) % 3 == 2
    labels[box, 0], labels[box, 1] = 2.0, 3.0
    coords[box, 1] = coords[box, 0] + size / 2
    return emb, coords, labels
