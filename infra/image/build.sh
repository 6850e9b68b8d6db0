#!/usr/bin/env bash
# make image: one OCI image for every workload of the chart (agent, API, lake jobs, analyzer,
# replay runner), built offline from Debian's own packages; no container registry is used.
#   1. the kprobe wheel (setup.py compiles the BPF objects into it) and its dependencies as
#      wheels (build/image/wheelhouse, kept between builds: pip only fetches what is new);
#   2. the root filesystem by mmdebstrap from Debian bookworm: python3, libbpf1, bubblewrap,
#      ca-certificates; a virtualenv /opt/kprobe with kprobe[$EXTRAS] from those wheels only
#      (default api,ray: the API hands replays to the chart's replay runner, a Ray head);
#      the built console at /opt/kprobe/console; no apt, no docs, no package lists;
#   3. infra/image/oci.py writes the tree as an OCI archive, build/image/kprobe-VERSION.oci.tar
#      (one layer; entrypoint kprobe; user kprobe 10001 for the API and jobs, the agent's pod
#      runs it as root with its capabilities): `podman load -i`, `skopeo copy oci-archive:`
#      or `ctr images import` take it to a node or a registry.
# Root is needed (mmdebstrap's root mode). Output: build/image/.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=build/image
EXTRAS=${EXTRAS:-api,ray}
SUITE=bookworm
PY=${PY:-.venv/bin/python}
VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ "$(id -u)" -eq 0 ] || { echo "image: needs root (mmdebstrap)" >&2; exit 2; }
for tool in mmdebstrap; do
  command -v $tool >/dev/null || { echo "image: $tool is missing (make setup installs it)" >&2; exit 2; }
done
[ -f console/dist/index.html ] || { echo "image: console/dist is not built (make console)" >&2; exit 2; }

mkdir -p "$OUT/wheelhouse"
# the build holds the chroot (TMPDIR), its tarball and the OCI archive at once: ~1.1 GB each
NEED_KB=$((4 * 1024 * 1024))
for dir in "$OUT" "${TMPDIR:-/tmp}"; do
  free=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  [ "$free" -ge "$NEED_KB" ] || {
    echo "image: $((free / 1024)) MiB free under $dir, the build needs 4096 MiB (it stops with a half-written image otherwise)" >&2
    exit 2; }
done
rm -rf "$OUT/wheel" "$OUT/rootfs.tar"
echo "image: wheel"
$PY -m pip wheel --quiet --no-deps -w "$OUT/wheel" .
WHEEL=$(ls "$OUT"/wheel/kprobe-"$VERSION"-*.whl)
echo "image: dependencies (wheelhouse)"
$PY -m pip wheel --quiet --find-links "$OUT/wheelhouse" -w "$OUT/wheelhouse" "$WHEEL[$EXTRAS]"
rm -f "$OUT"/wheelhouse/kprobe-*.whl

echo "image: root filesystem (mmdebstrap $SUITE)"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
mmdebstrap --variant=essential --mode=root \
  --include=python3,python3-venv,libstdc++6,libbpf1,libelf1,zlib1g,bubblewrap,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp $WHEEL $OUT/wheelhouse/*.whl \"\$1/tmp/wheels/\"" \
  --customize-hook='chroot "$1" python3 -m venv /opt/kprobe' \
  --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin /opt/kprobe/bin/pip install --quiet --no-index --no-cache-dir --find-links /tmp/wheels 'kprobe[$EXTRAS]'" \
  --customize-hook='chroot "$1" /opt/kprobe/bin/pip uninstall --quiet --yes pip' \
  --customize-hook='mkdir -p "$1/opt/kprobe/console" && cp -r console/dist/. "$1/opt/kprobe/console/"' \
  --customize-hook='echo "kprobe:x:10001:10001:kprobe:/var/lib/kprobe:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "kprobe:x:10001:" >> "$1/etc/group" && install -d -o 10001 -g 10001 "$1/var/lib/kprobe"' \
  --customize-hook='rm -rf "$1"/tmp/wheels "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  "$SUITE" "$OUT/rootfs.tar"

echo "image: OCI archive"
ARCHIVE=$OUT/kprobe-$VERSION.oci.tar
$PY infra/image/oci.py "$OUT/rootfs.tar" "$ARCHIVE" --ref "kprobe:$VERSION" \
  --entrypoint /opt/kprobe/bin/kprobe --cmd=--help \
  --env PATH=/opt/kprobe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env KPROBE_API_CONSOLE_DIR=/opt/kprobe/console --workdir /var/lib/kprobe \
  --label org.opencontainers.image.title=kprobe --label "org.opencontainers.image.version=$VERSION" \
  > "$OUT/digest"
rm -f "$OUT/rootfs.tar"
echo "image: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)), manifest $(cat "$OUT/digest")"
