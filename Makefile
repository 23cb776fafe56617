# opd-megatron: two commands do all set-up on a fresh machine.
#   make demo   set up .venv, then run OPD on the embedded CPU default and print the table
#   make test   set up .venv (+ local Slurm packages), then run the test suite
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup demo compare compare-full continual test test-fast bench gpu-check lint clean

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) -m opd_megatron run recipes/opd-tiny-cpu.yaml

# The compute-efficiency table at toy scale by the TML blog's protocol (opd compare): the SFT
# ladder and its start checkpoint are shipped (assets/tiny/sft-start), the learning rates are
# the sweep's; continued SFT, RL and OPD (both KL estimators) x 3 seeds run to the target.
compare: setup
	$(PY) -m opd_megatron compare recipes/compare-tiny-cpu.yaml

# The same from nothing: the ladder rebuilt from a random init, every arm's lr swept first.
compare-full: setup
	$(PY) -m opd_megatron compare recipes/compare-tiny-cpu.yaml run.name=compare-tiny-cpu-full \
		compare.sweep=true student.path=.cache/tiny/sft-start-rebuilt

# Continual learning: mid-train on new facts, then OPD from the round's starting checkpoint.
continual: setup
	$(PY) -m opd_megatron continual recipes/continual-tiny-cpu.yaml run.quiet=true

test: setup
	$(PY) -m pytest -q tests --durations=25

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# The learner's GPU check (bench/gpu_check.py; its tiny CPU form where there is no GPU). On the
# lent machine, which has no .venv: make gpu-check PY=python3 ARGS="--json $OUT/gpu_check.json"
gpu-check: $(if $(filter .venv/bin/python,$(PY)),setup)
	$(PY) bench/gpu_check.py $(ARGS)

lint: setup
	shellcheck slurm/*.sh slurm/*.sbatch launch/*.sh scripts/*.sh

clean:
	rm -rf runs .cache
