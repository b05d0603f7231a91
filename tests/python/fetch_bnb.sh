#!/usr/bin/env bash
# TEST-ONLY: fetches bitsandbytes' native CPU library (libbitsandbytes_cpu.so from the pinned PyPI wheel,
# sha256-checked) into ${XDG_CACHE_HOME:-~/.cache}/llmt-bnb-0.50.2 for tests/python/bnb_reference.py. The Python
# package itself is not installed (it needs torch >= 2.4; the test venv has Debian's 1.13). Idempotent; prints
# the library's path. Exit 1 when it cannot be fetched (the caller then runs the numpy ports only).
set -euo pipefail
VER=0.50.2
SHA=55348a9a4a21bfd99cf8c7b32fe67b4030ae5c2a05738e03c1747f65fa6ec283
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/llmt-bnb-$VER"
LIB="$DIR/libbitsandbytes_cpu.so"
if [ -f "$LIB" ]; then echo "$LIB"; exit 0; fi
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${LLMT_TEST_PYTHON:-$HERE/../../.venv-test/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p "$DIR/wheel"
printf 'bitsandbytes==%s --hash=sha256:%s\n' "$VER" "$SHA" > "$DIR/req.txt"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 --python-version 3.11 \
  --require-hashes -r "$DIR/req.txt" -d "$DIR/wheel" >&2
"$PY" - "$DIR" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
whl = glob.glob(d + "/wheel/bitsandbytes-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("bitsandbytes/libbitsandbytes_cpu.so")
open(d + "/libbitsandbytes_cpu.so.tmp", "wb").write(data)
PY
mv "$DIR/libbitsandbytes_cpu.so.tmp" "$LIB"
rm -rf "$DIR/wheel"
echo "$LIB"
