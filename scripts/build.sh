# Sourced by scripts/check, scripts/demo and scripts/torture: configure
# and build in the source tree (warnings are errors).  With
# RECONFIGURE=1, configure again with the CFLAGS and LDFLAGS of the
# environment and rebuild everything.
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
    autoreconf -fi
fi
if [ ! -f Makefile ] || [ configure -nt Makefile ] || [ -n "${RECONFIGURE:-}" ]; then
    ./configure --enable-werror
    make clean
fi
make -j"$(nproc)"
