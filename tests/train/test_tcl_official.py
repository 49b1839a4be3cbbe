"""TCL's official architecture (edgeseg.train.tcl_official): the released checkpoint's key layout, the importer
({"model": ...} with or without the frozen CLIP, OpenAI CLIP weights mapped in), and refusals."""

import pytest
import torch
import torch.nn.functional as F

from edgeseg.export.official_references import pamr_official
from edgeseg.train.official_weights import randomize, save_official_layout
from edgeseg.train.tcl import pamr
from edgeseg.train.tcl_official import TCLOfficial, clip_to_tcl_keys, load_official_tcl, official_tcl_spec

TINY = "tcl_tiny_official"


def test_the_vit_b16_layout_has_tcls_keys():
    with torch.device("meta"):
        sd = TCLOfficial("tcl_vitb16").state_dict()
    own = [k for k in sd if not k.startswith(("clip_image_encoder.", "clip_text_encoder."))]
    assert len(sd) == 340 and len(own) == 39
    for k in ("masker.image_encoder.backbone.transformer.resblocks.0.attn.in_proj_weight",
              "masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate",
              "masker.image_encoder.decoder.image_proj.proj", "masker.sim2mask.w", "tclf_loss.logit_scale",
              "clip_image_encoder.clip_proj.ln.weight", "clip_image_encoder.clip_visual.positional_embedding",
              "clip_text_encoder.text_projection"):
        assert k in sd, k
    assert not any(k.startswith(("clip_text_encoder.visual.", "masker.image_encoder.backbone.ln_post"))
                   or k == "clip_text_encoder.logit_scale" for k in sd)
    assert tuple(sd["clip_image_encoder.clip_visual.positional_embedding"].shape) == (197, 768)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = TCLOfficial(TINY)
    state = randomize(model, seed=7)
    return state, save_official_layout(state, tmp_path_factory.mktemp("tcl") / "tcl.pth", "tcl")


def test_the_released_layout_imports_with_every_weight(tiny):
    state, path = tiny
    model = load_official_tcl(TINY, path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert official_tcl_spec(f"{TINY}:{path}") == (TINY, str(path), None)


def test_a_checkpoint_without_the_frozen_clip_takes_openai_clip_weights(tiny, tmp_path):
    state, _ = tiny
    own = {k: v for k, v in state.items() if not k.startswith(("clip_image_encoder.", "clip_text_encoder."))}
    path = save_official_layout(own, tmp_path / "tcl_noclip.pth", "tcl")
    with pytest.raises(ValueError, match=r"holds TCL without its frozen CLIP .* give the OpenAI ViT-B/16 weights too: "
                                         r"tcl_tiny_official:.*tcl_noclip.pth,/path/to/ViT-B-16.pt"):
        load_official_tcl(TINY, path)
    openai = {}  # the frozen encoders' weights as OpenAI's CLIP state dict names them
    for k, v in state.items():
        if k.startswith("clip_image_encoder.clip_visual."):
            openai["visual." + k[len("clip_image_encoder.clip_visual."):]] = v
        elif k.startswith("clip_image_encoder.clip_proj.ln."):
            openai["visual.ln_post." + k.rsplit(".", 1)[1]] = v
        elif k == "clip_image_encoder.clip_proj.proj":
            openai["visual.proj"] = v
        elif k.startswith("clip_text_encoder."):
            openai[k[len("clip_text_encoder."):]] = v
    openai["logit_scale"] = torch.tensor(4.6)
    assert clip_to_tcl_keys(openai).keys() == {k for k in state if k.startswith("clip_")}
    clip = save_official_layout(openai, tmp_path / "ViT-B-16.pt", "plain")
    model = load_official_tcl(TINY, path, clip)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_mismatching_checkpoint_is_refused_naming_the_keys(tiny, tmp_path):
    state, _ = tiny
    broken = {k: v for k, v in state.items() if k != "masker.sim2mask.b"}
    with pytest.raises(ValueError, match=r"does not fit the TCL 'tcl_tiny_official' architecture: keys 1 missing "
                                         r"\(first: masker.sim2mask.b\)"):
        load_official_tcl(TINY, save_official_layout(broken, tmp_path / "b.pth", "tcl"))


def test_the_masker_follows_tcls_order_of_layers(tiny):
    """LN + projection come after the decoder (TCL clones clip_proj as the decoder's image_proj; the masker
    backbone has no LN), and each ResConv adds two gated residual steps."""
    state, path = tiny
    m = load_official_tcl(TINY, path)
    dec = m.masker.image_encoder.decoder
    x = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        y = x
        for blk in dec.decoder.net:
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            for step in (blk.conv, blk.conv2):
                z = F.layer_norm(y.permute(0, 2, 3, 1), (64,), step.norm.weight, step.norm.bias).permute(0, 3, 1, 2)
                y = y + torch.tanh(step.gate.gate) * step.conv(F.gelu(z))
        want = (F.layer_norm(y.permute(0, 2, 3, 1), (64,), dec.image_proj.ln.weight, dec.image_proj.ln.bias)
                @ dec.image_proj.proj).permute(0, 3, 1, 2)
        assert torch.allclose(dec(x), want, atol=1e-5)


def test_edgesegs_pamr_equals_tcls_conv_kernel_pamr():
    g = torch.Generator().manual_seed(0)
    image, mask = torch.randn(1, 3, 40, 56, generator=g), torch.rand(1, 4, 40, 56, generator=g)
    assert torch.allclose(pamr(image, mask), pamr_official(image, mask), atol=1e-5)
