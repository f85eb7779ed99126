# Kiln. `make serve` on a fresh machine: venv, install, export the committed demo LM, serve on :8000
# (the playground at /) while the demo classifier trains and exports in the background.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
KILN := $(VENV)/bin/kiln
REPO ?= model_repository
CKPT_LM ?= checkpoints/demo-lm
CKPT_VISION ?= checkpoints/demo-vision
CKPT_HYBRID ?= checkpoints/demo-hybrid
# Which demo models `make models` / `make export` / `make serve` build: any of lm, vision, hybrid
# (the Mamba-2 / attention hybrid of docs/hybrid.md, served beside the others:
# `make serve DEMOS="lm vision hybrid"`; its training takes longer than the Llama demo's).
DEMOS ?= lm vision
TRAIN_STEPS ?= 640
LONG_STEPS ?= 320
VISION_STEPS ?= 1500
PYTEST_ARGS ?=
# make export TARGET=triton: also the decoupled Triton model (docs/triton.md); TENSORRT=1: a verified
# TensorRT engine too (needs CUDA; skipped with the reason otherwise).
TARGET ?= inprocess
TENSORRT ?=
EXPORT_OUT_inprocess := $(REPO)/demo-lm/kiln.json
EXPORT_OUT_triton := $(REPO)/demo-lm-triton/config.pbtxt
DEMO_CKPT_lm := $(CKPT_LM)/model.safetensors
DEMO_CKPT_vision := $(CKPT_VISION)/model.safetensors
DEMO_CKPT_hybrid := $(CKPT_HYBRID)/model.safetensors
DEMO_ENTRY_lm := $(EXPORT_OUT_$(strip $(TARGET)))
DEMO_ENTRY_vision := $(REPO)/demo-vit/kiln.json
DEMO_ENTRY_hybrid := $(REPO)/demo-hybrid/kiln.json
UNKNOWN_DEMOS := $(filter-out lm vision hybrid,$(DEMOS))
ifneq ($(UNKNOWN_DEMOS),)
$(error DEMOS: unknown demo model(s) $(UNKNOWN_DEMOS); choose from lm vision hybrid)
endif

PORT ?= 8000

.PHONY: install models export serve background-demos browser-tools test lint bench bench-generate bench-step bench-classify bench-context bench-reuse eval clean proto triton-tools loadtest soak deploy-tools

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned inside the `export` extra (the CPU wheel on disk); never a bare torch.
	$(PY) -m pip install -q -e '.[export,dev]'
	touch $@

models: install $(foreach demo,$(DEMOS),$(DEMO_CKPT_$(demo)))

# Committed (7.9 MB): a fresh clone skips training. Delete it to retrain (~15 idle CPU minutes:
# 640 steps on 128-token windows, then 320 on 512-token ones); tests/export/train_demo/
# test_committed_checkpoint.py checks that the retrain reproduces it, step by step.
$(CKPT_LM)/model.safetensors:
	$(KILN) train-demo --out $(CKPT_LM) --steps $(TRAIN_STEPS) --long-steps $(LONG_STEPS)

# The digit-scene classifier (~4 CPU minutes, deterministic under --seed).
$(CKPT_VISION)/model.safetensors:
	$(KILN) train-demo --task vision --out $(CKPT_VISION) --steps $(VISION_STEPS)

$(CKPT_HYBRID)/model.safetensors:
	$(KILN) train-demo --arch hybrid --out $(CKPT_HYBRID) --steps $(TRAIN_STEPS)

export: models $(foreach demo,$(DEMOS),$(DEMO_ENTRY_$(demo)))

# The manifest's contract is a prerequisite: a Kiln that reads a new manifest version re-exports.
$(REPO)/demo-lm/kiln.json: $(CKPT_LM)/model.safetensors contracts/manifest.py
	$(KILN) export --checkpoint $(CKPT_LM) --repository $(REPO) --name demo-lm $(if $(strip $(TENSORRT)),--tensorrt)

$(REPO)/demo-lm-triton/config.pbtxt: $(CKPT_LM)/model.safetensors
	$(KILN) export --checkpoint $(CKPT_LM) --repository $(REPO) --name demo-lm --target triton \
		$(if $(strip $(TENSORRT)),--tensorrt)

$(REPO)/demo-hybrid/kiln.json: $(CKPT_HYBRID)/model.safetensors contracts/manifest.py
	$(KILN) export --checkpoint $(CKPT_HYBRID) --repository $(REPO) --name demo-hybrid --target $(TARGET)

$(REPO)/demo-vit/kiln.json: $(CKPT_VISION)/model.safetensors contracts/manifest.py
	$(KILN) export --checkpoint $(CKPT_VISION) --repository $(REPO) --name demo-vit

# Test-split accuracy (single / multi / multi+flip per aggregation), ECE, conformal coverage -> docs/vision.md
eval: install $(REPO)/demo-vit/kiln.json
	$(PY) -m export.vision.evaluate --repository $(REPO) --name demo-vit --out docs/vision.md

# The gateway starts as soon as the LM is exported; the other demos in DEMOS (the classifier; the
# hybrid LM if asked for) are built one after the other in the background and served the moment
# their entries appear (the registry's watcher). Until then their requests answer 503
# `model_unavailable` and /readyz lists them as `loading` (`<name>.pending`, service/registry.py).
serve: install $(REPO)/demo-lm/kiln.json background-demos
	KILN_MODEL_REPOSITORY=$(REPO) KILN_PORT=$(PORT) $(KILN) serve

DEMO_NAME_vision := demo-vit
DEMO_NAME_hybrid := demo-hybrid
# A shell loop, not a parse-time $(shell $(MAKE) -q ...): that would re-run in every sub-make.
background-demos: install
	@mkdir -p $(REPO) runs; todo=""; \
	for demo in $(filter-out lm,$(DEMOS)); do \
	  case $$demo in vision) entry=$(DEMO_ENTRY_vision); name=$(DEMO_NAME_vision);; \
	                 hybrid) entry=$(DEMO_ENTRY_hybrid); name=$(DEMO_NAME_hybrid);; esac; \
	  $(MAKE) -q --no-print-directory $$entry >/dev/null 2>&1 && continue; \
	  : > $(REPO)/$$name.pending; todo="$$todo $$demo:$$entry:$$name"; \
	done; \
	[ -z "$$todo" ] && exit 0; \
	echo "building$$(for t in $$todo; do printf ' %s' $${t##*:}; done) in the background (runs/<name>-build.log)"; \
	( trap 'for t in $$todo; do rm -f $(REPO)/$${t##*:}.pending; done; exit 130' INT TERM; \
	  for t in $$todo; do entry=$${t#*:}; entry=$${entry%:*}; name=$${t##*:}; \
	    if $(MAKE) --no-print-directory $$entry > runs/$$name-build.log 2>&1; \
	    then rm -f $(REPO)/$$name.pending; \
	    else echo "the build failed: see runs/$$name-build.log" > $(REPO)/$$name.pending; fi; \
	  done ) &

# Offline deployment checkers for tests/deploy (kubectl, kubernetes-validate, hadolint, promtool, buildah...).
deploy-tools: install
	VENV=$(VENV) deploy/tools/install.sh

# Line coverage of service/, export/, contracts/ and cli/, the servers and CLIs the tests start as
# subprocesses included (coverage's `patch = subprocess`, pyproject.toml).
test: install deploy-tools triton-tools browser-tools
	@rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest -q $(PYTEST_ARGS)
	@$(PY) -m coverage combine -q
	$(PY) -m coverage report --sort=-cover | tail -n 25

# Debian chromium + chromium-driver for the playground's browser tests (Selenium). If they cannot be
# installed, the reason goes to .browser-install-failed and those tests skip, quoting it.
browser-tools:
	@bash deploy/tools/install-browser.sh

# A real tritonserver (CPU) for the integration tests: deploy/triton/install.sh is idempotent. If it
# fails, the reason goes to .triton-install-failed and the Triton tests skip, quoting it.
triton-tools:
	@rm -f .triton-install-failed
	@bash deploy/triton/install.sh > .triton-install.log 2>&1 \
		|| { cp .triton-install.log .triton-install-failed; cat .triton-install-failed >&2; \
		     echo "triton-tools: install failed; the Triton integration tests will skip" >&2; }

LINTED := service export contracts cli tests loadtests deploy

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

bench: bench-generate bench-step bench-classify bench-context bench-reuse

bench-generate: install
	$(PY) -m pip install -q -e '.[export,dev,bench]'
	$(PY) loadtests/bench_generate.py --out docs/benchmarks.md

# Any variant: `make loadtest KILN_LM_VARIANT=int4 LOAD_DOC=docs/load-int4.md` (the doc names the variant).
LOAD_DOC ?= docs/load.md
loadtest: export
	$(PY) loadtests/run_load.py --repository $(REPO) --model demo-lm --classifier demo-vit --out-dir runs/load --doc $(LOAD_DOC)

# The shared-prefix mix for SOAK_MINUTES with the server's RSS and open fds sampled -> docs/load.md
# (its own section). Not part of `make test` or CI: it takes the full SOAK_MINUTES.
SOAK_MINUTES ?= 20
soak: export
	$(PY) loadtests/soak.py --repository $(REPO) --model demo-lm --classifier demo-vit --minutes $(SOAK_MINUTES) \
		--out-dir runs/soak --doc docs/load.md

# Decode ms per step against context length (64-2048) for Mamba, a hybrid and Llama -> docs/benchmarks.md
bench-context: install
	$(PY) loadtests/bench_context.py --out docs/benchmarks.md

# Prefix caching and n-gram speculative decoding, each on against off in one run, on the demo LM and
# the random-weight 110M config: TTFT, chat replay, tok/s and acceptance -> docs/benchmarks.md
bench-reuse: install $(REPO)/demo-lm/kiln.json
	$(PY) loadtests/bench_reuse.py --repository $(REPO) --name demo-lm --out docs/benchmarks.md

# The int4 decode step alone, Kiln beside onnxruntime-genai, interleaved in each of several processes
# (30M, 110M, qwen2-110M; batch 1 and 8) -> docs/benchmarks.md (its own section)
bench-step: install
	$(PY) loadtests/bench_step.py --out docs/benchmarks.md

bench-classify: install $(REPO)/demo-vit/kiln.json
	$(PY) loadtests/bench_classify.py --repository $(REPO) --name demo-vit --checkpoint $(CKPT_VISION) --out docs/vision.md

clean:
	rm -rf $(REPO)/*/ $(REPO)/*.pending $(CKPT_VISION) .pytest_cache

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. service/rpc/kiln_v1.proto
