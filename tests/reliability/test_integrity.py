"""Integrity and containment: bundles are read and written only inside their folder, every file they need is
hashed, the text caches cannot be poisoned, and every manifest number is checked with a one-line error."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.bundle import Bundle, BundleError
from edgeseg.runtime.cache import MAGIC, TextEmbeddingCache
from edgeseg.runtime.fileio import sha256_file
from edgeseg.runtime.integrity import external_data_locations
from edgeseg.runtime.text import TextEncoder
from edgeseg.runtime.tokenizer import ClipTokenizer

RNG = np.random.default_rng(0)


def copy(bundle: Path, dst: Path) -> Path:
    return Path(shutil.copytree(bundle, dst))


def edit(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def refused(folder: Path, match: str, **kw) -> str:
    with pytest.raises(BundleError) as e:
        Bundle(folder, **kw)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def head_feeds(n_labels: int = 3) -> dict[str, np.ndarray]:
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return {"pixel_embeds": unit(RNG.standard_normal((1, 128, 48, 48))),
            "text_embeds": unit(RNG.standard_normal((n_labels, 128)))}


def swap_ids(folder: Path) -> None:
    """A tokenizer that maps 'circle' and 'square' to each other's ids (a valid file, other embeddings)."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    v = tok["model"]["vocab"]
    v["circle</w>"], v["square</w>"] = v["square</w>"], v["circle</w>"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))


def enc_feeds() -> dict[str, np.ndarray]:
    return {"image": RNG.standard_normal((1, 3, 96, 96)).astype(np.float32)}


def make_external(folder: Path, name: str = "lseg_encoder", list_it: bool = True) -> str:
    """Re-save one component with all its weights in ``<name>.onnx.data`` and record it in the manifest."""
    import onnx

    path = folder / f"{name}.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data", size_threshold=0)
    data = f"{name}.onnx.data"
    ext = [{"file": data, "sha256": sha256_file(folder / data)}] if list_it else []
    edit(folder, lambda m: m["components"][name].update(sha256=sha256_file(path), external_data=ext))
    return data


# --------------------------------------------------------------- 1. builds write only inside their staging folder
@pytest.mark.parametrize("how", ["dotdot", "absolute", "nested-dotdot"])
def test_build_refuses_a_component_file_outside_the_bundle_and_writes_nothing(lseg_bundle, tmp_path, how):
    from edgeseg.export.build.builder import build_bundle

    victim = copy(lseg_bundle, tmp_path / "victim")
    before = sha256_file(victim / "lseg_head.onnx"), (victim / "lseg_head.onnx").stat().st_mtime_ns
    evil = copy(lseg_bundle, tmp_path / "evil")
    name = {"dotdot": "../victim/lseg_head.onnx", "absolute": str(victim / "lseg_head.onnx"),
            "nested-dotdot": "x/../../victim/lseg_head.onnx"}[how]
    edit(evil, lambda m: m["components"]["lseg_head"].update(file=name))
    with pytest.raises(BundleError) as e:
        build_bundle(evil, "fp16", out=tmp_path / "evil_fp16", progress=False)
    assert "\n" not in str(e.value)
    assert f"components.lseg_head.file = {name!r}: must be a plain file name inside the bundle folder" in str(e.value)
    assert (sha256_file(victim / "lseg_head.onnx"), (victim / "lseg_head.onnx").stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "victim"]  # no output, no staging leftovers


def test_build_names_the_files_it_writes_itself(lseg_bundle, tmp_path):
    from edgeseg.export.build.builder import build_bundle

    src = copy(lseg_bundle, tmp_path / "src")
    os.replace(src / "lseg_head.onnx", src / "head-v2.onnx")  # a legal, unusual name in the source
    edit(src, lambda m: m["components"]["lseg_head"].update(file="head-v2.onnx"))
    out = build_bundle(src, "int8dyn", out=tmp_path / "out", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["clip_text.onnx", "lseg_encoder.onnx", "lseg_head.onnx",
                                                    "manifest.json", "tokenizer.json"]
    assert Bundle(out).component("lseg_head")["file"] == "lseg_head.onnx"


def test_lint_refuses_a_component_file_outside_the_bundle(lseg_bundle, tmp_path):
    from edgeseg.export.build.lint import lint_bundle

    b = copy(lseg_bundle, tmp_path / "b")
    edit(b, lambda m: m["components"]["lseg_head"].update(file="/etc/hostname"))
    with pytest.raises(ValueError, match=r"components.lseg_head.file = '/etc/hostname': must be a plain file name"):
        lint_bundle(b)


# --------------------------------------------------------------- 2. the runtime reads only inside the bundle
@pytest.mark.parametrize("entry, name", [("component", "lseg_head.onnx"), ("tokenizer", "tokenizer.json")])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_files_outside_the_bundle_are_refused(lseg_bundle, tmp_path, entry, name, how):
    b = copy(lseg_bundle, tmp_path / "b")
    outside = Path(shutil.copyfile(b / name, tmp_path / f"outside-{name}"))
    where = "components.lseg_head.file" if entry == "component" else "tokenizer.file"
    if how == "symlink":
        (b / name).unlink()
        (b / name).symlink_to(outside)
        refused(b, f"{where} = {name!r}: {b / name} is a symlink to {outside.resolve()}, outside the bundle folder")
        return
    ref = f"../{outside.name}" if how == "dotdot" else str(outside)
    edit(b, lambda m: (m["components"]["lseg_head"] if entry == "component" else m["tokenizer"]).update(file=ref))
    refused(b, f"{where} = {ref!r}: must be a plain file name inside the bundle folder")


@pytest.mark.parametrize("change, message", [
    (lambda m: m["components"]["lseg_head"].update(engine={"file": "../x.plan", "sha256": "0" * 64}),
     "components.lseg_head.engine.file = '../x.plan': must be a plain file name"),
    (lambda m: m.update({"../../evil_tokenizer": m["tokenizer"]}),  # a build would write <key>.json
     "tokenizer entry '../../evil_tokenizer' = '../../evil_tokenizer': must be a plain file name"),
    (lambda m: m["components"].update({"../evil": m["components"]["lseg_head"]}),  # builds write <name>.onnx
     "components.../evil = '../evil': must be a plain file name")], ids=["engine", "tokenizer-key", "component-name"])
def test_other_names_that_would_leave_the_bundle_are_refused(lseg_bundle, tmp_path, change, message):
    b = copy(lseg_bundle, tmp_path / "b")
    edit(b, change)
    refused(b, message)


def test_a_symlink_that_stays_inside_the_bundle_is_accepted(lseg_bundle, tmp_path):
    b = copy(lseg_bundle, tmp_path / "b")
    os.replace(b / "lseg_head.onnx", b / "real_head.onnx")
    (b / "lseg_head.onnx").symlink_to("real_head.onnx")
    assert Bundle(b).run("lseg_head", head_feeds())["logits"].shape == (1, 3, 96, 96)


def test_the_tokenizer_loader_refuses_paths_outside_its_folder(lseg_bundle):
    facts = dict(Bundle(lseg_bundle).manifest["tokenizer"], file="../tokenizer.json")
    with pytest.raises(ValueError, match="must be a plain file name inside the bundle folder"):
        ClipTokenizer.from_manifest(facts, lseg_bundle)


# --------------------------------------------------------------- 3. every file is hashed, external data included
def test_a_replaced_tokenizer_is_refused(lseg_bundle, tmp_path):
    b = copy(lseg_bundle, tmp_path / "b")
    swap_ids(b)
    refused(b, f"tokenizer 'tokenizer': {b / 'tokenizer.json'} does not match the sha256 in the manifest")


def test_the_refdiff_sd_tokenizer_is_hashed_too(refdiff_bundle, tmp_path):
    b = copy(refdiff_bundle, tmp_path / "b")
    shutil.copyfile(b / "tokenizer.json", b / "sd_tokenizer.json")
    edit(b, lambda m: m["sd_tokenizer"].update(file="sd_tokenizer.json"))
    Bundle(b)  # its own file, same content: fine
    with open(b / "sd_tokenizer.json", "ab") as f:
        f.write(b" ")
    refused(b, "tokenizer 'sd_tokenizer':")


def test_external_data_is_listed_hashed_and_runs_like_the_single_file(lseg_bundle, tmp_path):
    b = copy(lseg_bundle, tmp_path / "b")
    feeds = enc_feeds()
    want = Bundle(lseg_bundle).run("lseg_encoder", feeds)["pixel_embeds"]
    data = make_external(b)
    assert external_data_locations(b / "lseg_encoder.onnx") == [data]
    assert (b / "lseg_encoder.onnx").stat().st_size * 10 < (b / data).stat().st_size
    np.testing.assert_array_equal(Bundle(b).run("lseg_encoder", feeds)["pixel_embeds"], want)
    (b / data).write_bytes(RNG.bytes((b / data).stat().st_size))  # random weights: NaNs before the fix
    refused(b, f"component 'lseg_encoder' (external data): {b / data} does not match the sha256")
    (b / data).unlink()
    refused(b, f"component 'lseg_encoder' (external data): file {b / data} is missing")


def test_external_data_the_manifest_does_not_list_is_refused(lseg_bundle, tmp_path):
    b = copy(lseg_bundle, tmp_path / "b")
    make_external(b, list_it=False)
    refused(b, "component 'lseg_encoder': lseg_encoder.onnx loads external data ['lseg_encoder.onnx.data'] that "
               "the manifest does not list with a sha256")
    refused(b, "does not list", check_hashes=False)  # a completeness check, not a hash check
    b = copy(lseg_bundle, tmp_path / "c")
    (b / "x.data").write_bytes(b"")
    edit(b, lambda m: m["components"]["lseg_head"].update(
        external_data=[{"file": "x.data", "sha256": sha256_file(b / "x.data")}]))
    refused(b, "component 'lseg_head': the manifest lists external data ['x.data'] that lseg_head.onnx does not use")


def test_the_protobuf_reader_finds_what_onnx_finds_without_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    for msg, field, number in [(onnx.ModelProto, "graph", 7), (onnx.ModelProto, "functions", 25),
                               (onnx.GraphProto, "initializer", 5), (onnx.GraphProto, "sparse_initializer", 15),
                               (onnx.NodeProto, "attribute", 5), (onnx.AttributeProto, "g", 6),
                               (onnx.AttributeProto, "tensors", 10), (onnx.TensorProto, "external_data", 13)]:
        assert msg.DESCRIPTOR.fields_by_name[field].number == number
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    sub = lambda n: helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.full((32, 32), 2, np.float32), n))], n, [], [helper.make_tensor_value_info("c", 1, None)])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=sub("then_c"), else_branch=sub("else_c")),
             helper.make_node("MatMul", ["y", "w"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("z", 1, None)], [w])
    model = helper.make_model(g)
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0, convert_attribute=True)
    want = {t.external_data[0].value for t in onnx.external_data_helper._get_all_tensors(
        onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)) if t.external_data}
    assert len(want) == 3 and set(external_data_locations(tmp_path / "m.onnx")) == want
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    assert external_data_locations(tmp_path / "junk.onnx") is None  # left for onnxruntime to refuse


def test_the_runtime_checks_external_data_without_the_onnx_package(lseg_bundle, tmp_path):
    b = copy(lseg_bundle, tmp_path / "b")
    make_external(b, list_it=False)
    code = ("import sys; sys.modules['onnx'] = None\nfrom edgeseg.runtime.bundle import Bundle, BundleError\n"
            f"try:\n    Bundle({str(b)!r})\nexcept BundleError as e:\n    print(e)\n"
            "print('onnx' in sys.modules and sys.modules['onnx'] is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "that the manifest does not list" in out.stdout and out.stdout.split()[-1] == "False"


def test_export_writes_one_data_file_for_an_external_graph(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from edgeseg.export.build.external import finalize
    from edgeseg.export.bundle import export_component
    from edgeseg.export.spec import ComponentSpec, dynamic_input
    from edgeseg.runtime.manifest import TensorSpec

    spec = ComponentSpec("toy_mlp", (dynamic_input("batch", "x", (16,), 4),),
                         (TensorSpec("y", "float32", ("batch", 8)),))
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    run = lambda d: ort.InferenceSession(str(d / "toy_mlp.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((2, 16), np.float32)})[0]
    one, ext, loose = (tmp_path / d for d in ("one", "ext", "loose"))  # loose: the exporter's layout above 2 GB
    for d in (one, ext, loose):
        d.mkdir()
    assert export_component(net, spec, one / "toy_mlp.onnx") == []
    assert export_component(net, spec, ext / "toy_mlp.onnx", external=True) == ["toy_mlp.onnx.data"]
    onnx.save_model(onnx.load(str(one / "toy_mlp.onnx")), str(loose / "toy_mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)  # one file per tensor
    assert len(list(loose.iterdir())) > 2 and finalize(loose / "toy_mlp.onnx") == ["toy_mlp.onnx.data"]
    for d in (ext, loose):
        assert sorted(p.name for p in d.iterdir()) == ["toy_mlp.onnx", "toy_mlp.onnx.data"]
        np.testing.assert_array_equal(run(d), run(one))


@pytest.mark.parametrize("precision", ["fp16", "int8dyn"])
def test_builds_keep_external_data_in_one_listed_file(lseg_bundle, built, tmp_path, precision):
    from edgeseg.export.build.builder import build_bundle

    src = copy(lseg_bundle, tmp_path / "src")
    make_external(src)
    out = build_bundle(src, precision, out=tmp_path / "out", progress=False)
    entry = Bundle(out).component("lseg_encoder")
    assert entry["external_data"] == [{"file": "lseg_encoder.onnx.data",
                                       "sha256": sha256_file(out / "lseg_encoder.onnx.data")}]
    assert "external_data" not in Bundle(out).component("clip_text")  # small graphs stay single files
    feeds = enc_feeds()
    ref = Bundle(built("lseg", precision)).run("lseg_encoder", feeds)["pixel_embeds"]
    np.testing.assert_allclose(Bundle(out).run("lseg_encoder", feeds)["pixel_embeds"], ref, atol=1e-3)


# --------------------------------------------------------------- 4. the text caches cannot be poisoned
def test_a_bundle_with_another_tokenizer_never_shares_text_cache_entries(lseg_bundle, tmp_path):
    evil = copy(lseg_bundle, tmp_path / "evil")
    swap_ids(evil)
    edit(evil, lambda m: m["tokenizer"].update(sha256=sha256_file(evil / "tokenizer.json")))
    cache = tmp_path / "cache"
    poisoned = TextEncoder(Bundle(evil), cache).embed(["circle"])  # fills the shared cache first
    pristine = TextEncoder(Bundle(lseg_bundle), cache)
    got, fresh = pristine.embed(["circle"]), TextEncoder(Bundle(lseg_bundle), None).embed(["circle"])
    assert not np.allclose(poisoned, fresh)  # the swap matters ...
    np.testing.assert_array_equal(got, fresh)  # ... and never reaches the pristine bundle
    assert pristine.cache.stats["misses"] == 1


def test_the_refdiff_sd_text_cache_key_covers_the_sd_tokenizer(refdiff_bundle, tmp_path):
    from edgeseg.runtime.refdiff_localize import AttentionLocalizer

    other = copy(refdiff_bundle, tmp_path / "other")
    edit(other, lambda m: m["sd_tokenizer"].update(pad_id=0))  # padding changes the hidden states
    cache = tmp_path / "cache"
    text = ["the red circle"]
    AttentionLocalizer(other, cache).text_states(text)
    loc = AttentionLocalizer(refdiff_bundle, cache)
    np.testing.assert_array_equal(loc.text_states(text), AttentionLocalizer(refdiff_bundle, None).text_states(text))
    assert loc.sd_cache.stats["misses"] == 1


# --------------------------------------------------------------- 5. one odd cache entry never breaks the cache
def _odd_entry(path: Path, dim: int) -> None:
    payload = np.ones(dim, "<f4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MAGIC + struct.pack("<IB3x", dim, 1) + hashlib.sha256(payload).digest() + payload)


@pytest.mark.parametrize("hint", [None, 8])
def test_an_entry_of_another_dimension_is_ignored_and_valid_entries_survive(tmp_path, hint):
    enc = lambda p: np.stack([np.full(8, len(t), np.float32) for t in p])
    TextEmbeddingCache(enc, "e" * 64, tmp_path).get(["cat", "dog"])
    good = {p: (p.read_bytes(), p.stat().st_ino) for p in tmp_path.rglob("*.emb")}
    cache = TextEmbeddingCache(enc, "e" * 64, tmp_path, **({} if hint is None else {"dim": hint}))
    _odd_entry(cache._path(cache._key("{}", "bird")), 5)  # checksum-valid, read first
    with pytest.warns(RuntimeWarning, match=r"holds a 5-dim embedding, the encoder gives 8-dim ones") as rec:
        out = cache.get(["bird", "cat", "dog"])
    np.testing.assert_array_equal(out, enc(["bird", "cat", "dog"]))
    assert len(rec) == 1 and cache.stats["corrupt_recovered"] == 1  # only the odd one is reported
    assert {p: (p.read_bytes(), p.stat().st_ino) for p in good} == good  # never deleted nor rewritten
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = TextEmbeddingCache(enc, "e" * 64, tmp_path)
        np.testing.assert_array_equal(again.get(["bird", "cat", "dog"]), out)
        assert again.stats["encoded"] == 0


def test_the_text_encoder_recovers_from_an_odd_cache_entry(lseg_bundle, tmp_path):
    pristine = TextEncoder(Bundle(lseg_bundle), None).embed(["circle", "star"])
    enc = TextEncoder(Bundle(lseg_bundle), tmp_path)
    _odd_entry(enc.cache._path(enc.cache._key("{}", "circle")), 3)
    with pytest.warns(RuntimeWarning, match="holds a 3-dim embedding, the encoder gives 128-dim ones"):
        np.testing.assert_array_equal(enc.embed(["circle", "star"]), pristine)
    np.testing.assert_array_equal(TextEncoder(Bundle(lseg_bundle), tmp_path).embed(["circle", "star"]), pristine)


# --------------------------------------------------------------- 6. every manifest number is checked
def _set(path: str, value):
    """Set (or, with KeyError, delete) the manifest field at the dotted ``path`` (list indices as numbers)."""
    def fn(m):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = functools.reduce(lambda n, p: n[p], parents, m)
        node.pop(last) if value is KeyError else node.__setitem__(last, value)
    return fn


LSEG_CASES = [
    ("components.lseg_head.inputs.1.max.0", 0, "components.lseg_head.inputs[1].max[0] = 0: must be a positive integer"),
    ("components.lseg_head.inputs.1.max.0", -1, "components.lseg_head.inputs[1].max[0] = -1: must be a positive"),
    ("components.lseg_encoder.inputs.0.max.0", "abc", "inputs[0].max[0] = 'abc': must be a positive integer"),
    ("components.lseg_encoder.inputs.0.min.0", 8, "axis 0 has min 8, opt 1, max 4: must be min <= opt <= max"),
    ("components.lseg_encoder.inputs.0.max.2", 97, "axis 2 is fixed at 96 but its min/max are 96/97"),
    ("components.lseg_encoder.inputs.0.shape.2", 0, "components.lseg_encoder.inputs[0].shape[2] = 0: must be a"),
    ("components.lseg_head.outputs.0.shape.2", "abc", "outputs[0].shape[2] = 'abc': not a dynamic axis of the inputs"),
    ("components.lseg_encoder.opset", "abc", "components.lseg_encoder.opset = 'abc': must be an integer in [1, 1000]"),
    ("preprocessing.image_size.0", 0, "preprocessing.image_size[0] = 0: must be an integer in [1, 32768]"),
    ("preprocessing.image_size.1", -96, "preprocessing.image_size[1] = -96: must be an integer in [1, 32768]"),
    ("preprocessing.std.1", 0, "preprocessing.std[1] = 0: must be a positive number"),
    ("preprocessing.std.2", float("nan"), "preprocessing.std[2] = nan: must be a positive number"),
    ("preprocessing.mean.0", "abc", "preprocessing.mean[0] = 'abc': must be a finite number"),
    ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean = [0.5, 0.5]: must be a list of 3"),
    ("preprocessing.std", KeyError, "preprocessing lacks 'std'"),
    ("preprocessing.base_size", 0, "preprocessing.base_size = 0: must be a positive number"),
    ("preprocessing.window", [0, 96], "preprocessing.window[0] = 0: must be a positive integer"),
    ("preprocessing", KeyError, "the manifest lacks 'preprocessing'"),
    ("tokenizer", KeyError, "the manifest lacks 'tokenizer'"),
    ("tokenizer.context_length", "abc", "tokenizer.context_length = 'abc': must be an integer in [2, 65536]"),
    ("tokenizer.context_length", 16, "context_length = 16: component 'clip_text' takes input_ids of length 32"),
    ("tokenizer.eot_id", 49408, "tokenizer.eot_id = 49408: must be an integer in [0, 49407]"),
    ("tokenizer.sha256", "abc", "tokenizer.sha256 = 'abc': must be a sha256 hex digest"),
    ("components", {}, "the manifest needs a 'method' string and a non-empty 'components' object"),
    ("components.lseg_head.external_data", "x.data", "components.lseg_head.external_data = 'x.data': must be a list"),
]
REFDIFF_CASES = [
    ("method_config.vae_preprocessing.std.0", 0, "method_config.vae_preprocessing.std[0] = 0: must be a positive"),
    ("method_config.sam_preprocessing.img_size", 0, "method_config.sam_preprocessing.img_size = 0: must be an integer"),
    ("method_config.scheduler.num_train_timesteps", 0, "method_config.scheduler.num_train_timesteps = 0: must be a"),
    ("method_config.amg.points_per_side", -1, "method_config.amg.points_per_side = -1: must be a positive integer"),
    ("method_config.attention.grid", [12], "method_config.attention.grid = [12]: must be a list of 2"),
    ("sd_tokenizer.pad_id", -1, "sd_tokenizer.pad_id = -1: must be an integer in [0, 49407]"),
    ("components.sam_decoder.inputs.0.shape.0", "n", "sam_decoder.inputs[0].min = None: must be a list of 4 ints"),
    ("sd_tokenizer", KeyError, "the manifest lacks 'sd_tokenizer' (a refdiff bundle needs it)"),
    ("method_config.scheduler", KeyError, "method_config lacks 'scheduler' (a refdiff bundle needs scheduler, "),
]


@pytest.mark.parametrize("method, path, value, message",
                         [("lseg", *c) for c in LSEG_CASES] + [("refdiff", *c) for c in REFDIFF_CASES])
def test_a_bad_manifest_number_is_refused_naming_the_field(request, tmp_path, method, path, value, message):
    b = copy(request.getfixturevalue(f"{method}_bundle"), tmp_path / "b")
    edit(b, _set(path, value))
    msg = refused(b, message)
    assert msg.startswith(f"{b / 'manifest.json'}: ") and msg.endswith(f"--out {b})")


@pytest.mark.parametrize("text, kind", [("[1, 2]", "array"), ("null", "null"), ('"x"', "string"), ("3", "number")])
def test_a_manifest_that_is_not_an_object_is_refused_in_one_line(lseg_bundle, tmp_path, text, kind):
    b = copy(lseg_bundle, tmp_path / "b")
    (b / "manifest.json").write_text(text)
    refused(b, f"holds a JSON {kind} ({text}), not an object: not a bundle manifest")


def test_run_enforces_the_declared_min_and_max_shapes(lseg_bundle):
    b = Bundle(lseg_bundle)
    with pytest.raises(ValueError, match=r"^component 'lseg_head' input 'text_embeds' axis 0 \(labels\) is 65, "
                                         r"outside the manifest's range \[1, 64\]; split the input"):
        b.run("lseg_head", head_feeds(65))
    with pytest.raises(ValueError, match=r"^component 'lseg_encoder' input 'image' axis 0 \(batch\) is 5, outside "
                                         r"the manifest's range \[1, 4\]"):
        b.run("lseg_encoder", {"image": np.zeros((5, 3, 96, 96), np.float32)})
    with pytest.raises(ValueError, match=r"input 'image' axis 2 is 97; the manifest fixes it at 96"):
        b.run("lseg_encoder", {"image": np.zeros((1, 3, 97, 96), np.float32)})
    assert b.run("lseg_head", head_feeds(64))["logits"].shape == (1, 64, 96, 96)
