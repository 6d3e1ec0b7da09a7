"""The run's settings and temp dir (Bench), and the nbdkit servers the scenarios start: source, relocate."""

import os
import re
import shlex
import shutil
import subprocess
import tempfile

from .common import HERE, GiB, KiB, MiB, TOP
from .images import make_dense
from .procs import Procs, ctl_status

PROFILES = {
    "full": dict(dense=2 * GiB, sparse=16 * GiB, sparse_data=1 * GiB,
                 seq=1 * GiB, region=256 * MiB, fio_runtime=10,
                 scan_default_cap=30, fleet_each=512 * MiB,
                 fleet_dense=2 * GiB, reps=3),
    "quick": dict(dense=256 * MiB, sparse=2 * GiB, sparse_data=128 * MiB,
                  seq=128 * MiB, region=32 * MiB, fio_runtime=3,
                  scan_default_cap=8, fleet_each=64 * MiB,
                  fleet_dense=128 * MiB, reps=1),
}

# The network models (see bench/README.md).  "wan" and "lan" are the
# source itself (with nbdkit's delay and rate filters for wan); the
# others put bench/lib/relay.py, a TCP relay on 127.0.0.1, in front of
# a plain source: a round trip, a cap on every TCP connection (a
# quarter of the link) with one bandwidth-delay product in flight, and
# a cap on the link.
RELAYS = {
    "wan-streams": dict(rtt="20ms", conn_rate="32M", link_rate="128M"),
    "wan-100ms": dict(rtt="100ms", conn_rate="32M", link_rate="128M"),
}
NETS = ["wan-streams", "wan-100ms", "wan", "lan"]   # lan last: "after"


def parse_stats(path):
    """Bytes and requests read, from nbdkit-stats-filter's statsfile."""
    units = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": 1 << 40}
    out = {"read_bytes": 0, "read_ops": 0}
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"read: (\d+) ops, [\d.]+ s, ([\d.]+) (\w+)", line)
                if m:
                    out = {"read_ops": int(m.group(1)),
                           "read_bytes": int(float(m.group(2))
                                             * units[m.group(3)])}
    except OSError:
        out = {"read_bytes": None, "read_ops": None}
    return out


class Bench:
    """What every scenario works with: the profile, the temp dir, the
    processes started, snapshots of the filter and relocatectl."""

    def __init__(self, args):
        self.args = args
        self.prof = dict(PROFILES["quick" if args.quick else "full"])
        self.reps = args.reps or self.prof["reps"]
        self.tmp = tempfile.mkdtemp(prefix="relocate-bench.",
                                    dir=args.tmpdir)
        self.procs = Procs(self.tmp)
        self.relocate_args = shlex.split(os.environ.get("RELOCATE_ARGS", ""))
        self.wan_args = shlex.split(os.environ.get("WAN_ARGS",
                                                   "rdelay=20ms rate=1G"))
        self.rtt = self._rdelay_seconds()
        # A snapshot of the filter and relocatectl: another build may
        # replace them during the run.
        self.filter = os.path.join(self.tmp, "nbdkit-relocate-filter.so")
        shutil.copy(os.environ["FILTER"], self.filter)
        self.ctl = os.path.join(self.tmp, "relocatectl")
        shutil.copy(os.environ["RELOCATECTL"], self.ctl)
        self.qsd = shutil.which("qemu-storage-daemon")
        # what is measured, as of the start
        self.git = subprocess.run(["git", "describe", "--always", "--dirty"],
                                  capture_output=True, text=True,
                                  cwd=TOP).stdout.strip() or None
        self.dense_img = None
        self.nets = args.nets.split(",") if args.nets else list(NETS)
        for n in self.nets + [args.vmview_net]:
            if n not in NETS:
                raise SystemExit("unknown network model %s (of %s)"
                                 % (n, ",".join(NETS)))
        # Does the filter open several connections to the source?
        h = subprocess.run(["nbdkit", "--filter=" + self.filter, "null",
                            "--help"], capture_output=True, text=True)
        self.multiconn = "relocate-connections" in h.stdout + h.stderr
        self.src_port = None
        self.relay_conns = None
        self.dense_local_net = None
        self.cpus = None        # {"source": cpus, "dest": cpus}: see pin()
        self.pki = None         # certificates for the TLS runs: need_pki()

    def pin(self, side, argv):
        """argv under taskset on the CPUs of SIDE ("source": the source
        and the WAN model, "dest": relocate and its clients) while
        self.cpus is set, else argv."""
        if not self.cpus:
            return list(argv)
        return ["taskset", "-c", self.cpus[side]] + list(argv)

    def _rdelay_seconds(self):
        for a in self.wan_args:
            m = re.match(r"(?:r?delay)=([\d.]+)(ms|us|s)?$", a)
            if m:
                scale = {"ms": 1e-3, "us": 1e-6, "s": 1, None: 1}[m.group(2)]
                return float(m.group(1)) * scale
        return None

    def sock(self, name):
        return os.path.join(self.tmp, name + ".sock")

    def uri(self, name):
        return "nbd+unix:///?socket=" + self.sock(name)

    def need_dense(self):
        """The dense image, made on first use (scenario 1 or any later
        one that runs without it)."""
        if not self.dense_img:
            self.dense_img = os.path.join(self.tmp, "dense.img")
            make_dense(self.dense_img, self.prof["dense"])
        return self.dense_img

    def need_pki(self):
        """A directory of certificates (a CA, a server's for 127.0.0.1,
        a client's) as nbdkit and libnbd read them, made on first use
        with certtool."""
        if self.pki:
            return self.pki
        d = os.path.join(self.tmp, "pki")
        os.mkdir(d, 0o700)

        def certtool(*args, template=None):
            if template is not None:
                with open(os.path.join(d, "t.tmpl"), "w") as f:
                    f.write(template)
                args += ("--template", os.path.join(d, "t.tmpl"))
            subprocess.run(["certtool"] + list(args), check=True,
                           capture_output=True)
        certtool("--generate-privkey", "--key-type=ecdsa",
                 "--outfile", os.path.join(d, "ca-key.pem"))
        certtool("--generate-self-signed", "--load-privkey",
                 os.path.join(d, "ca-key.pem"), "--outfile",
                 os.path.join(d, "ca-cert.pem"),
                 template='cn = "bench CA"\nca\ncert_signing_key\n')
        for kind, usage in (("server", 'ip_address = "127.0.0.1"\n'
                             'dns_name = "localhost"\ntls_www_server\n'),
                            ("client", "tls_www_client\n")):
            key = os.path.join(d, kind + "-key.pem")
            certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", key)
            certtool("--generate-certificate", "--load-privkey", key,
                     "--load-ca-certificate", os.path.join(d, "ca-cert.pem"),
                     "--load-ca-privkey", os.path.join(d, "ca-key.pem"),
                     "--outfile", os.path.join(d, kind + "-cert.pem"),
                     template='cn = "bench %s"\n%ssigning_key\n'
                     'encryption_key\n' % (kind, usage))
        self.pki = d
        return d

    # -------------------------------------------------- servers

    def nbdkit(self, name, args, env=None, extra_wait=()):
        argv = self.pin("source" if name == "src" else "dest", [
            "nbdkit", "-f", "--log=stderr", "-U", self.sock(name),
            "-P", self.procs.path(name, "pid")] + args)
        return self.procs.start(name, argv, env=env,
                                wait_paths=[self.sock(name)] + list(extra_wait),
                                pidfile=self.procs.path(name, "pid"))

    def start_source(self, img, net, stats=True, tls=False):
        """The old host: nbdkit file IMG, behind the WAN model if wan,
        behind the relay (started here too) for the relay models; with
        tls, requiring TLS and a client certificate.  Always the same
        socket: the relocate bitmap records it."""
        filters = ["--filter=stats"] if stats else []
        if tls:
            filters = ["--tls=require", "--tls-certificates=" + self.need_pki(),
                       "--tls-verify-peer"] + filters
        params = ["statsfile=" + self.procs.path("src", "stats")] if stats else []
        if net == "wan":
            filters += ["--filter=delay", "--filter=rate"]
            params += self.wan_args
        if stats and os.path.exists(self.procs.path("src", "stats")):
            os.unlink(self.procs.path("src", "stats"))
        # A directory: its files are the exports, by name (scenario fleet).
        what = ["dir=" + img] if os.path.isdir(img) else [img]
        self.nbdkit("src", filters + ["file"] + what + params)
        self.src_port = None
        if net in RELAYS:
            m = RELAYS[net]
            portf = self.procs.path("relay", "port")
            pidf = self.procs.path("relay", "pid")
            self.procs.start("relay", self.pin("source", [
                "/usr/bin/python3", os.path.join(HERE, "lib", "relay.py"),
                "--upstream", "unix:" + self.sock("src"),
                "--listen", "127.0.0.1:0", "--port-file", portf,
                "--pid-file", pidf, "--rtt", m["rtt"],
                "--conn-rate", m["conn_rate"], "--link-rate", m["link_rate"]]),
                wait_paths=[portf], pidfile=pidf)
            with open(portf) as f:
                self.src_port = int(f.read())

    def src_uri(self):
        """The source as nbdcopy and fio see it (through the relay if
        there is one)."""
        if self.src_port:
            return "nbd://127.0.0.1:%d/" % self.src_port
        return self.uri("src")

    def src_plugin_args(self, tls=False):
        """The nbd plugin's parameters for the source (tls: over TLS,
        verifying its certificate)."""
        tls_args = ["tls=require", "tls-certificates=" + self.need_pki()] \
            if tls else []
        if self.src_port:
            return ["hostname=127.0.0.1", "port=%d" % self.src_port] + tls_args
        return ["socket=" + self.sock("src")] + tls_args

    def relay_accepted(self):
        """Connections the last relay served (it logs each as it
        closes, and closes the rest at exit)."""
        try:
            with open(self.procs.path("relay", "log")) as f:
                last = f.read().rsplit("\n#### ", 1)[-1]
        except OSError:
            return None
        return len(re.findall(r"^relay: conn \d+ closed", last, re.M))

    def stop_source(self):
        """Stop the relay and the source; the source's read statistics
        (written at exit)."""
        self.procs.stop("relay")
        self.procs.stop("src")
        self.relay_conns = self.relay_accepted() if self.src_port else None
        self.src_port = None
        return parse_stats(self.procs.path("src", "stats"))

    def start_dest(self, name, local, start="immediate", extra=(), tls=False):
        ctl = self.procs.path(name, "ctl")
        args = ["--filter=" + self.filter, "nbd"] + self.src_plugin_args(tls) + [
                "relocate-file=" + local, "relocate-control=" + ctl]
        if start:
            args.append("relocate-start=" + start)
        args += list(extra) + self.relocate_args
        return self.nbdkit(name, args, extra_wait=[ctl])

    def relocatectl(self, name, *cmd):
        subprocess.run([self.ctl, cmd[0], self.procs.path(name, "ctl")]
                       + list(cmd[1:]), check=True, stdout=subprocess.DEVNULL)

    def status(self, name):
        return ctl_status(self.procs.path(name, "ctl"))
