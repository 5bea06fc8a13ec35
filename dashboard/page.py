"""One self-contained HTML page: plotly.js embedded once, with the first figure, so it opens offline.

The page stays small whatever the database holds: heatmaps and curves are aggregates, tables are
grouped, and only the studies with the most trials get their own figures.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone

import optuna
import pandas as pd
import plotly.graph_objects as go

from dashboard import figures
from dashboard.bench import BenchData, bench_sampler_curves
from dashboard.data import DashboardData, sampler_curves, shape_label, study_trials
from db.queries import split_summary

# Studies drawn in detail (those with the most trials); the table of all studies lists every one.
DETAILED_STUDIES = 12
REASONS_SHOWN = 20
_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 2em 3em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; } h3 { margin-top: 1.5em; }
.note { color: #555; background: #f6f6f6; padding: 0.5em 0.8em; border-left: 4px solid #bbb; }
table.t { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; display: block; overflow-x: auto; }
table.t th, table.t td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
table.t th { background: #f0f0f0; }
"""


class _Page:
    def __init__(self):
        self.parts: list[str] = []
        self.figures = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, level: int, text: str) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def table(self, frame: pd.DataFrame) -> None:
        self.add(frame.to_html(index=False, classes="t", border=0, na_rep="-", float_format=lambda v: f"{v:.4g}"))

    def figure(self, fig: go.Figure) -> None:
        # Only the first figure carries plotly.js; the others' scripts run after it, in document order.
        self.add(fig.to_html(full_html=False, include_plotlyjs=self.figures == 0, config={"displaylogo": False},
                             default_height=f"{fig.layout.height or 400}px"))
        self.figures += 1

    def render(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def build_page(data: DashboardData, bench: BenchData, storage: optuna.storages.BaseStorage | None) -> str:
    """The whole page; `storage` (Optuna's, of the same database) is only read when there are studies."""
    page = _Page()
    page.heading(1, "nano-vllm-coconut tuning dashboard")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page.add(f"<p>Database <code>{html.escape(data.source)}</code>, generated {stamp}.</p>")
    if data.empty:
        page.note("This database holds no tuning results yet: run `nvc tune --gpu ... --shapes ...` "
                  "first, then build this page again.")
    else:
        _summary(page, data)
    if not data.empty or not bench.empty:
        _across_shapes(page, data, bench)
    if not data.empty:
        _per_study(page, data, storage)
    return page.render("nano-vllm-coconut tuning dashboard")


def _summary(page: _Page, data: DashboardData) -> None:
    s = data.studies
    page.add(f"<p>{len(s)} studies, {int(s['trials'].sum())} timed trials ({int(s['failed'].sum())} failed), "
             f"{len(data.best)} finished with a re-timed winner.</p>")
    page.table(data.gpus)


def _shape_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(row=[shape_label(*r) for r in frame[["kernel", "dtype", "K", "N"]].itertuples(index=False)])


def _across_shapes(page: _Page, data: DashboardData, bench: BenchData) -> None:
    page.heading(2, "Across shapes")
    page.heading(3, "Tuned vs the baseline (F.rms_norm + F.linear), re-timed head to head")
    if data.best.empty:
        page.note("No finished study yet, so no re-timed winner to compare with the baseline.")
    for gpu, best in data.best[data.best["M"].notna()].groupby("gpu"):  # the GEMM kernels' (shape, M) grid
        page.figure(figures.speedup_heatmap(_shape_rows(best), "speedup", f"{gpu}: baseline latency / tuned latency"))

    compare = bench.compare.assign(row=bench.compare["shape"].astype(str) + " K=" + bench.compare["K"].astype(str)
                                   + " N=" + bench.compare["N"].astype(str))
    for label, column in (("the default config (kernels.config.default_config)", "default_us"),
                          ('torch.compile(mode="max-autotune-no-cudagraphs") of the baseline', "torch_compile_us")):
        page.heading(3, f"Tuned vs {label}")
        if compare.empty:
            page.note("Not measured: the database holds no timings of this. benchmarks/bench_search.py measures "
                      "it on a GPU; pass its compare.csv with --bench-csv.")
        for gpu, c in compare.groupby("gpu"):
            c = c.assign(ratio=c[column] / c["tuned_us"])
            page.figure(figures.speedup_heatmap(c, "ratio", f"{gpu}: {column.removesuffix('_us')} latency / tuned "
                                                "latency (bench_search.py; blank = not measured)"))

    page.heading(3, "Samplers: how fast the search finds its best")
    if not data.search.empty:
        page.figure(figures.sampler_curves(sampler_curves(data.search), "Studies in the database, by sampler",
                                           "% of the study's trials"))
    if not bench.curves.empty:
        page.figure(figures.sampler_curves(bench_sampler_curves(bench.curves),
                                           "bench_search.py: tpe and random replayed against the full grid",
                                           "trials"))
    if data.search.empty and bench.curves.empty:
        page.note("No search measurements yet.")
    _warm_vs_sampler(page, data)

    if data.best["gpu"].nunique() > 1:
        page.heading(3, "Across GPUs")
        page.figure(figures.gpu_comparison(data.best[data.best["M"].notna()]))

    page.heading(3, "Exported lookup tables (the newest of each GPU)")
    if data.exported.empty:
        page.note("None yet: `nvc export-table --gpu NAME` writes one.")
    else:
        page.table(data.exported)
    if not data.empty:
        _failures(page, data)
        page.heading(3, "All studies (most trials first)")
        page.table(data.studies)


def _warm_vs_sampler(page: _Page, data: DashboardData) -> None:
    page.heading(3, "Warm starts vs the sampler: where each study's best came from")
    if data.split.empty:
        page.note("No finished study yet.")
        return
    page.add(f"<p>{html.escape(split_summary(data.split))}.</p>")
    if data.split["gain"].notna().any():
        page.figure(figures.warm_vs_sampler(data.split))
    else:
        page.note("No study timed both a warm start and a trial of the sampler's own (the grid has no warm starts; "
                  "measurements from before schema 4 have no origin).")


def _first_line(text: str | None) -> str:
    return (text or "no reason recorded").strip().splitlines()[0][:200]


def _failures(page: _Page, data: DashboardData) -> None:
    page.heading(3, "Failed configs across studies (compile errors, out of resources, wrong results)")
    failed = data.search[~data.search["correct"].astype(bool)]
    if failed.empty:
        page.note("No config failed.")
        return
    reasons = (failed.assign(reason=failed["error"].map(_first_line)).groupby("reason")
               .agg(trials=("trial_number", "size"), studies=("study_name", "nunique"))
               .sort_values("trials", ascending=False).reset_index())
    if len(reasons) > REASONS_SHOWN:
        page.note(f"The {REASONS_SHOWN} most frequent of {len(reasons)} distinct reasons.")
    page.table(reasons.head(REASONS_SHOWN))


def _per_study(page: _Page, data: DashboardData, storage: optuna.storages.BaseStorage) -> None:
    page.heading(2, "Per study")
    shown = data.studies.head(DETAILED_STUDIES)
    if len(data.studies) > len(shown):
        page.note(f"The {len(shown)} studies with the most trials of {len(data.studies)}; "
                  f"the table above lists all of them.")
    loaded = [(s, *study_trials(storage, s.study_name)) for s in shown.itertuples(index=False)]
    timed = [(s.study_name, trials, [c for c in trials.columns if c not in ("number", "state", "value", "reason")])
             for s, _, trials in loaded if (trials["state"] == "COMPLETE").any()]
    if timed:
        page.heading(3, "Parallel coordinates of the timed configs (the menu picks the study)")
        page.figure(figures.parallel_coordinates(timed))
    for s, study, trials in loaded:
        done = trials[trials["state"] == "COMPLETE"]
        page.heading(3, s.study_name)
        tuned = f"{s.tuned_us:.2f} us, {s.speedup:.2f}x the baseline" if pd.notna(s.tuned_us) else "none yet"
        page.add(f"<p>GPU {html.escape(s.gpu)}, sampler {html.escape(s.sampler)}, {s.runs} run(s), latest "
                 f"{html.escape(s.status)}; {len(done)} timed, {int((trials['state'] == 'FAIL').sum())} failed, "
                 f"{int((trials['state'] == 'PRUNED').sum())} pruned before compiling; re-timed winner: "
                 f"{html.escape(tuned)}.</p>")
        if done.empty:
            page.note("No config was timed correctly, so there is no history or importance plot.")
        else:
            page.figure(figures.history(trials, "Optimization history"))
            if len(done) < 2:
                page.note("Parameter importance needs at least 2 timed trials; this study has 1.")
            else:
                page.figure(figures.importances(study, "Parameter importance (PED-ANOVA)"))
        _reasons(page, trials)


def _reasons(page: _Page, trials: pd.DataFrame) -> None:
    bad = trials[trials["state"].isin(["FAIL", "PRUNED"])]
    if bad.empty:
        return
    reasons = (bad.assign(reason=bad["reason"].map(_first_line)).groupby(["state", "reason"])
               .agg(trials=("number", "size"), first_trials=("number", lambda n: ", ".join(map(str, n.head(5)))))
               .sort_values("trials", ascending=False).reset_index())
    page.add(f"<p>Failed (FAIL) and invalid (PRUNED: infeasible, duplicate or interrupted) trials"
             f"{f', the {REASONS_SHOWN} most frequent reasons' if len(reasons) > REASONS_SHOWN else ''}:</p>")
    page.table(reasons.head(REASONS_SHOWN))
