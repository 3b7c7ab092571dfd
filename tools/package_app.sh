#!/usr/bin/env bash
# intent_ref: platform.estate
# The function app's package: the tree without what .funcignore names, at any depth (a name there is a file or a
# folder, as the Functions tools read it). `zip -x@.funcignore` matched whole paths only, so folders such as
# node_modules, tests and devhost went into the package.
#   tools/package_app.sh OUT.zip [ROOT]
set -euo pipefail
out="$(realpath -m "$1")"
cd "${2:-.}"
patterns=("dist/*" ".git/*" ".venv*")
while IFS= read -r name || [ -n "$name" ]; do
    name="${name%%#*}"
    name="$(echo "$name" | xargs)"  # trims the spaces around it
    [ -z "$name" ] && continue
    patterns+=("$name" "$name/*" "*/$name" "*/$name/*")
done < .funcignore
mkdir -p "$(dirname "$out")"
rm -f "$out"
zip -qr "$out" . -x "${patterns[@]}"
