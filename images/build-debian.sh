#!/usr/bin/env bash
# Builds the images without Docker and without a container registry: the Python base image from Debian's
# own packages (mmdebstrap), the images from their Dockerfiles with buildah, then `metaspec --help` and
# `metaspec <command> --help` run inside each (the second imports the component, so its dependencies are
# there). Needs root, mmdebstrap and buildah (Debian packages) and a Debian mirror and PyPI.
#
#   images/build-debian.sh                    # operator, trainer, server
#   images/build-debian.sh operator           # some of them
#
# The base is Debian bookworm's python3.11 in place of python:3.11-slim-bookworm (the same Debian release,
# Python 3.11), built once and kept: `buildah rmi localhost/metaspec-python:3.11-bookworm` makes the next
# run build it again with Debian's current packages. PIP_FIND_LINKS (a folder of local wheels) and PIP_CONSTRAINT (a constraints file), when
# set, are mounted into every build step as pip's settings, e.g. a CPU torch instead of PyPI's Linux torch,
# the CUDA build (several GB): PIP_FIND_LINKS=/wheels PIP_CONSTRAINT=<(echo torch==2.13.0+cpu). Nothing of
# them stays in the images. The generator image is built on vLLM's own CUDA image, which only a registry
# has: it is not built here (the CPU build of vLLM is tested from `make vllm-venv` instead).
set -euo pipefail

cd "$(dirname "$0")/.."
# chroot isolation: build steps need no OCI runtime or cgroups (crun refuses hybrid cgroup hierarchies,
# as inside many CI machines and VMs).
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
BASE=localhost/metaspec-python:3.11-bookworm
TAG=${TAG:-localhost/metaspec}
# The images' version and revision labels, as `make images` sets them.
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
REVISION=${REVISION:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
# Debian's mirrors: the release with its point updates and its security updates, as in Debian's own images.
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# With TRIVY=<trivy binary> (`make tools` puts one in .tools/): a CycloneDX SBOM of each image, its Debian
# and Python packages with versions and licences, in SBOM_DIR. It needs no vulnerability database (a
# vulnerability scan needs trivy's, which is downloaded from a container registry).
SBOM_DIR=${SBOM_DIR:-out/sbom}
if [ $# -gt 0 ]; then IMAGES=("$@"); else IMAGES=(operator trainer server); fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    # As Debian's own slim images: merged /usr set up by mmdebstrap's hook (the usrmerge package would
    # bring perl, 46 MB), no manual pages, translations or documentation other than the licences
    # (dpkg's path filters stay in the image, so packages installed later are trimmed the same way).
    # mmdebstrap leaves no package lists or apt cache behind.
    mmdebstrap --variant=minbase --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$WORK/rootfs.tar" \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main"
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$WORK/rootfs.tar" /
    buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
    buildah commit --rm "$ctr" "$BASE"
fi

# pip's configuration for the build steps only: the host's CA bundle (PyPI may sit behind a proxy that
# re-signs TLS), the local wheels and constraints.
echo -e "[global]\ncert = /run/host/ca.crt" >"$WORK/pip.conf"
mounts=(--volume "$WORK/pip.conf:/etc/pip.conf:ro" --volume /etc/ssl/certs/ca-certificates.crt:/run/host/ca.crt:ro)
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    echo "find-links = /run/host/wheels" >>"$WORK/pip.conf"
    mounts+=(--volume "$PIP_FIND_LINKS:/run/host/wheels:ro")
fi
if [ -n "${PIP_CONSTRAINT:-}" ]; then
    cp "$PIP_CONSTRAINT" "$WORK/constraints.txt"
    echo "constraint = /run/host/constraints.txt" >>"$WORK/pip.conf"
    mounts+=(--volume "$WORK/constraints.txt:/run/host/constraints.txt:ro")
fi

for image in "${IMAGES[@]}"; do
    echo "== building $TAG/$image"
    buildah build --network host --layers "${mounts[@]}" --build-arg "PYTHON_IMAGE=$BASE" \
        --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
        -f "images/$image/Dockerfile" -t "$TAG/$image:check" .
    # buildah leaves the mount points of the --volume options above in the image (an empty /etc/pip.conf,
    # /run/host): removed, in a layer of their own.
    ctr=$(buildah from "$TAG/$image:check")
    mnt=$(buildah mount "$ctr")
    rm -rf "$mnt/run/host"
    [ -s "$mnt/etc/pip.conf" ] || rm -f "$mnt/etc/pip.conf"
    buildah umount "$ctr" >/dev/null
    buildah commit --rm --quiet "$ctr" "$TAG/$image:check" >/dev/null
    # The image's own default command names its component (`CMD ["train", ...]`).
    command=$(buildah inspect --format '{{index .OCIv1.Config.Cmd 0}}' "$TAG/$image:check")
    ctr=$(buildah from "$TAG/$image:check")
    uid=$(buildah run "$ctr" -- id -u)
    [ "$uid" != 0 ] || { echo "$TAG/$image runs as root" >&2; exit 1; }
    buildah run "$ctr" -- metaspec --help
    buildah run "$ctr" -- metaspec "$command" --help
    buildah rm "$ctr" >/dev/null
    echo "== $TAG/$image:check runs \`metaspec $command\` as uid $uid"
    if [ -n "${TRIVY:-}" ]; then
        mkdir -p "$SBOM_DIR"
        buildah push --quiet "$TAG/$image:check" "docker-archive:$WORK/$image.tar:$TAG/$image:check"
        "$TRIVY" image --quiet --cache-dir "$WORK/trivy" --input "$WORK/$image.tar" \
            --format cyclonedx --output "$SBOM_DIR/$image.cdx.json"
        rm "$WORK/$image.tar"
        echo "== $SBOM_DIR/$image.cdx.json"
    fi
done
buildah images --filter "reference=$TAG/*:check" --filter "reference=$BASE"
