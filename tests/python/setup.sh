#!/usr/bin/env bash
# Test-only: sets up the Python reference stack used by LLMs-train's tests
# (HF transformers + PEFT on Debian's CPU torch; sacrebleu, rouge-score and scikit-learn for the
# evaluation metrics). The product never needs Python.
#
#   bash tests/python/setup.sh            # idempotent; last stdout line = venv python
#   PY="$(bash tests/python/setup.sh | tail -n1)"
#
# Env: LLMT_PY_VENV (default $REPO/.venv-test); LLMT_PY_WHEELHOUSE (default
#      ${PIP_CACHE_DIR:-~/.cache/pip}/llmt-wheels: the pinned wheels, reused offline).
# Needs root (or sudo) only when the Debian packages are missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${LLMT_PY_VENV:-$REPO/.venv-test}"
REQ="$HERE/requirements.txt"
SYS_PY=/usr/bin/python3
DEB_PKGS=(python3-torch python3-numpy python3-venv)
STAMP_NAME=.llmt-requirements.sha256

log() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

[ -f "$REQ" ] || die "missing $REQ"

# ---- 1. Debian packages (CPU torch 1.13 + numpy + venv) ----------------------------
missing=()
for p in "${DEB_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} (Debian 12) by hand"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install ${missing[*]}"
    SUDO="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  need_update=0
  for p in "${missing[@]}"; do
    cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
  done
  if ((need_update)); then
    log "apt-get update"
    $SUDO apt-get update -qq >&2
  fi
  log "apt-get install ${missing[*]}"
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    # stale package lists (404s): refresh once and retry
    log "install failed; apt-get update and retry"
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

# ---- 2. venv (recreated when requirements.txt or the system torch changes) ------------
want="$( { sha256sum "$REQ" | cut -d' ' -f1;
           "$SYS_PY" -c 'import sys, importlib.metadata as m; print(sys.version.split()[0], m.version("torch"), m.version("numpy"))'; } \
         | sha256sum | cut -d' ' -f1)"
have=""
[ -f "$VENV/$STAMP_NAME" ] && have="$(cat "$VENV/$STAMP_NAME")"
if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('peft')" >/dev/null 2>&1; then
  "$SYS_PY" -c "import torch, numpy" 2>/dev/null \
    || die "$SYS_PY cannot import Debian's torch/numpy (python3-torch installed?)"
  if [ -e "$VENV" ]; then
    # only ever delete something that is a venv (or empty)
    if [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV" 2>/dev/null)" ]; then
      log "requirements changed or venv broken: recreating $VENV"
      rm -rf "$VENV"
    else
      die "$VENV exists and is not a venv; remove it or set LLMT_PY_VENV"
    fi
  fi
  log "creating venv $VENV (system site-packages for Debian's torch)"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
  printf '*\n' > "$VENV/.gitignore"   # keep the venv out of git without touching .gitignore
  # Wheelhouse: pip's own HTTP cache is not always usable (here it silently writes nothing),
  # so the exact wheels are kept in a folder and installed with --no-index when all present.
  WH="${LLMT_PY_WHEELHOUSE:-${PIP_CACHE_DIR:-$HOME/.cache/pip}/llmt-wheels}"
  # --no-deps: requirements.txt is the full closure. Debian's torch reports 1.13.0a0, which
  # fails peft's "torch>=1.13.0": with dependency resolution pip would pull the multi-GB CUDA
  # torch wheel from PyPI. --ignore-installed: a pin that equals a Debian package's version (six,
  # colorama) is still installed into the venv, so the closure check below finds it there.
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  export PIP_NO_INPUT=1
  if [ -d "$WH" ] && "${PIP[@]}" install --no-deps --ignore-installed --no-index --find-links "$WH" -r "$REQ" >/dev/null 2>&1; then
    log "installed requirements.txt from the wheelhouse $WH"
  elif mkdir -p "$WH" 2>/dev/null && [ -w "$WH" ]; then
    # binary wheels only, except rouge-score (PyPI has only its sdist): pip wheel builds it into the
    # wheelhouse once, so later installs stay offline
    log "pip wheel -r requirements.txt -> $WH"
    "${PIP[@]}" wheel --no-deps --only-binary=:all: --no-binary=rouge-score -w "$WH" -r "$REQ" >&2
    "${PIP[@]}" install --no-deps --ignore-installed --no-index --find-links "$WH" -r "$REQ" >&2
  else
    log "wheelhouse $WH not writable: plain pip install"
    "${PIP[@]}" install --no-deps --ignore-installed -r "$REQ" >&2
  fi
  # The pinned set must be a closed, consistent set on its own: every requirement of every
  # pinned package is met by a package inside the venv, except torch/numpy (Debian's).
  "$VENV/bin/python" - "$REQ" <<'EOF' >&2 || die "requirements.txt is not a consistent closure (see above)"
import sys, sysconfig, importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
from packaging.version import Version
site = sysconfig.get_paths()["purelib"]
local = {cn(d.metadata["Name"]): d for d in md.distributions(path=[site])}
pins = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, ver = line.split("==")
        pins[cn(name)] = ver
bad = []
for name, ver in pins.items():
    d = local.get(name)
    if d is None or d.version != ver:
        bad.append(f"{name}=={ver} not installed in the venv (found {d and d.version})")
        continue
    for r in map(Requirement, d.requires or []):
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        dep = cn(r.name)
        if dep in ("torch", "numpy"):
            v = Version(Version(md.version(dep)).base_version)  # Debian: 1.13.0a0 -> 1.13.0
        elif dep in local:
            v = Version(local[dep].version)
        else:
            bad.append(f"{name} needs {r} which is not pinned"); continue
        if not r.specifier.contains(v, prereleases=True):
            bad.append(f"{name} needs {r}, have {dep} {v}")
for b in bad:
    print("setup.sh:", b)
sys.exit(1 if bad else 0)
EOF
  "$VENV/bin/python" - <<'EOF' >&2 || die "smoke import failed"
import torch, numpy, transformers, peft, safetensors, accelerate
import sacrebleu, sklearn.metrics, rouge_score.rouge_scorer  # metrics references (tests/python/metrics_reference.py)
assert torch.__version__.startswith("1.13"), torch.__version__
print("setup.sh: torch", torch.__version__, "numpy", numpy.__version__,
      "transformers", transformers.__version__, "peft", peft.__version__,
      "safetensors", safetensors.__version__, "accelerate", accelerate.__version__)
EOF
  echo "$want" > "$VENV/$STAMP_NAME"
else
  log "venv up to date: $VENV"
fi

echo "$VENV/bin/python"
