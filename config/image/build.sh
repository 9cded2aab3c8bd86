#!/bin/sh
# Builds the release binaries of the pixel-playground image and copies them into the
# directory given as the only argument. One build command for both image builds: the
# Dockerfile's build stage (`RUN config/image/build.sh /out`) and `cargo xtask image`.
#
# Runs from the repository root whatever the caller's directory; honours $CARGO (set when
# cargo runs xtask) and $CARGO_TARGET_DIR.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 <output-directory>" >&2
    exit 2
fi
out=$1
case $out in
    /*) ;;
    *) out=$(pwd)/$out ;;
esac

cd "$(dirname "$0")/../.."
binaries="pixel-operator canvas-api gateway frontend backup"

# --package selects each crate with all its binaries (a --bin here would apply to every
# selected package, and only that one binary would be built).
set --
for binary in $binaries; do
    set -- "$@" --package "$binary"
done
"${CARGO:-cargo}" build --release --locked "$@"

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"
for binary in $binaries; do
    cp "$target/release/$binary" "$out/$binary"
done
