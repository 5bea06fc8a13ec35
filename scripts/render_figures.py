"""The README's figures section, rendered from benchmarks/reproduce.py's CSVs (never typed by hand).

Reads every <results>/<gpu>/run-<N>/<part>.csv (benchmarks/figures.py's format) and replaces what lies between the
README's `<!-- figures:begin -->` and `<!-- figures:end -->` lines. A figure is the median of its runs' medians;
the brackets hold the lowest and highest sample of all runs, and how many runs and samples a run there were.
A grid cell is the lowest-highest of its points' medians over the prompt lengths and the runs.

    python3 scripts/render_figures.py                      # benchmarks/bench_results/reproduce -> README.md
    python3 scripts/render_figures.py --results DIR --print  # only print the section
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "bench_results" / "reproduce"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
KEYS = ["figure", "engine", "model", "variant", "batch_size", "seq_len", "metric"]
OURS, HF = "nano-vllm-coconut", "hf-transformers"
DTYPES = {"batch_size": "Int64", "seq_len": "Int64", **{c: str for c in (
    "run", "commit", "tuning_table", "table_sha256", "gpu", "driver", "torch", "triton", "transformers", "cuda")}}
VARIANT_NAMES = {"tuned": "tuned", "compiled": "torch.compile"}


def load(results: Path) -> dict[str, pd.DataFrame]:
    """{gpu folder: every figure row of its runs}; the part CSVs only, not a grid's _points.csv."""
    found = {}
    for gpu in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        files = sorted(f for f in gpu.glob("run-*/*.csv") if not f.stem.endswith("_points"))
        if files:
            found[gpu.name] = pd.concat([pd.read_csv(f, dtype=DTYPES) for f in files], ignore_index=True)
    if not found:
        raise ValueError(f"{results}: no figure CSVs under <gpu>/run-<N>/ (benchmarks/reproduce.py writes them)")
    return found


class Figures:
    """One GPU's rows: a quantity over the runs by its keys."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows[rows["n"] > 0]
        self.failed = rows[rows["metric"].str.startswith("failed: ")]

    def select(self, **keys) -> pd.DataFrame:
        rows = self.rows
        for k, v in keys.items():
            rows = rows[rows[k] == v]
        return rows

    def get(self, **keys) -> tuple[float, float, float, str] | None:
        """(median of the run medians, lowest sample, highest sample, 'R runs x N') or None when not measured."""
        rows = self.select(**keys)
        if rows.empty:
            return None
        counts = sorted(set(rows["n"]))
        per_run = "/".join(str(c) for c in counts)
        return (statistics.median(rows["median"]), rows["min"].min(), rows["max"].max(),
                f"{rows['run'].nunique()} run{'s' if rows['run'].nunique() > 1 else ''} × {per_run}")


def number(v: float, digits: int = 2) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def quoted(q, unit: str = "", digits: int = 2) -> str:
    value, lo, hi, counts = q
    return f"{number(value, digits)}{unit} ({number(lo, digits)}–{number(hi, digits)}{unit}; {counts})"


def runs_line(rows: pd.DataFrame) -> str:
    runs = rows.drop_duplicates("run").sort_values("run")
    parts = [f"{r.run}: commit {str(r.commit)[:12]}, driver {r.driver}, torch {r.torch}, triton {r.triton}, "
             f"transformers {r.transformers}, table `{r.tuning_table}` sha256 {str(r.table_sha256)[:12]}"
             for r in runs.itertuples()]
    return "; ".join(parts)


def decode_lines(f: Figures) -> list[str]:
    ours = f.get(figure="decode", engine=OURS, metric="ms_per_token")
    if ours is None:
        return []
    model, prompt = f.select(figure="decode", engine=OURS).iloc[0][["model", "seq_len"]]
    copy = f.get(figure="decode", metric="copy_bandwidth")
    datasheet = f.get(figure="decode", metric="datasheet_bandwidth")

    def floors(engine: str) -> str:
        text = []
        measured = f.get(figure="decode", engine=engine, metric="pct_of_floor_measured")
        if measured:
            text.append(f"{quoted(measured, '%', 1)} of the weight-read floor at the measured copy bandwidth")
        sheet = f.get(figure="decode", engine=engine, metric="pct_of_floor_datasheet")
        if sheet:
            text.append(f"{quoted(sheet, '%', 1)} at the datasheet's {number(datasheet[0])} GB/s")
        return ", ".join(text)

    line = (f"- Batch-1 {model} decode ({prompt}-token prompt): **{quoted(ours, ' ms')}** a token, {floors(OURS)} "
            f"(copy bandwidth {quoted(copy, ' GB/s')}).")
    theirs = f.get(figure="decode", engine=HF, metric="ms_per_token")
    if theirs:
        line += (f" Hugging Face transformers, generate() with a static KV cache and its decoding step compiled: "
                 f"{quoted(theirs, ' ms')} a token, {floors(HF)}.")
    return [line]


def throughput_lines(f: Figures) -> list[str]:
    rows = f.select(figure="throughput", engine=OURS)
    if rows.empty:
        return []
    model = rows.iloc[0]["model"]
    whole_n, peer_n = int(rows["batch_size"].max()), int(rows["batch_size"].min())
    whole = f.get(figure="throughput", engine=OURS, batch_size=whole_n)
    line = (f"- nano-vLLM's throughput workload ({model} shape, {whole_n} requests, temperature 0.6): "
            f"**{quoted(whole, ' tokens/s', 0)}**.")
    theirs = f.get(figure="throughput", engine=HF, batch_size=peer_n)
    ratio = f.get(figure="throughput", metric="throughput_ratio", batch_size=peer_n)
    if theirs and ratio:
        ours = f.get(figure="throughput", engine=OURS, batch_size=peer_n)
        line += (f" Its first {peer_n} requests: ours {quoted(ours, ' tokens/s', 0)}, Hugging Face's continuous "
                 f"batching (warmed up, the same sampling) {quoted(theirs, ' tokens/s', 0)}: **{quoted(ratio, 'x', 1)}**.")
    return [line]


def grid_lines(f: Figures) -> list[str]:
    ratios = f.select(metric="ratio_to_baseline")
    if ratios.empty:
        return []
    ratios = ratios[ratios["figure"].str.startswith("grid-")]
    columns = [(m, v) for m in ratios["model"].drop_duplicates() for v in VARIANT_NAMES
               if not ratios[(ratios["model"] == m) & (ratios["variant"] == v)].empty]
    seqs = ", ".join(str(s) for s in sorted(ratios["seq_len"].unique()))
    lengths = ", ".join(str(int(v)) for v in sorted(f.select(metric="output_tokens")["median"].unique()))
    lines = [f"- Decode tokens/s over the same engine's separate RMSNorm + cuBLAS path, {lengths} output tokens, per "
             f"cell the lowest–highest point median over prompts of {seqs} tokens and the runs (the variants "
             "alternating within each repeat; torch.compile: the separate path compiled, CUDA graphs captured from "
             "it):", "",
             "  | batch | " + " | ".join(f"{m} {VARIANT_NAMES[v]}" for m, v in columns) + " |",
             "  |---|" + "---|" * len(columns)]
    for batch in sorted(ratios["batch_size"].unique()):
        cells = []
        for m, v in columns:
            cell = ratios[(ratios["model"] == m) & (ratios["variant"] == v) & (ratios["batch_size"] == batch)]
            cells.append(f"{cell['median'].min():.2f}–{cell['median'].max():.2f}x" if not cell.empty else "–")
        lines.append(f"  | {batch} | " + " | ".join(cells) + " |")
    for r in f.failed.drop_duplicates(["model", "variant", "metric"]).itertuples():
        lines += ["", f"  {r.model} {VARIANT_NAMES.get(r.variant, r.variant)} did not run ({r.run}): {r.metric[8:]}"]
    tuned = ratios[ratios["variant"] == "tuned"]
    if not tuned.empty:
        low = tuned.loc[tuned["median"].idxmin()]
        lines += ["", f"  Tuned: lowest point median {low['median']:.3f}x ({low['model']}, B = {low['batch_size']}, "
                      f"S = {low['seq_len']}, {low['run']}); lowest single repeat {tuned['min'].min():.3f}x, over "
                      f"{len(tuned)} point medians."]
    return lines


def render(results: Path) -> str:
    """The section between the markers, every GPU under `results` in turn."""
    out = [f"Measured by `python3 benchmarks/reproduce.py` into `{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}/`"
           " (rendered by `scripts/render_figures.py`). Each figure: the median of the runs' medians, in brackets the "
           "lowest and highest sample of all runs, and runs × samples a run."]
    for gpu, rows in load(results).items():
        f = Figures(rows)
        out += ["", f"**{rows['gpu'].iloc[0]}** ({runs_line(rows)})", ""]
        out += decode_lines(f) + throughput_lines(f) + grid_lines(f)
    return "\n".join(out)


def replace_section(readme: Path, section: str) -> None:
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme}: expected one '{BEGIN}' line before one '{END}' line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def render_readme(results: Path, readme: Path | None) -> str:
    """The section of `results`, written into `readme` when given; returns it."""
    section = render(results)
    if readme is not None:
        replace_section(readme, section)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--print", action="store_true", help="print the section instead of writing the README")
    args = parser.parse_args()
    try:
        section = render_readme(args.results.resolve(), None if args.print else args.readme)
    except ValueError as e:
        parser.error(str(e))
    print(section if args.print else f"wrote the figures section of {args.readme}")


if __name__ == "__main__":
    main()
