"""The benchmark results as a PNG chart (matplotlib, Debian's python3-matplotlib)."""


def write_png(results, path):
    import matplotlib

    matplotlib.use("Agg")  # no display on a hypervisor host
    import matplotlib.pyplot as plt

    panels = [(f"{size} B frames", "Mframes/s", row, 1e6) for size, row in results.get("frames", {}).items()]
    if "tcp_gbit_s" in results:
        panels.append(("TCP, one stream", "Gbit/s", results["tcp_gbit_s"], 1))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, unit, row, scale) in zip(axes[0], panels, strict=True):
        names = list(row)
        medians = [row[n]["median"] / scale for n in names]
        low = [m - row[n]["min"] / scale for m, n in zip(medians, names, strict=True)]
        high = [row[n]["max"] / scale - m for m, n in zip(medians, names, strict=True)]
        colors = [
            "#888888" if n.startswith(("bridge", "vm-bridge", "tap-loop")) else "#2a7ab9" for n in names
        ]
        ax.bar(names, medians, yerr=[low, high], capsize=3, color=colors)
        for i, n in enumerate(names):
            ax.annotate(f"{row[n]['vs_bridge']:.2f}x", (i, medians[i]), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(f"{unit} (median, min-max)")
        ax.tick_params(axis="x", labelrotation=45)
    fig.suptitle(
        f"xdpbr bench: kernel {results['kernel']}, {results['cpus']} CPUs, {results['rounds']} rounds "
        "(ratios: vs the Linux bridge, same run)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
