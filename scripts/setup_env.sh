#!/usr/bin/env bash
# Create .venv with everything the project needs on a fresh CPU machine; idempotent.
#   bash scripts/setup_env.sh            (make setup / make demo / make test call it)
# Order matters (see README "Install"): torch 2.13.0 CPU first, then SGLang's non-CUDA
# requirements, then sglang itself with --no-deps, then the project. A stamp file keyed by
# the hash of the inputs makes a second call a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
inputs=(pyproject.toml requirements/constraints.txt requirements/sglang-cpu.txt requirements/ifeval-reference.txt scripts/setup_env.sh)
[ -d shims ] && while IFS= read -r f; do inputs+=("$f"); done < <(find shims -type f -not -path '*/__pycache__/*' | sort)
hash=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
stamp="$VENV/.opd-setup-$hash"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "setup: creating $VENV (torch CPU, SGLang CPU, Megatron-Core); takes ~4 min on a fresh machine"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -c requirements/constraints.txt -r requirements/sglang-cpu.txt
"${pip[@]}" -c requirements/constraints.txt --no-deps sglang==0.5.23
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # CPU only: SGLang's kernel package and PyPI's torchvision need the stand-ins in shims/
  # (see shims/README.md); never installed on a GPU machine.
  "${pip[@]}" --no-deps ./shims/sgl_kernel ./shims/torchvision_cpu_ops
  "${pip[@]}" --no-deps -c requirements/constraints.txt torchvision==0.28.0
  rm -rf shims/*/build shims/*/*.egg-info
fi
"${pip[@]}" -c requirements/constraints.txt -e ".[test]"
"${pip[@]}" -c requirements/constraints.txt --no-deps -r requirements/ifeval-reference.txt
rm -f "$VENV"/.opd-setup-*
touch "$stamp"
echo "setup: done"
