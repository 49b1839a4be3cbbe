"""Clear errors, never a traceback for a user's mistake: every bad input through the CLI ends with exactly one
line ``edgeseg CMD: error: ...`` naming the problem and the fix (exit status 1; 2 for a wrong command line),
and a bug in edgeseg keeps its traceback."""

from __future__ import annotations

import errno
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from edgeseg.cli import main
from edgeseg.runtime import LSegPredictor, RefDiffPredictor
from edgeseg.runtime.images import load_image
from edgeseg.runtime.visualize import overlay

LABELS = "circle,square,grass,sky"


def fails(argv: list[str], capsys) -> str:
    """The one line a failing command prints (its exit status must be 1, or 2 for argparse)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in msg.strip() and "Traceback" not in msg
    return msg


@pytest.fixture()
def scene(tmp_path):
    from edgeseg.train.data.toyworld import ToyWorld

    path = tmp_path / "scene.png"
    Image.fromarray(ToyWorld("all", 2)[0].image).save(path)
    return path


def segment(bundle, image, tmp_path, *extra: str) -> list[str]:
    return ["segment", str(image), "--labels", LABELS, "--bundle", str(bundle), "--out", str(tmp_path / "o.png"),
            "--cache-dir", str(tmp_path / "cache"), *extra]


def test_an_image_too_large_is_refused_before_it_is_decoded(lseg_bundle, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("1", (9000, 5000)).save(big)
    msg = fails(segment(lseg_bundle, big, tmp_path), capsys)
    assert msg == (f"edgeseg segment: error: image {str(big)!r} is 9000x5000 = 45.0 MP, above the limit of 40.0 MP; "
                   f"downscale it, or raise the limit (--max-pixels / max_pixels=) if it fits in memory")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # beyond PIL's own decompression-bomb limit
    msg = fails(segment(lseg_bundle, bomb, tmp_path, "--max-pixels", str(10**9)), capsys)
    assert msg.startswith(f"edgeseg segment: error: image {str(bomb)!r} is too large to decode safely")


@pytest.mark.parametrize("out, expect", [
    ("dir", "cannot write an image as"), ("file/x.png", "a part of that path is a file, not a folder"),
    ("o.gif", "ending in .png")])
def test_bad_output_paths_get_one_line(lseg_bundle, scene, tmp_path, capsys, out, expect):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    argv = segment(lseg_bundle, scene, tmp_path)
    argv[argv.index("--out") + 1] = str(tmp_path / out)
    assert expect in fails(argv, capsys)


def test_a_full_disk_gets_one_line_and_leaves_no_file(lseg_bundle, scene, tmp_path, capsys, monkeypatch):
    from edgeseg.runtime import fileio

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.png"))

    monkeypatch.setattr(fileio.os, "fsync", full)
    msg = fails(segment(lseg_bundle, scene, tmp_path), capsys)
    assert msg == f"edgeseg segment: error: {tmp_path / 'o.png'}: no space left on the device: free some space or write elsewhere"
    assert not (tmp_path / "o.png").exists() and not list(tmp_path.glob(".o.png.*"))


def test_labels_that_are_one_prompt_and_too_many_labels_are_refused(lseg_bundle, scene, tmp_path, capsys):
    argv = segment(lseg_bundle, scene, tmp_path)
    argv[argv.index("--labels") + 1] = "circle,CIRCLE"
    assert "are the same prompt 'circle'" in fails(argv, capsys)
    argv[argv.index("--labels") + 1] = ",".join(f"thing {i}" for i in range(1000))
    assert fails(argv, capsys) == ("edgeseg segment: error: 1000 labels given; this bundle's lseg_head takes at most "
                                   "64 per call (the manifest's max): segment with fewer labels, or re-export with a "
                                   "larger max")


def test_a_bug_keeps_its_traceback_and_debug_shows_everything(lseg_bundle, scene, tmp_path, monkeypatch, capsys):
    def broken(self, *a, **k):
        raise TypeError("internal mix-up")

    monkeypatch.setattr(LSegPredictor, "predict", broken)
    with pytest.raises(TypeError, match="internal mix-up"):
        main(segment(lseg_bundle, scene, tmp_path))
    with pytest.raises(FileNotFoundError):
        main(["--debug", *segment(lseg_bundle, tmp_path / "missing.png", tmp_path)])


def test_a_library_error_is_a_bug_not_a_one_liner():
    from edgeseg.errors import user_message

    try:
        np.zeros(3) + np.zeros(4)
    except ValueError as e:
        assert user_message(e) is None
    from edgeseg.runtime.predictor_base import parse_labels

    try:
        parse_labels([])  # raised by edgeseg on purpose
    except ValueError as e:
        assert user_message(e) == "labels must be a non-empty list of strings (or 'a,b,c'); got []"
    assert user_message(ModuleNotFoundError("No module named 'torch'", name="torch")) == \
        "torch is not installed; this command needs it: pip install 'edgeseg[export]'"
    assert user_message(MemoryError()).startswith("not enough memory for this input")


def test_wrong_command_lines_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", "x.png", "--labels", "a", "--max-pixels", "0"])
    assert e.value.code == 2 and "--max-pixels: 0 must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("options, msg", [
    ({"strength": 0}, "Ref-Diff option strength=0: must be a finite number in (0.0, 1.0]"),
    ({"alpha": float("nan")}, "Ref-Diff option alpha=nan: must be a finite number in [0.0, 1.0]"),
    ({"guidance": "x"}, "Ref-Diff option guidance='x': must be a finite number in [0.0, 100.0]"),
    ({"alpha": 2.0}, "Ref-Diff option alpha=2.0: must be a finite number in [0.0, 1.0]"),
    ({"steps": 5, "strength": 0.1}, "Ref-Diff options steps=5 x strength=0.1 leave no DDIM step"),
    ({"single_t": 5000}, "Ref-Diff option single_t=5000: must be an int in [0, 999] or None"),
    ({"parser": ""}, "Ref-Diff option parser='': must be a spaCy pipeline name or None"),
])
def test_refdiff_options_are_checked_at_construction(refdiff_bundle, options, msg):
    with pytest.raises(ValueError) as e:
        RefDiffPredictor(refdiff_bundle, cache_dir=None, **options)
    assert str(e.value).startswith(msg)


def test_images_arrive_as_files_would(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    rotated = Image.fromarray(rgb)
    ex = rotated.getexif()
    ex[0x0112] = 6  # EXIF: rotate 90 degrees clockwise to display
    rotated.save(tmp_path / "phone.jpg", exif=ex, quality=100)
    assert load_image(tmp_path / "phone.jpg").shape == (30, 20, 3)
    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    got = load_image(tmp_path / "g16.png")
    assert got.max() == round(59900 / 257) and np.array_equal(got, load_image(g16))  # scaled, not saturated
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(rgba), load_image(tmp_path / "rgba.png"))
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(load_image(gray), load_image(tmp_path / "gray.png"))
    with pytest.raises(ValueError, match="is 0x0 pixels, too small"):
        load_image(Image.new("RGB", (0, 0)))


def test_overlays_are_bounded_and_readable_and_jpeg_works(lseg_bundle, tmp_path, capsys):
    from edgeseg.train.data.toyworld import ToyWorld

    scene = ToyWorld("all", 2)[0]
    big = overlay(np.asarray(Image.fromarray(scene.image).resize((4000, 3000))),
                  np.asarray(Image.fromarray(scene.semantic.astype(np.uint8)).resize((4000, 3000))), list("abcdefghijklmn"))
    assert big.width == 2048 and big.height < 1700
    tiny = overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64), ["circle"], title="a title")
    assert tiny.width >= 320 and tiny.height >= 160
    small = tmp_path / "s.png"
    Image.fromarray(scene.image).save(small)
    argv = segment(lseg_bundle, small, tmp_path)
    argv[argv.index("--out") + 1] = str(tmp_path / "o.jpg")
    main(argv)
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG"


def test_a_local_folder_named_like_a_bundled_checkpoint_does_not_shadow_it(tmp_path, monkeypatch):
    from edgeseg.train.checkpoint import CHECKPOINT_DIR, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lseg_toy").mkdir()  # e.g. a bundle written with --out lseg_toy
    (tmp_path / "lseg_toy" / "manifest.json").write_text("{}")
    with pytest.warns(UserWarning, match="the local folder 'lseg_toy' is not a checkpoint"):
        assert resolve_checkpoint("lseg_toy") == CHECKPOINT_DIR / "lseg_toy"
    with pytest.raises(FileNotFoundError, match=r"checkpoint './lseg_toy' is the local folder lseg_toy, which has no "
                                                r"config.json"):
        resolve_checkpoint("./lseg_toy")
    shutil.copytree(CHECKPOINT_DIR / "lseg_toy", tmp_path / "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checkpoint("mine").resolve() == tmp_path / "mine"


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04 truncated zip",
                                     json.dumps({"a": 1}).encode()])
def test_a_bad_weights_file_is_not_a_safe_checkpoint_and_nothing_suggests_unsafe_loading(tmp_path, content):
    from edgeseg.train.checkpoint import safe_torch_load

    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    with pytest.raises(ValueError) as e:
        safe_torch_load(bad, "SAM vit_b")
    msg = str(e.value)
    assert msg.startswith(f"{bad} is not a safe SAM vit_b checkpoint: it cannot be read as tensors only")
    assert "weights_only" not in msg and "\n" not in msg


def test_results_stay_small_for_large_images(lseg_bundle, refdiff_bundle, tmp_path):
    """Full-resolution probabilities and proposal masks are opt-in: by default a result holds the label map (or
    the chosen mask) at full size, probabilities at the model's resolution and proposals as boxes + crops."""
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    sample = ReferWorld(2, ToyWorldConfig(size=96))[0]
    big = np.asarray(Image.fromarray(sample.scene.image).resize((2000, 1500)))
    lseg = LSegPredictor(lseg_bundle, cache_dir=tmp_path)
    labels = [f"thing {i}" for i in range(60)]
    res = lseg.segment(big, labels)
    assert res.label_map.shape == (1500, 2000) and res.probabilities.shape == (60, 96, 96)
    full = lseg.segment(big, labels[:4], full_probabilities=True)
    assert full.probabilities.shape == (4, 1500, 2000)
    rd = RefDiffPredictor(refdiff_bundle, cache_dir=tmp_path, parser=None).segment(big, sample.expression.text)
    n = len(rd.proposals)
    assert rd.proposals.shape == (n, 1500, 2000) and rd.proposals.nbytes < 0.6 * n * 1500 * 2000
    assert np.array_equal(rd.proposals[rd.best], rd.mask) and rd.proposals.full().shape == (n, 1500, 2000)
