#!/usr/bin/env bash
# Make the virtualenv that holds the peers latentmap is measured against, so they are timed beside
# latentmap in one process on the same weights (never imported by latentmap or its tests):
#   - dalle2-pytorch 0.2.38 + rotary-embedding-torch 0.1.5: the diffusion prior clip2latent trains with;
#   - clip2latent 1.0: its timestep-skipping sampler and, bundled in its wheel, NVIDIA's StyleGAN2/3 code.
# The venv sees the shared site-packages (torch, numpy, open_clip) so both sides run the same torch,
# and gets latentmap itself installed editable so its plugins' entry points resolve.
#
# Usage: bash bench/peers/setup.sh [VENV_DIR]   (default: bench/.peers; prints the python to use)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$here/bench/.peers}"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv --system-site-packages "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# Peers without their declared dependencies: dalle2-pytorch asks for training-only extras; the ones its
# imports need are listed below. youtokentome needs Cython at build time and pip's isolated build lacks it.
"${pip[@]}" --no-deps dalle2-pytorch==0.2.38 rotary-embedding-torch==0.1.5 clip2latent==1.0
"${pip[@]}" 'setuptools<81' Cython kornia 'x-clip>=0.4.4' 'coca-pytorch>=0.0.5' resize-right einops-exts \
  embedding-reader clip-anytorch vector-quantize-pytorch webdataset omegaconf
"${pip[@]}" --no-build-isolation youtokentome
"${pip[@]}" --no-deps -e "$here"
"$venv/bin/python" - <<'PY'
import dalle2_pytorch, clip2latent, clip2latent.models, latentmap
from dalle2_pytorch.train import DiffusionPriorTrainer  # noqa: F401
import os, sys
sys.path.insert(0, os.path.join(list(clip2latent.__path__)[0], "stylegan3"))
import legacy, dnnlib  # noqa: F401  (NVIDIA's StyleGAN code, bundled in the clip2latent wheel)
PY
echo "$venv/bin/python"
