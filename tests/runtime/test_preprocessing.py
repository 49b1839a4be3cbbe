"""The runtime's preprocessing recipes (numpy + PIL) equal the reference libraries' transforms on real photos that
no one here made (scikit-image's sample images: square, non-square, gray): open_clip's eval transform, lang-seg's
evaluation resize (torch), TCL's mmseg resize (OpenCV), and the default squash of bundles without a recipe."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

skdata = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

from edgeseg.runtime.images import canvas, lseg_size, load_image, preprocess, recipe_of, rescale_size  # noqa: E402
from edgeseg.runtime.resample import resize_linear, resize_u8_like_cv2  # noqa: E402

# RGB square and non-square, gray square and non-square (text: 172 x 448), a large one (hubble: 872 x 1000)
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "text", "hubble_deep_field"]
OPENAI = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
GREY_LEVEL = 1 / 255 / min(OPENAI["std"])  # one grey level in normalized units (~0.015)


@pytest.fixture(scope="module", params=PHOTOS)
def photo(request):
    raw = getattr(skdata, request.param)()
    return request.param, raw, load_image(raw)


def _tensor(img: np.ndarray, mean, std) -> torch.Tensor:
    import torchvision.transforms as T
    from PIL import Image

    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])(Image.fromarray(img))[None]


def test_openclip_recipe_is_open_clips_eval_transform_exactly(photo):
    import open_clip
    from PIL import Image

    name, raw, img = photo
    ref = open_clip.image_transform(224, is_train=False)(Image.fromarray(raw)).numpy()  # gray: converted by open_clip
    mine = preprocess(img, {"image_size": [224, 224], **OPENAI, "recipe": "openclip"})[0]
    assert mine.shape == ref.shape == (3, 224, 224)
    assert np.abs(mine - ref).max() <= 1e-6, name  # same PIL bicubic kernel, same crop offsets: no residue


def test_the_squash_default_is_what_the_runtime_always_did(photo):
    from PIL import Image

    _, _, img = photo
    prep = {"image_size": [96, 96], "mean": [0.5] * 3, "std": [0.25] * 3}  # a ToyWorld bundle: no recipe
    old = np.asarray(Image.fromarray(img).resize((96, 96), Image.BILINEAR)).astype(np.float32) / 255.0
    old = ((old - 0.5) / 0.25).transpose(2, 0, 1)[None]
    assert recipe_of(prep) == "squash-bilinear"
    assert np.array_equal(preprocess(img, prep), old)
    assert np.array_equal(preprocess(img, dict(prep, recipe="squash-bilinear")), old)


def test_lseg_recipe_is_langsegs_evaluation_resize(photo):
    name, _, img = photo
    prep = {"image_size": [480, 480], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "lseg-encoding",
            "base_size": 520}
    size = lseg_size(img.shape[:2], 520)
    ref = F.interpolate(_tensor(img, prep["mean"], prep["std"]), size, mode="bilinear", align_corners=True)
    mine = canvas(img, prep)
    assert mine.shape == tuple(ref.shape) and max(size) == 520
    # float32 rounding of the same interpolation (source coordinates computed in float32, as torch does)
    assert np.abs(mine - ref.numpy()).max() <= 1e-5, name
    whole = F.interpolate(_tensor(img, prep["mean"], prep["std"]), (480, 480), mode="bilinear", align_corners=True)
    assert np.abs(preprocess(img, prep) - whole.numpy()).max() <= 1e-5  # window=0: one resized image


def test_mmseg_recipe_is_mmcvs_opencv_resize_bit_exact(photo):
    name, _, img = photo
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    prep = {"image_size": [448, 448], "mean": mean, "std": std, "recipe": "mmseg-rescale", "scale": [2048, 448]}
    h, w = rescale_size(img.shape[:2], (2048, 448))
    ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(resize_u8_like_cv2(img, (h, w)), ref), name  # OpenCV's own integer arithmetic
    norm = (ref.astype(np.float32) - np.float32(255) * np.array(mean, np.float32)) / (
        np.float32(255) * np.array(std, np.float32))  # mmcv.imnormalize on the 0-255 image
    assert np.abs(canvas(img, prep)[0] - norm.transpose(2, 0, 1)).max() <= 1e-5


def test_gray_photos_resize_like_their_gray_originals():
    raw = skdata.text()  # 172 x 448 gray
    h, w = rescale_size(raw.shape, (2048, 448))
    assert np.array_equal(resize_u8_like_cv2(raw, (h, w)), cv2.resize(raw, (w, h), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("hw, scale, want", [
    ((400, 600), (2048, 448), (448, 672)),     # short side to 448
    ((300, 451), (2048, 448), (448, 673)),     # int(451 * 448 / 300 + 0.5)
    ((100, 1000), (2048, 448), (205, 2048)),   # the long side caps the factor (mmcv: min of both ratios)
    ((512, 512), (2048, 448), (448, 448)),
])
def test_rescale_size_follows_mmcv(hw, scale, want):
    assert rescale_size(hw, scale) == want


@pytest.mark.parametrize("hw, want", [((400, 600), (347, 520)), ((600, 400), (520, 347)), ((512, 512), (520, 520)),
                                      ((300, 451), (346, 520))])
def test_lseg_size_follows_multievalmodule(hw, want):
    assert lseg_size(hw, 520) == want


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("size", [(96, 120), (20, 31), (37, 53)])
def test_resize_linear_is_torch_bilinear(align, size):
    x = torch.randn(3, 37, 53, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x[None], size, mode="bilinear", align_corners=align)[0].numpy()
    assert np.abs(resize_linear(x.numpy(), size, align) - ref).max() < 2e-5


def test_an_unknown_recipe_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"recipe 'letterbox' is unknown to this runtime; known: \['squash-bilinear', "
                                         r"'openclip', 'lseg-encoding', 'mmseg-rescale'\]"):
        recipe_of({"recipe": "letterbox"})
    with pytest.raises(ValueError, match="recipe 'mmseg-rescale' needs 'scale'"):
        recipe_of({"recipe": "mmseg-rescale"})
