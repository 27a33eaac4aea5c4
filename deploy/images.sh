#!/usr/bin/env bash
# Builds localhost/ember-agent:TAG and localhost/ember-collector:TAG (TAG: $EMBER_IMAGE_TAG, or
# dev) with podman from deploy/Containerfile, and localhost/ember-demo-app:TAG for
# deploy/kubernetes/examples/sidecar-demo.yaml.
#
# No registry is needed: the Debian 12 bases are made here with debootstrap from the Debian
# archive apt already uses (the builder gets this machine's Rust toolchain), once, and kept as
# localhost/ember-base-* images. With a registry at hand, build the Containerfile directly, with
# its public default bases. Needs root, podman and debootstrap.
#
# With EMBER_PREBUILT=DIR (CI passes target/release), the images take DIR's ember-agent and
# ember-collector, built for Debian 12 already, in place of the Containerfile's build stage (a
# build context named `build` stands in for it), so one release build serves every package.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${EMBER_IMAGE_TAG:-dev}
work=target/images
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$work"

# A Debian 12 minbase root imported as image $1, with packages $2 and then $3 run in it.
debian_base() {
    local image=$1 include=$2 finish=$3 root="$work/${1##*/}"
    root=${root%%:*}
    if podman image exists "$image"; then return; fi
    rm -rf "$root"
    debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" "$mirror" >&2
    eval "$finish"
    # What an image needs of a root: no docs, caches or package lists.
    rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$image" >/dev/null
    rm -rf "$root"
}

runtime_image=localhost/ember-base-runtime:bookworm
debian_base "$runtime_image" "" ""

build_args=(--build-arg RUNTIME="$runtime_image")
if [[ -n "${EMBER_PREBUILT:-}" ]]; then
    prebuilt="$work/prebuilt"
    rm -rf "$prebuilt"
    for binary in ember-agent ember-collector; do
        install -D -m 0755 "$EMBER_PREBUILT/$binary" "$prebuilt/out/$binary"
    done
    build_args+=(--build-context build="$prebuilt")
else
    # The builder: gcc and libc for crates that build C, this machine's Rust toolchain (rustc,
    # cargo and the standard library; no docs), which the Containerfile's cargo uses, and this
    # machine's CA bundle, so cargo reaches crates.io through the same TLS-inspecting proxy.
    sysroot=$(rustc --print sysroot)
    rust_version=$(rustc --version | awk '{ print $2 }')
    builder_image=localhost/ember-base-rust:$rust_version
    copy_toolchain='mkdir -p "$root/usr/local/rust" && tar -C "$sysroot" --exclude=./share -c . | tar -C "$root/usr/local/rust" -x
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"'
    debian_base "$builder_image" "gcc,libc6-dev,ca-certificates" "$copy_toolchain"
    build_args+=(--build-arg BUILDER="$builder_image")
fi

for target in agent collector; do
    podman build --quiet -f deploy/Containerfile --target "$target" "${build_args[@]}" \
        -t "localhost/ember-$target:$tag" . >/dev/null
    echo "built localhost/ember-$target:$tag${EMBER_PREBUILT:+ from $EMBER_PREBUILT}" >&2
done

# The demo app on Debian's own python3.13: the root tools/debian-sid.sh makes for the tests.
bash tools/debian-sid.sh target/debian-sid
sid_image=localhost/ember-base-debian-sid:python
if ! podman image exists "$sid_image"; then
    tar -C target/debian-sid --exclude=./proc --exclude=./sys --exclude=./dev --exclude='./tmp/*' --exclude=./opt/ember-tests -c . \
        | podman import - "$sid_image" >/dev/null
fi
podman build --quiet -f deploy/demo.Containerfile --build-arg BASE="$sid_image" -t "localhost/ember-demo-app:$tag" . >/dev/null
echo "built localhost/ember-demo-app:$tag" >&2
