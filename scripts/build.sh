# Sourced by scripts/check and scripts/demo: configure and build in the
# source tree (warnings are errors); extra configure flags in
# $CONFIGURE_FLAGS.
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
    autoreconf -fi 
fi
if [ ! -f Makefile ] || [ configure -nt Makefile ] || [ -n "${CONFIGURE_FLAGS:-}" ]; then
    # shellcheck disable=SC2086
    ./configure --enable-werror ${CONFIGURE_FLAGS:-} 
fi
make -j"$(nproc)" 
