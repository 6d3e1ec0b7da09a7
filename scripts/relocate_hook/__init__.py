"""The libvirt hook of nbdkit-relocate, as a package.

libvirt runs the thin entry point hooks/qemu.d/nbdkit-relocate, which
calls events.main.  The modules are in one-way layers: each imports
only modules listed before it here (config is the bottom).

  config    hook.conf: the settings, their defaults, and why one is refused
  log       hook.log: one line per disk per event
  qemuconf  QEMU's user and group, and NBD TLS, from libvirt's qemu.conf
  domxml    the domain XML: which disks to relocate, and their rewrite
  state     a relocation's files on disk: relocation.json, pids, ports
  server    the relocation server's process: start, watch, stop
  keeper    the process that runs nbdkit for the hook and watches it
  attic     where earlier relocations go, and what they still forbid
  events    libvirt's events: migrate begin, prepare, stopped and release

Standard library only: it runs as root in libvirt's environment.
"""
