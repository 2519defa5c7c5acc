#!/usr/bin/env bash
# Create benchmarks/.torch-venv with PyTorch (CPU) for the reference benchmark only.
# torch is never a dependency of fkd-jax and is not in uv.lock. pip (not uv) is used on
# purpose: on these machines pip picks the CPU wheel already on disk, whereas uv would resolve
# and download a multi-GB CUDA build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.torch-venv"
python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet "torch==2.13.0" numpy absl-py
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
