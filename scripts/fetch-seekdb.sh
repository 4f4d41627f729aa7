#!/bin/sh
# Fetches the real OceanBase kernel the tests run as an observer: seekdb 1.4 from
# PyPI's pylibseekdb wheel (pinned, checksummed), into target/seekdb/ (or $1).
# Idempotent: does nothing when the binary is already there.
set -eu
dest=${1:-$(dirname "$0")/../target/seekdb}
wheel=pylibseekdb-1.4.0.post1-cp312-abi3-manylinux_2_28_x86_64.whl
sha=58f2544cf7969a9b6cdf4ea1136e0d412443a2e839df656feec1b2712741ef85
mkdir -p "$dest"
cd "$dest"
if [ -x pylibseekdb/seekdb ] && [ -f pylibseekdb/libaio.so.1 ]; then
    exit 0
fi
# Pinning the version and platform gives the same wheel whatever Python runs pip.
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_28_x86_64 \
    'pylibseekdb==1.4.0.post1' -d .
echo "$sha  $wheel" | sha256sum -c - >/dev/null
python3 - "$wheel" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("pylibseekdb/seekdb", "pylibseekdb/libaio.so.1"):
        z.extract(name, ".")
os.chmod("pylibseekdb/seekdb", 0o755)
PY
rm -f "$wheel"
TELEMETRY_ENABLED=false ./pylibseekdb/seekdb --version >/dev/null 2>&1 || {
    echo "fetch-seekdb: the downloaded seekdb does not run on this machine" >&2
    exit 1
}
echo "seekdb ready: $(pwd)/pylibseekdb/seekdb"
