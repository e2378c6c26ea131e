# Sourced by the prepare-*.sh scripts: the Python that has the project's tools (the repo's .venv when
# present, else python3 from PATH) and the repository on PYTHONPATH so its modules run without install.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
    export PATH="$REPO_ROOT/.venv/bin:$PATH"   # fairseq-preprocess
else
    PYTHON="$(command -v python3)"
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
