"""The released Ref-Diff pieces (runtime/refdiff_released.py) equal a reference written here, line by line from
kodenii/Ref-Diff (model/segmenter.py, ldm/modules/attention.py, ldm/models/diffusion/ddim.py), on synthetic inputs."""

import numpy as np
import pytest
from PIL import Image

from edgeseg.runtime.ddim import DDIMSchedule
from edgeseg.runtime.refdiff_released import (attention_from_logits, attention_to_image, diffusion_pad_input,
                                              diffusion_resize_input, filter_proposals, hard_crop,
                                              released_denoise_timesteps, released_direction,
                                              released_generative_scores, released_noise_timestep,
                                              released_position_bias, released_subject, released_total_scores,
                                              resize_shortest, select_best)


# ------------------------------------------------------------------ reference (from the released code)
def ref_ldm_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """ldm register_schedule ("linear" = squared linspace of sqrt betas, float64) + make_ddim_timesteps uniform."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    c = 1000 // steps
    return np.asarray(list(range(0, 1000, c))) + 1, alphas_cumprod


def ref_pad(image: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray(image)
    square = max(pil.size)
    bg = Image.new("RGB", (square, square), (0, 0, 0))
    bg.paste(pil, ((square - pil.size[0]) // 2, (square - pil.size[1]) // 2))
    return np.array(bg.resize((size, size), Image.LANCZOS))


def ref_attention(sims: list[np.ndarray], index: int, attn: int, image_wh: tuple[int, int]) -> np.ndarray:
    """attention.py capture (sims: (b h) x N x 77, first half unconditional) + get_diffattn post-processing."""
    images = []
    for sim in sims:
        mid = len(sim) // 2
        patch1, patch2 = sim[0:mid].mean(axis=0), sim[mid:].mean(axis=0)
        patch = ((patch2 - patch1) * 9 + patch1).reshape(attn, attn, sim.shape[-1])
        x = patch[:, :, index]
        x_norm = (x - x.min()) / (x.max() - x.min())
        images.append(np.stack([x_norm] * 3, -1))
    m24 = Image.fromarray((np.array(images).mean(axis=0) * 255).astype(np.uint8))
    w, h = image_wh
    square = max(w, h)
    m24 = np.array(m24.resize((square, square), Image.LANCZOS)) / 255
    m24 = m24[(w - h) // 2:(w - h) // 2 + h, :] if w > h else m24[:, (h - w) // 2:(h - w) // 2 + w]
    m24 = m24[:, :, 0]
    return (m24 - m24.min()) / (m24.max() - m24.min() + 1e-8)


def ref_filter(all_masks: np.ndarray, topk: int, ratio: float, value: float) -> np.ndarray:
    image_size = all_masks[0].shape[-1] * all_masks[0].shape[-2]
    areas = np.array([m.sum() for m in all_masks])
    filtered = np.zeros(len(all_masks))
    num = min(topk, len(all_masks))
    filtered[np.argpartition(-areas, num - 1)[:num]] = 1
    for i in range(len(all_masks)):
        if areas[i] <= image_size * ratio or areas[i] <= value:
            filtered[i] = 0
    return filtered


def ref_position(image: np.ndarray, text: str) -> np.ndarray:
    H, W, C = image.shape
    out = image
    if "left" in text:
        W1 = W * 2 // 3
        v = np.broadcast_to(np.concatenate([np.linspace(1, 0, W1), np.zeros((W - W1))]).reshape(1, W, 1), (H, W, 3))
        out = out * v
    elif "right" in text:
        W1 = W * 2 // 3
        v = np.broadcast_to(np.concatenate([np.zeros((W - W1)), np.linspace(0, 1, W1)]).reshape(1, W, 1), (H, W, 3))
        out = out * v
    return out


def ref_hard_input(image_pos: np.ndarray, mask: np.ndarray) -> Image.Image:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    ymin, ymax = np.where(rows)[0][[0, -1]]
    xmin, xmax = np.where(cols)[0][[0, -1]]
    new = image_pos * mask.reshape(*mask.shape, 1) * 1.0 + image_pos * 0
    return Image.fromarray(new[ymin:ymax + 1, xmin:xmax + 1, :].astype(np.uint8))


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        out[i, y:y + rng.integers(2, h - y), x:x + rng.integers(2, w - x)] = True
    return out


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("steps,strength", [(20, 0.1), (50, 0.3), (10, 0.5), (25, 0.2), (40, 0.05)])
def test_ddim_noises_at_the_t_enc_index_and_denoises_the_entries_below_it(steps, strength):
    ddim_timesteps, alphas = ref_ldm_schedule(steps)
    t_enc = int(strength * steps)
    ours = DDIMSchedule()
    all_t = ours.timesteps(steps)
    assert released_noise_timestep(all_t, steps, strength) == ddim_timesteps[t_enc]
    assert released_denoise_timesteps(all_t, steps, strength) == list(np.flip(ddim_timesteps[:t_enc]))
    t = released_noise_timestep(all_t, steps, strength)
    assert abs(float(ours.alphas_cumprod[t]) - alphas[ddim_timesteps[t_enc]]) < 2e-6


def test_the_quirk_for_the_released_config_is_t101_then_51_and_1():
    all_t = DDIMSchedule().timesteps(20)
    assert released_noise_timestep(all_t, 20, 0.1) == 101
    assert released_denoise_timesteps(all_t, 20, 0.1) == [51, 1]
    with pytest.raises(ValueError, match="int\\(strength \\* steps\\)"):
        released_noise_timestep(all_t, 20, 0.01)


@pytest.mark.parametrize("hw", [(60, 90), (90, 60), (77, 77), (31, 100)])
def test_diffusion_pad_is_a_black_centred_square_resized_with_lanczos(hw):
    img = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(diffusion_pad_input(img, 64), ref_pad(img, 64))
    h, w = hw
    ratio = 256 / max(h, w)
    ref = np.array(Image.fromarray(img).resize((int(w * ratio // 64 * 64), int(h * ratio // 64 * 64)), Image.BICUBIC))
    if min(ref.shape[:2]) >= 64:
        np.testing.assert_array_equal(diffusion_resize_input(img, 256), ref)


@pytest.mark.parametrize("wh", [(120, 80), (80, 120), (96, 96), (101, 67)])
def test_attention_from_logits_and_to_image_equal_the_released_capture(wh):
    rng = np.random.default_rng(wh[0] * wh[1])
    heads, g, index = 8, 6, 5
    sims = [rng.normal(size=(2 * heads, g * g, 77)) * rng.uniform(0.5, 3) for _ in range(6)]  # 3 layers x 2 steps
    ours = attention_to_image(attention_from_logits([s.reshape(2, heads, g * g, 77) for s in sims], index, (g, g)),
                              (wh[1], wh[0]))
    ref = ref_attention(sims, index, g, wh)
    assert ours.shape == ref.shape == (wh[1], wh[0])
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_attention_from_logits_refuses_an_empty_capture():
    with pytest.raises(ValueError, match="capture produced none"):
        attention_from_logits([], 3, (4, 4))


@pytest.mark.parametrize("seed", range(20))
def test_proposal_filter_and_choice_equal_the_released_filter(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, int(rng.integers(1, 25)), 40, 50)
    areas = masks.reshape(len(masks), -1).sum(1)
    masks = masks[np.unique(areas, return_index=True)[1]]  # distinct areas: argpartition's order is then unique
    value, ratio = float(rng.choice([0, 50, 200])), float(rng.choice([0.0, 0.05]))
    ref = ref_filter(masks, 10, ratio, value)
    keep = filter_proposals(masks, 10, value, ratio)
    np.testing.assert_array_equal(keep, ref.astype(bool))
    total = rng.normal(size=len(masks)).astype(np.float32) - float(rng.choice([0.0, 5.0]))  # sometimes all < 0
    assert select_best(total, keep, "released_multiply_by_zero") == int(np.argmax(total * ref))
    if keep.any():
        best = select_best(total, keep)
        assert keep[best] and total[best] == total[keep].max()


def test_a_dropped_proposal_wins_only_behind_the_released_flag():
    keep = np.array([False, True, True])
    total = np.array([-3.0, -0.2, -0.1], np.float32)
    assert select_best(total, keep, "released_multiply_by_zero") == 0
    assert select_best(total, keep) == 2


PHRASES = [f"{a} {s}{d}" for a in ("the", "a", "that") for s in ("red circle", "man", "cup", "dog sitting")
           for d in ("", " on the left", " on the right", " at the top", " in the middle", " left of the car",
                     " rightmost", " to the right of the left cup", " bottom")]


def test_position_bias_and_hard_crops_equal_the_released_code_on_108_phrasings():
    assert len(PHRASES) >= 100
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    masks = random_masks(rng, 3, 45, 70)
    for text in PHRASES:
        bias = released_position_bias(text, 45, 70)
        pos = img if bias is None else img * bias[..., None]
        ref = ref_position(img, text)
        np.testing.assert_array_equal(pos, ref)
        assert released_direction(text) == (["left"] if "left" in text else ["right"] if "right" in text else [])
        for m in masks:
            np.testing.assert_array_equal(hard_crop(pos, m), np.asarray(ref_hard_input(ref, m)))


def test_hard_crop_resize_is_torchvisions_resize_224_without_centre_crop():
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(1)
    for hw in [(30, 70), (70, 30), (224, 300), (13, 13), (5, 400)]:
        crop = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        ref = np.asarray(T.Resize(224)(Image.fromarray(crop)))
        np.testing.assert_array_equal(resize_shortest(crop, 224), ref)


def test_scores_equal_calc_hard_soft_and_diffattn():
    rng = np.random.default_rng(2)
    n, d = 7, 32
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    hard, soft = unit(rng.normal(size=(n, d))), unit(rng.normal(size=(n, d)))
    t, k = unit(rng.normal(size=d)), unit(rng.normal(size=d))
    attn = rng.uniform(size=(20, 30))
    masks = random_masks(rng, n, 20, 30)
    diff = np.array([(attn * m).sum() / (m.sum() + 1e-6) - (attn * ~m).sum() / ((~m).sum() + 1e-6) for m in masks])
    ref = 0.7 * (hard @ (t * 1.0 + k * 0.0)) + 0.3 * (soft @ (t * 0.5 + k * 0.5)) + 0.05 * diff
    s_g = released_generative_scores(attn, masks)
    np.testing.assert_allclose(s_g, diff, atol=1e-6)
    _, _, total = released_total_scores(hard, soft, t, k, s_g, {})
    np.testing.assert_allclose(total, ref, atol=1e-5)


class _Tok:
    def __init__(self, text, dep):
        self.text, self.dep_ = text, dep


def test_subject_is_the_first_root_or_subject_token_of_any_part_of_speech():
    doc = [_Tok("left", "amod"), _Tok("guy", "nsubj"), _Tok("standing", "ROOT")]
    assert released_subject(doc, "left guy standing") == "guy"
    assert released_subject([_Tok("sitting", "ROOT"), _Tok("man", "dobj")], "sitting man") == "sitting"
    assert released_subject([_Tok("a", "det")], "a") == "a"


def test_a_blank_image_with_no_sam_mask_keeps_nothing_and_does_not_fail(refdiff_bundle):
    from edgeseg.runtime import RefDiffPredictor
    from edgeseg.runtime.refdiff_released import filter_proposals

    assert filter_proposals(np.zeros((0, 8, 8), bool), 10, 100, 0.0).shape == (0,)
    res = RefDiffPredictor(refdiff_bundle, cache_dir=None, parser=None).segment(np.zeros((96, 96, 3), np.uint8),
                                                                                "the red circle")
    assert res.mask.shape == (96, 96)
