#!/usr/bin/env bash
# Fetch Intel MKL's runtime library from PyPI (the `mkl` wheel, sha256-checked) for `--mkl-vml`:
# medprm then takes the rotary cos/sin from MKL's vector math, as PyTorch does on x86.
# Keeps only what vmsCos/vmsSin need with the sequential threading layer (~180 MB):
#   $MEDPRM_HOME/mkl-<version>/libmkl_rt.so.2 and the libraries it opens.
# Idempotent. Prints the path of libmkl_rt.so.2 on the last line of stdout.
set -euo pipefail

version=2024.2.0
digest=8b4b731a5652258d84e10dd9c28d68d391e5a81a97a482348f602649837611da
home="${MEDPRM_HOME:-$HOME/.cache/medprm}"
dest="$home/mkl-$version"
py="${PYTHON:-python3}"
keep="libmkl_rt.so.2 libmkl_core.so.2 libmkl_sequential.so.2 libmkl_intel_lp64.so.2 libmkl_vml_def.so.2 libmkl_vml_mc3.so.2 libmkl_vml_avx2.so.2 libmkl_vml_avx512.so.2 libmkl_vml_cmpt.so.2"

if [ ! -f "$dest/.ok" ]; then
  echo "medprm: fetching mkl==$version (Intel MKL, Intel Simplified Software License) from PyPI" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  printf 'mkl==%s --hash=sha256:%s\n' "$version" "$digest" > "$tmp/req.txt"
  "$py" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: -d "$tmp" -r "$tmp/req.txt" >&2
  whl=$(ls "$tmp"/mkl-*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$digest" ]; then
    echo "medprm: sha256 mismatch for mkl==$version: got $got, want $digest" >&2
    exit 1
  fi
  rm -rf "$dest" && mkdir -p "$dest"
  "$py" - "$whl" "$dest" $keep <<'PY'
import os, sys, zipfile
whl, dest, keep = sys.argv[1], sys.argv[2], set(sys.argv[3:])
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if name in keep and "/lib/" in info.filename:
            with z.open(info) as src, open(os.path.join(dest, name), "wb") as out:
                out.write(src.read())
            keep.discard(name)
if keep:
    sys.exit(f"missing from the wheel: {sorted(keep)}")
PY
  touch "$dest/.ok"
fi
echo "$dest/libmkl_rt.so.2"
