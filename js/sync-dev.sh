#!/bin/sh
# Development only: copy the freshly built labextension over the one the
# editable install placed in the environment (pip copies it at install time).
set -e
here=$(cd "$(dirname "$0")" && pwd)
dest="$(python -c 'import sys; print(sys.prefix)')/share/jupyter/labextensions/cosmic-horizons-lab"
mkdir -p "$dest"
rm -rf "$dest/static"
cp -r "$here/../cosmic_horizons_lab/labextension/." "$dest/"
cp "$here/install.json" "$dest/install.json"
echo "synced to $dest"
