# Sourced by scripts/check, scripts/demo, scripts/torture and bench/run:
# install, with apt-get, whichever of the Debian 12 packages the project
# needs are missing.
#
#   source scripts/deps.sh          build, the demo and most tests
#   source scripts/deps.sh tests    also libvirt and QEMU, for
#                                   tests/test-libvirt-migrate.sh
#   source scripts/deps.sh ci       also cppcheck (fuzz/run installs
#                                   clang itself)
#
# scripts/check passes "tests" (or "ci" for --ci); scripts/demo,
# scripts/torture and bench/run pass nothing: they do not need libvirt.

packages=(
    # build
    gcc make autoconf automake libtool pkg-config perl
    nbdkit nbdkit-plugin-dev libnbd-dev libglib2.0-dev
    # tests and demo
    libnbd-bin python3-libnbd util-linux bsdutils procps bc gnutls-bin iptables iproute2
)
case "${1:-}" in
    tests|ci)
        # tests/test-libvirt-migrate.sh: a real live migration between
        # two libvirtd's (about 1 minute to install, 40-80 s per pass;
        # without them that test is skipped).
        packages+=(libvirt-daemon-system qemu-system-x86) ;;
esac
if [ "${1:-}" = ci ]; then
    packages+=(cppcheck)
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
