#!/bin/sh
# Builds the obhost .deb with one command: target/debian/obhost_<version>_<arch>.deb
#
#   sh scripts/build-deb.sh        # then: dpkg -i target/debian/obhost_*.deb
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg. Steps: a release
# build of the product binaries only (no test-kinds, no fake-observer), the man
# pages and shell completions rendered by that obhostctl into target/obhost-docs/,
# then `cargo deb --no-build --strip` (the release profile keeps line tables for
# backtraces; the package ships stripped binaries). The package's contents are in
# Cargo.toml, [package.metadata.deb].
#
# SOURCE_DATE_EPOCH (reproducible builds) defaults to the commit's time: the
# build date in `obhostd -V` and the man pages is the commit's date.
set -eu
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "build-deb.sh: cargo-deb is not installed; run \`cargo install cargo-deb --locked\`" >&2
  exit 2
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

cargo build --release --locked --bin obhostd --bin obhostctl

# cargo-deb maps the assets' target/release/ to CARGO_TARGET_DIR itself.
target_dir=${CARGO_TARGET_DIR:-target}
docs=target/obhost-docs
rm -rf "$docs"
mkdir -p "$docs/man" "$docs/completions"
ctl="$target_dir/release/obhostctl"
"$ctl" man --out "$docs/man" >/dev/null
# Debian policy: man pages gzip-compressed; -n keeps names and times out (reproducible).
gzip -9n "$docs"/man/*
"$ctl" completions bash >"$docs/completions/obhostctl.bash"
"$ctl" completions zsh >"$docs/completions/_obhostctl"
"$ctl" completions fish >"$docs/completions/obhostctl.fish"

cargo deb --no-build --strip --locked "$@"
