# Two entry points for a new user: `make demo` and `make test`. Both create/use the local venv .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RT_VENV ?= .venv-runtime

.PHONY: demo test test-py runtime-only bench-cpu clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/edgeseg demo --out out/demo --bundle engines/lseg_toy

# The test suite, then the runtime in a venv that has only the `runtime` extra (no torch).
test: test-py runtime-only

test-py: $(VENV)/.installed
	$(PY) -m pytest -q

runtime-only: $(VENV)/.installed
	$(VENV)/bin/edgeseg export lseg lseg_toy --out engines/lseg_toy
	$(VENV)/bin/edgeseg export tcl tcl_toy --out engines/tcl_toy
	$(VENV)/bin/edgeseg export ifseg ifseg_toy --out engines/ifseg_toy
	$(VENV)/bin/edgeseg export refdiff toy --out engines/refdiff_toy
	$(PYTHON) -m venv $(RT_VENV)
	$(RT_VENV)/bin/python -m pip install -q --upgrade pip
	$(RT_VENV)/bin/python -m pip install -q ".[runtime]"
	$(RT_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit('torch must not be installed' if u.find_spec('torch') else 0)"
	# The plain (non-editable) install, used from the repository root: import, python -m, the script, pytest.
	$(RT_VENV)/bin/python -m pip install -q "pytest>=8"
	$(RT_VENV)/bin/python -c "import edgeseg.runtime, edgeseg.cli, sys; p = edgeseg.runtime.__file__; sys.exit(0 if 'site-packages' in p else 'edgeseg.runtime came from ' + p)"
	$(RT_VENV)/bin/python -m edgeseg.cli segment --help > /dev/null
	$(RT_VENV)/bin/edgeseg refer --help > /dev/null
	$(RT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layout.py tests/runtime/test_metrics.py
	$(VENV)/bin/edgeseg toyworld --split seen --seed 3 --n 1 --out out/runtime-only
	$(VENV)/bin/edgeseg build engines/lseg_toy --precision int8
	cd out && for b in lseg_toy lseg_toy_int8 tcl_toy ifseg_toy; do ../$(RT_VENV)/bin/edgeseg segment runtime-only/scene_000.png --labels "circle,square,triangle,star,cross,ring,grass,sand,water,sky,road,snow" --bundle ../engines/$$b --out runtime-only/overlay_$$b.png --cache-dir runtime-only/cache || exit 1; done
	$(VENV)/bin/edgeseg toyworld --split refer --seed 3 --n 1 --out out/runtime-only/refer
	cd out && ../$(RT_VENV)/bin/edgeseg refer runtime-only/refer/scene_000.png "$$($(PYTHON) -c "import json; print(json.load(open('runtime-only/refer/scene_000.json'))['expressions'][0]['text'])")" --bundle ../engines/refdiff_toy --out runtime-only/refer_refdiff_toy.png --cache-dir runtime-only/cache || exit 1
	@echo "runtime-only: 5 passed, 0 failed (lseg, lseg int8, tcl, ifseg, refdiff)"

# The CPU headline benchmarks of the README (each line reproduces one figure; JSON + .md + .png under
# benchmarks/results/). About 15 minutes on 2 cores; run nothing else meanwhile.
BENCH := $(VENV)/bin/edgeseg bench
bench-cpu: $(VENV)/.installed
	$(VENV)/bin/edgeseg export lseg lseg_toy --out engines/lseg_toy
	$(BENCH) components clip_image/ViT-B-16 --backends torch-cpu-fp32 ort-cpu-fp32 ort-cpu-int8 ort-cpu-int8dyn --out benchmarks/results/vitb16-image-cpu.json
	$(BENCH) pipeline engines/lseg_toy --backends torch-cpu-fp32 ort-cpu-fp32 ort-cpu-fp16 ort-cpu-int8 ort-cpu-int8dyn --iters 30 --out benchmarks/results/lseg-pipeline-cpu.json
	$(BENCH) components lseg_encoder/toy-tiny clip_image/toy-tiny clip_text/toy-tiny --batch 1 8 --backends torch-cpu-fp32 ort-cpu-fp32 ort-cpu-int8 ort-cpu-int8dyn --out benchmarks/results/components-tiny-cpu.json
	$(BENCH) components lseg_encoder/toy-tiny --backends torch-cpu-fp32 torch-cpu-compile ort-cpu-fp32 --out benchmarks/results/torch-compile-cpu.json
	$(BENCH) text-cache engines/lseg_toy --out benchmarks/results/text-cache-cpu.json
	$(BENCH) runtime --out benchmarks/results/runtime.json

clean:
	rm -rf $(VENV) $(RT_VENV) out build *.egg-info
