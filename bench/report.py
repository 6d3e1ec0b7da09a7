"""Writing the results: results.md (report) and progress.png (plot)."""

from lib.common import GiB, KiB, MiB, median


def fmt(x, spec="%.2f"):
    return "n/a" if x is None else spec % x


def ratio(a, b):
    return None if a is None or not b else a / b


def med(runs, key):
    return median([r.get(key) for r in runs])


def copy_rows(runs):
    """(net, method, its runs, median time, nbdcopy's median time) for
    every method of scenarios 1 and 2."""
    for net, methods in runs.items():
        base = med(methods.get("nbdcopy", []), "time_s")
        for name, rs in methods.items():
            yield net, name, rs, med(rs, "time_s"), base


def targets(runs, alloc):
    """The issue's targets on every network model: relocate's time at
    most 1.10 x nbdcopy's (default connections), the source serving at
    most 1.02 x the allocated data.  relocate with one connection has
    no time target: it is set beside nbdcopy --connections=1."""
    L = []
    for net, methods in runs.items():
        base = med(methods.get("nbdcopy", []), "time_s")
        base1 = med(methods.get("nbdcopy --connections=1", []), "time_s")
        for name in ("relocate", "relocate connections=1"):
            rs = methods.get(name)
            if not rs or all(r.get("na") for r in rs):
                continue
            t, rb = med(rs, "time_s"), med(rs, "src_read_bytes")
            tr, br = ratio(t, base), ratio(rb, alloc)
            if name == "relocate":
                when = "target <= 1.10: %s" % (
                    "n/a" if tr is None else
                    "met" if tr <= 1.10 else "**missed**")
            else:
                when = "no target; %s x nbdcopy --connections=1" % fmt(
                    ratio(t, base1))
            L.append("- %s, %s: time %s x nbdcopy (%s); "
                     "source served %s x allocated (target <= 1.02: %s)"
                     % (net, name, fmt(tr), when, fmt(br, "%.3f"),
                        "n/a" if br is None else
                        "met" if br <= 1.02 else "**missed**"))
    return L + [""] if L else []


def tls_cost(runs):
    """The issue's target for TLS: relocate over TLS at most 1.05 x the
    time of relocate in the clear, on the same model in the same run;
    CPU seconds per GiB fetched, of the filter and of the source, both
    ways."""
    L = []
    for net, methods in runs.items():
        plain, tls = methods.get("relocate"), methods.get("relocate tls")
        if not plain or not tls:
            continue
        tr = ratio(med(tls, "time_s"), med(plain, "time_s"))

        def per_gib(rs, key):
            return ratio(med(rs, key), (med(rs, "fetched_bytes") or 0) / GiB)
        L.append("- %s, TLS: time %s x relocate in the clear (target <= "
                 "1.05: %s); CPU s per GiB fetched: filter %s in the clear, "
                 "%s with TLS; source %s in the clear, %s with TLS"
                 % (net, fmt(tr), "n/a" if tr is None else
                    "met" if tr <= 1.05 else "**missed**",
                    fmt(per_gib(plain, "cpu_s")), fmt(per_gib(tls, "cpu_s")),
                    fmt(per_gib(plain, "src_cpu_s")),
                    fmt(per_gib(tls, "src_cpu_s"))))
    return L + [""] if L else []


def vmview(V):
    """Scenario 3's table: p50/p99 paused vs copying, and the ratios."""
    cpus = V.get("cpus")
    L = ["## 3. The guest's view during the relocation (%s)\n" % V["net"],
         "fio 4 KiB random I/O, %d s paused and %d s copying, each test on "
         "a fresh relocation: present = a %d MiB region at the start of the "
         "disk, copied by the background copy (then paused) and read once, "
         "with fio runs of about 2 s paused and copying in turn (paused, "
         "copying, copying, paused, ...), each side's percentiles from the "
         "summed histograms of its runs; absent = one run on the third "
         "quarter of the disk (paused), then one on the fourth (copying).  "
         "Flush = 4 KiB random writes each followed by a flush (fio "
         "fsync=1), the flush's latency.  paused = `relocatectl pause`; "
         "copying = after `resume`.  Targets: present p99 copying/paused "
         "<= 1.5, flush p99 <= 2.\n"
         % (V["runtime"], V["runtime"], V["region"] // MiB),
         ("CPUs: the source and the WAN model on CPU %s, relocate and fio "
          "on CPU %s (on a real migration they are different hosts).\n"
          % (cpus["source"], cpus["dest"])) if cpus else
         "CPUs: every process on every CPU.\n",
         "| test | p50 paused us | p50 copying us | p99 paused us | p99 copying us | p50 ratio | p99 ratio | IOPS paused | IOPS copying | I/Os that fetched paused / copying | copy MiB/s meanwhile | target |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, runs in V["tests"].items():
        flush = "flush" in name
        k50, k99 = ("flush_p50_us", "flush_p99_us") if flush \
            else ("p50_us", "p99_us")
        P = [r["paused"] for r in runs]
        C = [r["copying"] for r in runs]
        r99 = ratio(med(C, k99), med(P, k99))
        lim = 2.0 if flush else 1.5 if name.startswith("present") else None
        tgt = "-" if lim is None or r99 is None else \
            ("met (<= %.1f)" % lim if r99 <= lim else "**missed** (> %.1f)" % lim)
        bs = runs[0].get("block_size") or 65536

        def fetched(rs):
            # share of the 4K I/Os that fetched their block on demand
            x = [r["fetched_demand_bytes"] / bs / (r["io_bytes"] / 4096)
                 for r in rs if r.get("io_bytes")]
            return fmt(100 * median(x) if x else None, "%.0f%%")
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |" % (
            name, fmt(med(P, k50), "%.0f"), fmt(med(C, k50), "%.0f"),
            fmt(med(P, k99), "%.0f"), fmt(med(C, k99), "%.0f"),
            fmt(ratio(med(C, k50), med(P, k50))), fmt(r99),
            fmt(med(P, "iops"), "%.0f"), fmt(med(C, "iops"), "%.0f"),
            fetched(P), fetched(C),
            fmt(med(runs, "copy_mib_s"), "%.1f") +
            (" (completed)" if any(r.get("copy_completed") for r in runs)
             else ""), tgt))
    L.append("\nThe copying runs took %s s.  \"I/Os that "
             "fetched\": 64K blocks fetched on demand per 4K I/O; on absent "
             "data the rest found their block already fetched (by an earlier "
             "I/O, or by the copy, which follows the guest's demand "
             "fetches).\n"
             % fmt(median([r["fio_window_s"] for rs in V["tests"].values()
                           for r in rs]), "%.1f"))
    return L


def report(R):
    m = R["meta"]
    L = ["# nbdkit-relocate benchmark (%s, %d rep%s, median)\n"
         % (m["profile"], m["reps"], "" if m["reps"] == 1 else "s"),
         "%s, git %s, nbdkit %s, %s, %s cores (%s), nbdcopy %s. "
         "wan = delay+rate filters `%s`; RELOCATE_ARGS=`%s`. MiB/s = "
         "2^20 bytes/s; `1G` in the rate filter is 2^30 bit/s = 128 MiB/s.\n"
         % (m["date"], m["git"], m["nbdkit"], m.get("machine"),
            m["nproc"], (m.get("cpu") or "").strip(), m.get("nbdcopy"),
            " ".join(m["wan_args"]), " ".join(m["relocate_args"]))]
    for net, r in sorted((m.get("relays") or {}).items()):
        if net in m.get("nets", []) or net == m.get("vmview_net"):
            L.append("%s = TCP relay (bench/lib/relay.py): RTT %s, each TCP "
                     "connection capped at %s/s with one bandwidth-delay "
                     "product in flight, the link at %s/s.\n"
                     % (net, r["rtt"], r["conn_rate"].replace("M", " MiB"),
                        r["link_rate"].replace("M", " MiB")))
    if "relocate_multiconn" in m:
        L.append("The filter %s relocate-connections%s.\n" % (
            "has" if m["relocate_multiconn"] else "has no",
            "" if m["relocate_multiconn"] else
            " (one connection to the source): on the relay models "
            "\"relocate\" (its default) is n/a and \"relocate "
            "connections=1\" is the filter as it is"))

    if "dense" in R:
        D = R["dense"]
        L.append("## 1. Dense random image, %d MiB\n" % (D["size"] // MiB))
        L.append("Time to a complete local copy.  ratio = time / nbdcopy's "
                 "time (nbdcopy is the limit: a plain copy, no serving).\n")
        L.append("| net | method | conns | time s | MiB/s | ratio | CPU s | peak RSS MiB | read at source MiB | read / allocated |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        alloc = D.get("allocated") or D["size"]
        for net, name, runs, t, base in copy_rows(D["runs"]):
            if all(r.get("na") for r in runs):
                L.append("| %s | %s | n/a: %s | | | | | | | |"
                         % (net, name, runs[0]["na"]))
                continue
            note = ""
            if not all(r.get("complete", True) for r in runs):
                t = med(runs, "projected_s")
                note = " (projected: gave up after %.0f s)" % med(runs, "time_s")
            if any(r.get("verified") is False for r in runs):
                note += " **DATA MISMATCH**"
            L.append("| %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                net, name, note, fmt(med(runs, "connections"), "%d"),
                fmt(t), fmt(D["size"] / MiB / t if t else None, "%.1f"),
                fmt(ratio(t, base)), fmt(med(runs, "cpu_s")),
                fmt((med(runs, "rss_kib") or 0) / 1024, "%.0f"),
                fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f"),
                fmt(ratio(med(runs, "src_read_bytes"), alloc), "%.3f")))
        for net, methods in D["runs"].items():
            runs = methods.get("relocate", [])
            ap = med(runs, "all_present_s")
            if ap is not None:
                L.append("\n%s: relocate had every block present at %.2f s "
                         "(status poll every 0.2 s); relocatectl wait returned "
                         "at %.2f s." % (net, ap, med(runs, "time_s")))
        L.append("")
        L += targets(D["runs"], alloc)
        L += tls_cost(D["runs"])

    if "sparse" in R:
        S = R["sparse"]
        L.append("## 2. Sparse image, %d MiB holding %d MiB in %d extents\n"
                 % (S["size"] // MiB, S["data"] // MiB, S["extents"]))
        L.append("| net | method | conns | time s | ratio | fetched MiB | skipped zero MiB | read at source MiB | read / allocated | local du MiB | verified |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for net, name, runs, t, base in copy_rows(S["runs"]):
            if all(r.get("na") for r in runs):
                L.append("| %s | %s | n/a: %s | | | | | | | | |"
                         % (net, name, runs[0]["na"]))
                continue
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                net, name, fmt(med(runs, "connections"), "%d"),
                fmt(t), fmt(ratio(t, base)),
                fmt(med(runs, "fetched_bytes") / MiB if "fetched_bytes" in runs[0] else None, "%.0f"),
                fmt(med(runs, "skipped_zero_bytes") / MiB if "skipped_zero_bytes" in runs[0] else None, "%.0f"),
                fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f"),
                fmt(ratio(med(runs, "src_read_bytes"), S["source_allocated"]), "%.3f"),
                fmt(med(runs, "local_allocated") / MiB, "%.0f"),
                {True: "yes", False: "**NO**", None: "-"}[runs[0].get("verified")]))
        L.append("\nSource image allocated: %d MiB.\n"
                 % (S["source_allocated"] // MiB))
        L += targets(S["runs"], S["source_allocated"])
        L += tls_cost(S["runs"])

    if "vmview" in R:
        L += vmview(R["vmview"])

    if "firsttouch" in R:
        F = R["firsttouch"]
        L.append("## 4. First touch: reads of absent data (wan, background copy off)\n")
        L.append("| test | metric | relocate | direct from source | ratio | bound |")
        L.append("|---|---|---:|---:|---:|---:|")
        for tname, (metric, key, scale, spec) in {
                "rand4k_qd1": ("mean latency us", "lat_mean_us", 1, "%.0f"),
                "rand4k_qd16": ("IOPS", "iops", 1, "%.0f"),
                "seq64k_qd1": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f"),
                "seq1m_qd1": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f"),
                "seq1m_qd8": ("MiB/s", "bw_bytes", 1 / MiB, "%.1f")}.items():
            if tname not in F["runs"]:
                continue
            a = med(F["runs"][tname]["relocate"], key)
            b = med(F["runs"][tname]["direct"], key)
            bound = "-"
            if tname == "rand4k_qd16" and F["iodepth16_bound_iops"]:
                bound = "16/RTT = %.0f" % F["iodepth16_bound_iops"]
            if tname == "rand4k_qd1" and F["rtt_s"]:
                bound = "RTT = %.0f" % (F["rtt_s"] * 1e6)
            label = tname if not tname.startswith("seq") else \
                "seq %s %s, %d MiB%s" % (
                    "64K" if "64k" in tname else "1M", tname[-3:],
                    F["seq"] // MiB,
                    " (or %d s)" % F["runtime"] if "64k" in tname else "")
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                label, metric, fmt(a * scale if a is not None else None, spec),
                fmt(b * scale if b is not None else None, spec),
                fmt(ratio(a, b)), bound))
        L.append("")
        for tname in ("rand4k_qd1", "rand4k_qd16"):
            runs = F["runs"].get(tname, {}).get("relocate", [])
            dm, io = med(runs, "fetched_demand_bytes"), med(runs, "io_bytes")
            if dm and io:
                bsz = runs[0]["block_size"]
                L.append("%s: %.0f MiB fetched on demand for %.1f MiB read "
                         "(x%.1f); %.0f%% of the reads found their block "
                         "already fetched (%d KiB blocks)." % (
                             tname, dm / MiB, io / MiB, dm / io,
                             max(0, 100 * (1 - (dm / bsz) / (io / 4096))),
                             bsz // KiB))
        L.append("")

    if "after" in R:
        A = R["after"]
        L.append("## 5. After completion: relocate (source gone) vs nbdkit file, same local file\n")
        L.append("| test | relocate IOPS | file IOPS | ratio | relocate p99 us | file p99 us |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for tname, t in A["runs"].items():
            a, b = med(t["relocate"], "iops"), med(t["file"], "iops")
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                tname, fmt(a, "%.0f"), fmt(b, "%.0f"), fmt(ratio(a, b)),
                fmt(med(t["relocate"], "p99_us"), "%.0f"),
                fmt(med(t["file"], "p99_us"), "%.0f")))
        L.append("")
    if "fleet" in R:
        F = R["fleet"]
        L.append("## 6. Fleet: %d relocations at once from one old host, one budget (%s)\n"
                 % (F["n"], F["net"]))
        L.append("%d images of %d MiB (even ones dense, odd ones an eighth "
                 "data), from one nbdkit file dir=; the link capped at "
                 "%.0f MiB/s. Rate at the source: the highest over any 2 s "
                 "(its rchar). RSS, threads: per relocation, the largest: over "
                 "the whole run (VmHWM: with the share of the link a "
                 "relocation has alone at the start and once others "
                 "completed), and while all %d copy together (VmRSS every "
                 "0.1 s, from when each has seen all %d copying to the "
                 "first completion). "
                 "Idle CPU: all %d filters over the 3 s after the last "
                 "completed.\n" % (F["n"], F["each"] // MiB, F["link"] / MiB,
                                    F["n"], F["n"], F["n"]))
        L.append("| method | time s | ratio | source MiB/s (peak 2 s) | budget MiB/s | peak / budget | peak RSS MiB | peak RSS MiB, all copying | threads | CPU s (sum) | idle CPU s |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = med(F["runs"].get("nbdcopy x8", []), "time_s")
        for name, rs in F["runs"].items():
            t = med(rs, "time_s")
            peak = med(rs, "src_peak_rate")
            lim = rs[0].get("limit")
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, fmt(t), fmt(ratio(t, base)),
                fmt(peak / MiB if peak else None, "%.1f"),
                fmt(lim / MiB, "%.0f") if lim else "-",
                fmt(ratio(peak, lim)) if lim else "-",
                fmt(max(rs[0]["rss_kib"]) / 1024, "%.0f") if "rss_kib" in rs[0] else "-",
                fmt(max(rs[0]["rss_together_kib"]) / 1024, "%.0f")
                if None not in rs[0].get("rss_together_kib", [None]) else "-",
                max(rs[0]["threads"]) if "threads" in rs[0] else "-",
                fmt(sum(rs[0]["cpu_s"]), "%.1f") if "cpu_s" in rs[0] else "-",
                fmt(rs[0]["idle_cpu_s"]) if "idle_cpu_s" in rs[0] else "-"))
        L.append("")
        D = F.get("dense")
        if D:
            L.append("Memory with %d dense images of %d MiB (group=link, once): "
                     "peak RSS per relocation %s MiB over the whole run, %s MiB "
                     "while all %d copy; %s threads; %.1f s, %.1f CPU s in all, "
                     "%.2f CPU s idle after.\n" % (
                         F["n"], F["dense_each"] // MiB,
                         fmt(max(D["rss_kib"]) / 1024, "%.0f"),
                         fmt(max(D["rss_together_kib"]) / 1024, "%.0f")
                         if None not in D["rss_together_kib"] else "-",
                         F["n"], max(D["threads"]), D["time_s"],
                         sum(D["cpu_s"]), D["idle_cpu_s"]))
        G = F.get("guest", {})
        if G:
            L.append("The guest's view: fio 4K random reads at depth 1, %d s, "
                     "on relocation 0's disk, all absent (its background copy "
                     "off, so every read fetches), alone in the group, then "
                     "while the other %d copy under the link's budget.\n"
                     % (F.get("fio_runtime", 0), F["n"] - 1))
            L.append("| | p50 us | p99 us | IOPS | reads that fetched | others copying at the end |")
            L.append("|---|---:|---:|---:|---:|---:|")
            for k, rs in G.items():
                fetched = med(rs, "fetched_demand_bytes")
                L.append("| %s | %s | %s | %s | %s | %s |" % (
                    k, fmt(med(rs, "p50_us"), "%.0f"),
                    fmt(med(rs, "p99_us"), "%.0f"),
                    fmt(med(rs, "iops"), "%.0f"),
                    "%.0f%%" % (100 * fetched / rs[0]["block_size"]
                                / max(1, med(rs, "io_bytes") / 4096))
                    if fetched else "-",
                    rs[0]["others_copying"]))
            keys = list(G)
            if len(keys) == 2:
                with_others = med(G[keys[1]], "p99_us")
                alone = med(G[keys[0]], "p99_us")
                L.append("\np99 %s / alone: %s (target <= 1.3)\n"
                         % (keys[1], fmt(ratio(with_others, alone))))
    L.append("Whole run: %.0f s.\n" % m["elapsed_s"])
    return "\n".join(L)


def plot(R, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = []
    for scen in ("dense", "sparse"):
        if scen in R:
            for net in R[scen]["runs"]:
                panels.append((scen, net))
    if not panels:
        return
    cols = 2
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows), squeeze=False)
    styles = {"relocate": "C0", "nbdcopy": "C1", "scan+cache (2M blocks)": "C2",
              "scan+cache (defaults)": "C3", "qsd block-stream": "C4",
              "relocate connections=1": "C5",
              "nbdcopy --connections=1": "C6"}
    for ax, (scen, net) in zip(axes.flat, panels):
        size = R[scen]["size"]
        ax_present = ax
        if scen == "sparse":
            # data on the left axis; relocate's present_bytes (mostly
            # holes, marked present at once) on the right
            ax_present = ax.twinx()
            ax_present.set_ylabel("GiB present (relocate)", color="C0")
        for name, runs in R[scen]["runs"][net].items():
            r = runs[0]
            tl = r.get("timeline") or []
            if not tl:
                continue
            xs = [0] + [x[0] for x in tl]
            ys = [0] + [x[1] / GiB for x in tl]
            if name.startswith("relocate") and scen == "sparse":
                c = styles.get(name)
                ax.plot(xs, [0] + [x[2] / GiB for x in tl], color=c,
                        ls="--", label="%s (fetched bytes)" % name)
                ax_present.plot(xs, ys, color=c, lw=0.8, alpha=0.6)
                ax_present.axhline(size / GiB, color="grey", lw=0.5, ls=":")
                ax.plot([r["time_s"]], [tl[-1][2] / GiB], marker="x",
                        color=c, markersize=9)
                continue
            label = name
            if name.startswith("nbdcopy"):
                label += " (output allocated)"
            elif name.startswith("scan"):
                label += " (cache allocated)"
            elif name.startswith("qsd"):
                label += " (job offset)"
            else:
                label += " (present_bytes)"
            ax.plot(xs, ys, color=styles.get(name), label=label)
            end_t = r["time_s"]
            ax.plot([end_t], [ys[-1]], marker="x" if r.get("complete", True)
                    else "o", color=styles.get(name), markersize=9)
        if scen == "dense":
            ax.axhline(size / GiB, color="grey", lw=0.5, ls=":")
        ax.set_title("%s image (%d MiB), %s" % (scen, size // MiB, net))
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("GiB" if scen == "dense" else "GiB of data copied")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("progress (first repetition); x = done, o = gave up")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
