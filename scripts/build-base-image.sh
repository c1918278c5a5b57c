#!/bin/sh
# Build a Debian + python3 base image without any container registry:
# debootstrap from a Debian mirror, then `docker import`.
#
# Useful where Docker Hub is unreachable (air gap, CI without registry access):
#   scripts/build-base-image.sh                        # -> kiqstack/python-base:bookworm
#   docker build --build-arg BASE_IMAGE=kiqstack/python-base:bookworm -t kiqstack:dev .
#
# Usage: scripts/build-base-image.sh [--force] [IMAGE]
#   IMAGE     tag to create (default: $BASE_IMAGE or kiqstack/python-base:bookworm)
#   --force   rebuild even if IMAGE already exists (default: skip)
# Environment:
#   MIRROR    Debian mirror URL (default: the one apt on this host uses, else debootstrap's default)
#   SUITE     Debian release (default: bookworm)
#   DOCKER    docker client to use (default: docker)
# Needs root, debootstrap and a Docker engine. The result has Python 3 at /usr/bin/python3
# (Python 3.11 on bookworm), python3-venv, pip and the CA certificate store.
set -eu

force=0
image=${BASE_IMAGE:-kiqstack/python-base:bookworm}
for arg in "$@"; do
    case $arg in
        -f | --force) force=1 ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-base-image: unknown option $arg" >&2; exit 2 ;;
        *) image=$arg ;;
    esac
done
suite=${SUITE:-bookworm}
docker=${DOCKER:-docker}

if [ "$force" -eq 0 ] && "$docker" image inspect "$image" >/dev/null 2>&1; then
    echo "build-base-image: $image already exists (use --force to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
    echo "build-base-image: debootstrap not found (apt-get install debootstrap)" >&2
    exit 1
}
"$docker" info >/dev/null 2>&1 || {
    echo "build-base-image: no Docker engine reachable with '$docker'" >&2
    exit 1
}
if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image: debootstrap needs root" >&2
    exit 1
fi

# The mirror apt already uses on this host: deb822 sources first, then the one-line format.
# The security archive is skipped: debootstrap needs the main archive.
detect_mirror() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
    done | head -n 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {
                 if ($i !~ /security/) print $i; break } }' "$f"
    done | head -n 1
}
mirror=${MIRROR:-$(detect_mirror | head -n 1)}

root=$(mktemp -d "${TMPDIR:-/tmp}/kiqstack-base.XXXXXX")
cleanup() {
    # debootstrap may leave /proc or /sys mounted when it fails half-way.
    for m in proc sys dev/pts; do umount "$root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT INT TERM

echo "build-base-image: debootstrap $suite from ${mirror:-debootstrap's default mirror} -> $image"
# shellcheck disable=SC2086  # $mirror is empty or a single URL
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$root" $mirror

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" --numeric-owner -c . | "$docker" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/usr/bin/python3"]' \
    - "$image"
echo "build-base-image: built $image"
