#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist package when root, else the package
# unpacked into data/fashion-mnist. Quick when the data is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
system=/usr/share/datasets/fashion-mnist
local_dir=data/fashion-mnist
have() { [ -f "$1/train-images-idx3-ubyte.gz" ] && [ -f "$1/t10k-labels-idx1-ubyte.gz" ]; }
if have "$system" || have "$local_dir"; then exit 0; fi
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends dataset-fashion-mnist >/dev/null; }
  have "$system" && { echo "Fashion-MNIST installed in $system"; exit 0; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null)
dpkg -x "$tmp"/dataset-fashion-mnist*.deb "$tmp/root"
mkdir -p "$local_dir"
cp "$tmp/root$system"/*.gz "$local_dir/"
echo "Fashion-MNIST unpacked into $local_dir"
