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


def report(R):
    m = R["meta"]
    L = ["# nbdkit-relocate benchmark (%s, %d rep%s, median)\n"
         % (m["profile"], m["reps"], "" if m["reps"] == 1 else "s"),
         "%s, git %s, nbdkit %s, WAN = delay+rate filters `%s`, "
         "RELOCATE_ARGS=`%s`. MiB/s = 2^20 bytes/s; `1G` in the rate "
         "filter is 2^30 bit/s = 128 MiB/s.\n"
         % (m["date"], m["git"], m["nbdkit"], " ".join(m["wan_args"]),
            " ".join(m["relocate_args"]))]

    if "dense" in R:
        D = R["dense"]
        L.append("## 1. Dense random image, %d MiB\n" % (D["size"] // MiB))
        L.append("Time to a complete local copy.  ratio = time / nbdcopy's "
                 "time (nbdcopy is the limit: a plain copy, no serving).\n")
        L.append("| net | method | time s | MiB/s | ratio | CPU s | peak RSS MiB | read at source MiB |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for net, name, runs, t, base in copy_rows(D["runs"]):
            note = ""
            if not all(r.get("complete", True) for r in runs):
                t = med(runs, "projected_s")
                note = " (projected: gave up after %.0f s)" % med(runs, "time_s")
            if any(r.get("verified") is False for r in runs):
                note += " **DATA MISMATCH**"
            L.append("| %s | %s%s | %s | %s | %s | %s | %s | %s |" % (
                net, name, note, fmt(t), fmt(D["size"] / MiB / t if t else None, "%.1f"),
                fmt(ratio(t, base)), fmt(med(runs, "cpu_s")),
                fmt((med(runs, "rss_kib") or 0) / 1024, "%.0f"),
                fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f")))
        for net, methods in D["runs"].items():
            runs = methods.get("relocate", [])
            ap = med(runs, "all_present_s")
            if ap is not None:
                L.append("\n%s: relocate had every block present at %.2f s "
                         "(status poll every 0.2 s); relocatectl wait returned "
                         "at %.2f s." % (net, ap, med(runs, "time_s")))
        L.append("")

    if "sparse" in R:
        S = R["sparse"]
        L.append("## 2. Sparse image, %d MiB holding %d MiB in %d extents\n"
                 % (S["size"] // MiB, S["data"] // MiB, S["extents"]))
        L.append("| net | method | time s | ratio | fetched MiB | skipped zero MiB | read at source MiB | local du MiB | verified |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for net, name, runs, t, base in copy_rows(S["runs"]):
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                net, name, fmt(t), fmt(ratio(t, base)),
                fmt(med(runs, "fetched_bytes") / MiB if "fetched_bytes" in runs[0] else None, "%.0f"),
                fmt(med(runs, "skipped_zero_bytes") / MiB if "skipped_zero_bytes" in runs[0] else None, "%.0f"),
                fmt((med(runs, "src_read_bytes") or 0) / MiB, "%.0f"),
                fmt(med(runs, "local_allocated") / MiB, "%.0f"),
                {True: "yes", False: "**NO**", None: "-"}[runs[0].get("verified")]))
        L.append("\nSource image allocated: %d MiB.\n"
                 % (S["source_allocated"] // MiB))

    if "vmview" in R:
        V = R["vmview"]
        runs = V["runs"]
        L.append("## 3. VM view during the relocation (wan)\n")
        L.append("fio 4 KiB random reads, iodepth 1, %d s, on a %d MiB region "
                 "already present; background copy paused vs running.\n"
                 % (V["runtime"], V["region"] // MiB))
        L.append("| copy | p50 us | p99 us | mean us | IOPS | copy MiB/s meanwhile |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for k in ("paused", "copying"):
            rs = [r[k] for r in runs]
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                k, fmt(med(rs, "p50_us"), "%.0f"), fmt(med(rs, "p99_us"), "%.0f"),
                fmt(med(rs, "lat_mean_us"), "%.0f"), fmt(med(rs, "iops"), "%.0f"),
                fmt(med(runs, "copy_mib_s"), "%.1f") if k == "copying" else "-"))
        L.append("\nratio running/paused: p50 %s, p99 %s; the copy was active "
                 "for %s s of the %s s fio window.\n" % (
                     fmt(ratio(med([r["copying"] for r in runs], "p50_us"),
                               med([r["paused"] for r in runs], "p50_us"))),
                     fmt(ratio(med([r["copying"] for r in runs], "p99_us"),
                               med([r["paused"] for r in runs], "p99_us"))),
                     fmt(med(runs, "copy_active_s"), "%.1f"),
                     fmt(med(runs, "fio_window_s"), "%.1f")))

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
              "scan+cache (defaults)": "C3", "qsd block-stream": "C4"}
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
            if name == "relocate" and scen == "sparse":
                ax.plot(xs, [0] + [x[2] / GiB for x in tl], color="C0",
                        ls="--", label="relocate (fetched bytes)")
                ax_present.plot(xs, ys, color="C0", lw=0.8, alpha=0.6)
                ax_present.axhline(size / GiB, color="grey", lw=0.5, ls=":")
                ax.plot([r["time_s"]], [tl[-1][2] / GiB], marker="x",
                        color="C0", markersize=9)
                continue
            label = name
            if name == "nbdcopy":
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
