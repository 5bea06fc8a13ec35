"""Plots of bench_baseline.py's CSV: latency vs prompt length and decode throughput vs batch size, per model.

For each model, PNGs under --out: latency_vs_seq_len_<model>.png (one panel per batch size) and
throughput_vs_batch_<model>.png (one panel per prompt length), one line per variant; and, when the CSV has the
baseline and another variant, ratio_vs_batch_<model>.png: each variant's decode tokens/s over the baseline's per
prompt length, a 1.0 line, and (from the *_samples columns, repeat by repeat) the lowest-highest ratio of the
repeats as a band. Points that did not run (status other than ok) are left out.

    python scripts/plot_baseline.py benchmarks/bench_results/baseline_metrics.csv --out benchmarks/bench_results
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

NEEDED = {"model_name", "variant", "batch_size", "seq_len", "latency_ms", "throughput_tokens_per_sec", "status"}


def panels(df: pd.DataFrame, panel_by: str, x: str, y: str, ylabel: str, title: str, path: Path) -> None:
    values = sorted(df[panel_by].unique())
    fig, axes = plt.subplots(1, len(values), figsize=(4 * len(values), 3.5), squeeze=False, sharey=False)
    for ax, value in zip(axes[0], values):
        for variant, rows in df[df[panel_by] == value].groupby("variant"):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows[y], marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ticks = sorted(df[x].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{panel_by} = {value}")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def repeat_ratios(variant: pd.Series, baseline: pd.Series) -> list[float]:
    """tokens/s ratios repeat by repeat: the baseline's decode step time over the variant's."""
    return [float(b) / float(v) for v, b in zip(str(variant["tpot_ms_samples"]).split(";"),
                                                str(baseline["tpot_ms_samples"]).split(";"))]


def ratio_panels(df: pd.DataFrame, title: str, path: Path) -> bool:
    """Each variant's tokens/s over the baseline's against batch size, one panel per prompt length; False when
    there is nothing to divide."""
    base = df[df["variant"] == "baseline"].set_index(["batch_size", "seq_len"])
    others = [v for v in sorted(df["variant"].unique()) if v != "baseline"]
    if base.empty or not others:
        return False
    seqs = sorted(df["seq_len"].unique())
    fig, axes = plt.subplots(1, len(seqs), figsize=(4 * len(seqs), 3.5), squeeze=False, sharey=True)
    for ax, seq_len in zip(axes[0], seqs):
        for variant in others:
            rows = df[(df["variant"] == variant) & (df["seq_len"] == seq_len)].sort_values("batch_size")
            rows = rows[[(b, seq_len) in base.index for b in rows["batch_size"]]]
            if rows.empty:
                continue
            b = base.loc[[(x, seq_len) for x in rows["batch_size"]]]
            ratio = rows["throughput_tokens_per_sec"].to_numpy() / b["throughput_tokens_per_sec"].to_numpy()
            (line,) = ax.plot(rows["batch_size"], ratio, marker="o", label=f"{variant} / baseline")
            if "tpot_ms_samples" in rows and rows["tpot_ms_samples"].notna().all() and \
                    b["tpot_ms_samples"].notna().all():
                spans = [repeat_ratios(v, bb) for (_, v), (_, bb) in zip(rows.iterrows(), b.iterrows())]
                ax.fill_between(rows["batch_size"], [min(r) for r in spans], [max(r) for r in spans],
                                color=line.get_color(), alpha=0.2)
        ax.axhline(1.0, color="gray", linewidth=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(df["batch_size"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"seq_len = {seq_len}")
        ax.set_xlabel("batch_size")
        ax.set_ylabel("decode tokens/s ratio")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot(csv: str, out: str) -> list[Path]:
    df = pd.read_csv(csv)
    missing = NEEDED - set(df.columns)
    if missing:
        raise ValueError(f"{csv}: lacks columns {sorted(missing)}; expected bench_baseline.py's CSV")
    df = df[df["status"] == "ok"]
    if df.empty:
        raise ValueError(f"{csv}: no measured points (status ok)")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model, rows in df.groupby("model_name"):
        gpu = rows["gpu"].iloc[0] if "gpu" in rows else ""
        path = folder / f"latency_vs_seq_len_{model}.png"
        panels(rows, "batch_size", "seq_len", "latency_ms", "end-to-end latency (ms)", f"{model} on {gpu}", path)
        written.append(path)
        path = folder / f"throughput_vs_batch_{model}.png"
        panels(rows, "seq_len", "batch_size", "throughput_tokens_per_sec", "decode tokens/s", f"{model} on {gpu}",
               path)
        written.append(path)
        path = folder / f"ratio_vs_batch_{model}.png"
        if ratio_panels(rows, f"{model} on {gpu}: over the baseline", path):
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="bench_baseline.py's output")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    args = parser.parse_args()
    try:
        written = plot(args.csv, args.out)
    except ValueError as e:
        parser.error(str(e))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
