"""The domain XML: which disks are relocated, and how each is rewritten."""

import unittest
import xml.etree.ElementTree as ET

from hooktest import disk_of, domain, file_disk, nbd_disk
from relocate_hook import domxml

LOCAL = {"this-host", "127.0.0.1"}
TCP_REL = {"serve": "tcp", "serve_name": "this-host", "port": 10815,
           "tls": True}
UNIX_REL = {"serve": "unix", "socket": "/var/lib/nbdkit-relocate/u/vda/nbd.sock"}


class Source(unittest.TestCase):
    """nbd_source: which disks this host relocates, and why not the others."""

    def source(self, disk_xml):
        return domxml.nbd_source(disk_of(domain(disk_xml), _dev(disk_xml)),
                                 LOCAL)

    def assertLeftAlone(self, disk_xml, why):
        self.assertEqual(self.source(disk_xml), (None, why))

    def test_nbd_over_tcp(self):
        """A remote NBD disk: its host, port (10809 by default), export."""
        self.assertEqual(self.source(nbd_disk()),
                         (("old-host", "10809", "disk1", False), None))
        self.assertEqual(self.source(nbd_disk(host="192.0.2.1", port=10900,
                                              export="")),
                         (("192.0.2.1", "10900", "", False), None))

    def test_nbd_over_unix(self):
        """A unix socket is this host's: it cannot be relocated from."""
        disk = nbd_disk().replace("<host name='old-host'/>",
                                  "<host transport='unix' socket='/run/a.sock'/>")
        why = self.source(disk)[1]
        self.assertTrue(why.startswith("transport unix: a local socket"), why)

    def test_tls(self):
        """TLS as libvirt decides it: the tls attribute, else qemu.conf's
        nbd_tls (tls_default)."""
        def with_tls(value):
            return nbd_disk().replace("<source protocol='nbd'",
                                      "<source protocol='nbd' tls='%s'" % value)
        for disk_xml, default, tls in ((with_tls("yes"), False, True),
                                       (with_tls("no"), True, False),
                                       (nbd_disk(), True, True),
                                       (nbd_disk(), False, False)):
            with self.subTest(xml=disk_xml, nbd_tls=default):
                src, why = domxml.nbd_source(disk_of(domain(disk_xml)),
                                             LOCAL, default)
                self.assertEqual(src, ("old-host", "10809", "disk1", tls))

    def test_auth(self):
        """An authenticated source is not handled: left alone."""
        auth = nbd_disk(inner="<auth username='u'><secret type='iscsi' "
                        "usage='x'/></auth>")
        self.assertLeftAlone(auth, "a source with <auth> is not handled")

    def test_several_hosts(self):
        """NBD takes one host: a source naming several is left alone."""
        two = nbd_disk().replace("<host name='old-host'/>",
                                 "<host name='a'/><host name='b'/>")
        self.assertLeftAlone(two, "2 <host> elements: NBD has one")

    def test_this_host(self):
        """A disk already served by this host is left alone."""
        self.assertLeftAlone(nbd_disk(host="this-host"),
                             "source host 'this-host' is this host")
        self.assertLeftAlone(nbd_disk(host=""), "source host '' is this host")

    def test_other_disks(self):
        """File disks, other protocols, sources without a host."""
        self.assertLeftAlone(file_disk("vda"), "not a network disk")
        http = nbd_disk().replace("protocol='nbd'", "protocol='http'")
        self.assertLeftAlone(http, "not NBD")
        self.assertLeftAlone(nbd_disk().replace("<host name='old-host'/>", ""),
                             "no <host>")


class Rewrite(unittest.TestCase):
    """point_at_server, and what the result names."""

    def test_tcp(self):
        """The disk names this host's server; nothing else changes."""
        text = domain(nbd_disk(port=10900, inner="<reconnect delay='5'/>"))
        d = disk_of(text)
        domxml.point_at_server(d, TCP_REL)
        src = d.find("source")
        self.assertEqual([h.attrib for h in src.findall("host")],
                         [{"name": "this-host", "port": "10815"}])
        self.assertEqual(src.get("name"), "disk1")
        self.assertEqual(src.get("tls"), "yes")
        self.assertIsNotNone(src.find("reconnect"))
        self.assertEqual(d.find("driver").attrib, {"name": "qemu", "type": "raw"})
        self.assertTrue(domxml.names_server(d, TCP_REL))
        self.assertFalse(domxml.names_server(d, dict(TCP_REL, port=10816)))
        self.assertFalse(domxml.names_server(d, UNIX_REL))

    def test_pause_and_reconnect(self):
        """pause: error_policy and rerror_policy 'stop' on the driver
        (made if missing), an operator's own kept; reconnect_delay: a
        <reconnect> in <source> unless there is one."""
        d = disk_of(domain(nbd_disk()))
        domxml.point_at_server(d, TCP_REL, True, 10)
        self.assertEqual(d.find("driver").attrib,
                         {"name": "qemu", "type": "raw", "error_policy": "stop",
                          "rerror_policy": "stop"})
        self.assertEqual(d.find("source/reconnect").attrib, {"delay": "10"})
        d = disk_of(domain(nbd_disk()))
        domxml.point_at_server(d, TCP_REL, False, 0.3)
        self.assertEqual(d.find("source/reconnect").attrib, {"delay": "1"})
        d = disk_of(domain(nbd_disk(inner="<reconnect delay='5'/>")))
        d.remove(d.find("driver"))
        domxml.point_at_server(d, TCP_REL, True, 10)
        self.assertEqual(d.find("driver").attrib,
                         {"name": "qemu", "error_policy": "stop",
                          "rerror_policy": "stop"})
        self.assertEqual(d.findall("source/reconnect")[0].get("delay"), "5")
        d = disk_of(domain(nbd_disk()))
        d.find("driver").set("error_policy", "report")
        domxml.point_at_server(d, TCP_REL, True, 0)
        self.assertEqual(d.find("driver").get("error_policy"), "report")
        self.assertEqual(d.find("driver").get("rerror_policy"), "stop")
        self.assertIsNone(d.find("source/reconnect"))

    def test_plain(self):
        """A server without TLS (insecure, or a unix socket): tls='no',
        whatever the source said or nbd_tls says here."""
        tls_src = nbd_disk().replace("<source protocol='nbd'",
                                     "<source protocol='nbd' tls='yes'")
        for rel in (dict(TCP_REL, tls=False), UNIX_REL):
            for disk_xml in (nbd_disk(), tls_src):
                d = disk_of(domain(disk_xml))
                domxml.point_at_server(d, rel)
                self.assertEqual(d.find("source").get("tls"), "no")

    def test_unix(self):
        d = disk_of(domain(nbd_disk()))
        domxml.point_at_server(d, UNIX_REL)
        self.assertEqual([h.attrib for h in d.find("source").findall("host")],
                         [{"transport": "unix", "socket": UNIX_REL["socket"]}])
        self.assertTrue(domxml.names_server(d, UNIX_REL))
        self.assertFalse(domxml.names_server(d, TCP_REL))

    def test_names_source(self):
        """A definition names the host a relocation came from: same host,
        port (10809 by default) and export."""
        rel = {"hostname": "old-host", "port_src": "10809", "export": "disk1"}
        self.assertTrue(domxml.names_source(disk_of(domain(nbd_disk())), rel))
        for other in (nbd_disk(port=10900), nbd_disk(host="x"),
                      nbd_disk(export="disk2"), file_disk("vda")):
            self.assertFalse(domxml.names_source(disk_of(domain(other)), rel),
                             other)

    def test_namespaced_metadata(self):
        """The rewritten XML keeps other namespaces' prefixes (libosinfo's,
        an application's) and their content."""
        meta = ("<metadata>"
                "<libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/"
                "xmlns/libvirt/domain/1.0'><libosinfo:os id='http://debian.org/"
                "debian/12'/></libosinfo:libosinfo>"
                "<app1:foo xmlns:app1='http://app1.example/'>bar</app1:foo>"
                "</metadata>")
        root = domxml.parse(domain(nbd_disk(), extra=meta))
        domxml.point_at_server(next(root.iter("disk")), TCP_REL)
        out = domxml.tostring(root)
        self.assertIn("<libosinfo:os id=\"http://debian.org/debian/12\" />", out)
        self.assertIn("xmlns:libosinfo=\"http://libosinfo.org/xmlns/libvirt/"
                      "domain/1.0\"", out)
        self.assertIn("xmlns:app1=\"http://app1.example/\"", out)
        self.assertIn("<app1:foo>bar</app1:foo>", out)
        self.assertNotIn("ns0:", out)

    def test_untouched_disks_round_trip(self):
        """Disks the hook leaves alone come back as they were."""
        text = domain(file_disk(), nbd_disk("vdb", host="this-host"))
        before = [ET.tostring(d) for d in domxml.parse(text).iter("disk")]
        after = [ET.tostring(d) for d in
                 domxml.parse(domxml.tostring(domxml.parse(text))).iter("disk")]
        self.assertEqual(before, after)


class Names(unittest.TestCase):

    def test_domain_key(self):
        """The UUID names the directory; without one, a digest of the name."""
        root = domxml.parse(domain(uuid="6F0C2F0E-6A4B-4F0E-9A53-2D7D1C1E0001"))
        self.assertEqual(domxml.domain_key("vm1", root),
                         "6f0c2f0e-6a4b-4f0e-9a53-2d7d1c1e0001")
        for uuid in ("", "../../etc", "not-a-uuid"):
            key = domxml.domain_key("evil $(x) '", domxml.parse(domain(uuid=uuid)))
            self.assertRegex(key, r"^[0-9a-f]{32}$")

    def test_target_dev(self):
        """Only a target dev that can name a directory of its own."""
        self.assertEqual(domxml.target_dev(disk_of(domain(nbd_disk("vdb")), "vdb")),
                         "vdb")
        for dev in ("attic", ".", "..", "vd/a", "vd a", "$(id)", ""):
            d = ET.Element("disk")
            ET.SubElement(d, "target", dev=dev)
            self.assertIsNone(domxml.target_dev(d), dev)
        self.assertIsNone(domxml.target_dev(ET.fromstring("<disk/>")))

    def test_not_xml(self):
        with self.assertRaises(ET.ParseError):
            domxml.parse("<domain>")


def _dev(disk_xml):
    return ET.fromstring(disk_xml).find("target").get("dev")


if __name__ == "__main__":
    unittest.main()
