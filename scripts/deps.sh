# Sourced by scripts/check and scripts/demo: install, with apt-get,
# whichever of the Debian 12 packages the project needs are missing.

packages=(
    # build
    gcc make autoconf automake libtool pkg-config perl
    nbdkit nbdkit-plugin-dev libnbd-dev libglib2.0-dev
    # tests and demo
    libnbd-bin python3-libnbd util-linux bsdutils procps bc
)
# scripts/check --ci also runs cppcheck (fuzz/run installs clang itself)
# and tests/test-libvirt-migrate.sh, a real live migration between two
# libvirtd's (about 1 minute to install, 40-80 s per pass; without them,
# and in plain scripts/check, that test is skipped).
if [ "${1:-}" = --ci ]; then
    packages+=(cppcheck libvirt-daemon-system qemu-system-x86)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: these packages are missing and installing them needs root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
