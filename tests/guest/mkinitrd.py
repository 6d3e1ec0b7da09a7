"""mkinitrd.py DIR OUT: DIR as a gzipped newc cpio archive, an initramfs
(standard library only: no cpio(1) needed)."""
import gzip, os, stat, sys

def entries(top):
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for n in sorted(dirs) + sorted(files):
            p = os.path.join(root, n)
            yield os.path.relpath(p, top), p

def header(name, mode, size, ino):
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)

def pad(n):
    return b"\0" * ((4 - n % 4) % 4)

with gzip.open(sys.argv[2], "wb", compresslevel=1) as out:
    ino = 1
    for rel, path in entries(sys.argv[1]):
        st = os.lstat(path)
        data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else b""
        h = header(rel.encode(), st.st_mode, len(data), ino) + rel.encode() + b"\0"
        out.write(h + pad(len(h)) + data + pad(len(data)))
        ino += 1
    h = header(b"TRAILER!!!", 0, 0, 0) + b"TRAILER!!!\0"
    out.write(h + pad(len(h)))
