"""The runtime imports and segments in a process where importing torch (or train/export) raises."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, json, importlib.abc
    BLOCKED = ("torch", "torchvision", "open_clip", "safetensors", "edgeseg.train", "edgeseg.export")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked import of {name}")
    sys.meta_path.insert(0, Block())
    import numpy as np
    from PIL import Image, ImageDraw
    import edgeseg.runtime.lseg as L
    img = Image.new("RGB", (96, 96), (70, 140, 50))
    ImageDraw.Draw(img).ellipse([20, 20, 70, 70], fill=(215, 40, 35))
    pred = L.LSegPredictor(sys.argv[1], cache_dir=sys.argv[2])
    res = pred.segment(np.asarray(img), ["circle", "square", "grass", "sand"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip"))
    print(json.dumps({"loaded": loaded, "centre": res.labels[res.label_map[45, 45]],
                      "corner": res.labels[res.label_map[2, 2]]}))
""")


def test_runtime_without_torch(lseg_bundle, tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(lseg_bundle), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["loaded"] == []
    assert res == {"loaded": [], "centre": "circle", "corner": "grass"}


def test_blocker_really_blocks():
    code = SCRIPT.split("import numpy")[0] + "import torch\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "blocked import of torch" in out.stderr


REFER_SCRIPT = SCRIPT.split("import numpy")[0].replace(
    '"edgeseg.train", "edgeseg.export")', '"edgeseg.train", "edgeseg.export", "diffusers", "transformers", '
    '"segment_anything")') + textwrap.dedent("""
    import numpy as np
    from PIL import Image, ImageDraw
    from edgeseg.runtime import RefDiffPredictor
    img = Image.new("RGB", (96, 96), (70, 140, 50))
    ImageDraw.Draw(img).ellipse([10, 30, 40, 60], fill=(215, 40, 35))
    ImageDraw.Draw(img).rectangle([55, 30, 85, 60], fill=(40, 70, 215))
    pred = RefDiffPredictor(sys.argv[1], cache_dir=sys.argv[2])
    pred.set_image(np.asarray(img))
    res = pred.predict("the red circle")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "diffusers", "transformers"))
    print(json.dumps({"loaded": loaded, "target": res.target_word, "pixels": int(res.mask.sum())}))
""")


def test_refdiff_runtime_without_torch(refdiff_bundle, tmp_path):
    out = subprocess.run([sys.executable, "-c", REFER_SCRIPT, str(refdiff_bundle), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["loaded"] == [] and res["target"] == "circle" and res["pixels"] > 0
