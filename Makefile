# Two entry points, both safe on a fresh machine: `make demo` and `make test`.
# Each creates/refreshes the virtual environment (torch first, pinned CPU build), then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OPENLAM := MUJOCO_GL=egl $(VENV)/bin/openlam
TORCH_SPEC ?= torch==2.13.0
DEMO   ?= runs/demo

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile scripts/system_deps.sh
	bash scripts/system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[sim,backbone,dev]"
	touch $@

test: setup
	MUJOCO_GL=egl $(PY) -m pytest -n 2 -q --durations=10

demo: setup
	$(OPENLAM) generate metaworld --tasks reach-v3,push-v3,button-press-topdown-v3,drawer-open-v3 \
		--episodes 8 --cameras corner,corner2,corner3,topview --size 64 --distractors mild \
		--action-noise 0.1 --workers 2 --seed 0 --out $(DEMO)/data --overwrite splits.test_fraction=0.25
	$(OPENLAM) validate $(DEMO)/data
	$(OPENLAM) summary $(DEMO)/data --out $(DEMO)
	rm -rf $(DEMO)/lapa_tiny $(DEMO)/supervised_tiny $(DEMO)/report
	$(OPENLAM) train configs/lapa_tiny.yaml data.dataset=$(DEMO)/data out=$(DEMO)/lapa_tiny \
		steps=600 time_limit_s=240 preview_every=200 ckpt_every=200 probe_every=100 probe_pairs=512
	$(OPENLAM) train configs/supervised_tiny.yaml data.dataset=$(DEMO)/data out=$(DEMO)/supervised_tiny \
		steps=400 time_limit_s=120 ckpt_every=200 probe_every=100 probe_pairs=512
	$(OPENLAM) eval $(DEMO)/supervised_tiny infonce_steps=0 transfer_pairs=0 cka_rounds=0 phase_draws=0 references=false
	$(OPENLAM) eval $(DEMO)/lapa_tiny --ceiling $(DEMO)/supervised_tiny phase_draws=99
	$(OPENLAM) report $(DEMO)/lapa_tiny $(DEMO)/supervised_tiny --out $(DEMO)/report
	@echo "demo outputs: $(DEMO)/contact_sheet.png $(DEMO)/summary.md $(DEMO)/lapa_tiny/previews/ $(DEMO)/lapa_tiny/summary.json"
	@echo "evaluation report: $(DEMO)/report/report.html (and report.md); metrics: $(DEMO)/lapa_tiny/eval/metrics.json"

clean:
	rm -rf $(VENV) runs
