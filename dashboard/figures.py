"""The dashboard's plotly figures. Each draws a bounded number of points, whatever the database holds."""
from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Per-study figures draw at most this many trials; every improvement of the best is always drawn.
HISTORY_POINTS = 300
PARCOORDS_LINES = 400
# The warm-start split draws at most this many studies (an even sample of them ordered by gain, both ends kept).
SPLIT_BARS = 300
# How each origin of a study's best (db.models.WARM_START, SAMPLER, GRID; None before schema 4) is named and drawn.
ORIGIN_STYLE = {"warm_start": ("warm start", "#1f77b4"), "sampler": ("sampler", "#d62728"),
                "grid": ("grid point", "#2ca02c"), None: ("unknown", "#9aa9bd")}


def _thin(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most `cap` rows, evenly spaced in order, so the picture keeps its shape."""
    if len(frame) <= cap:
        return frame
    return frame.iloc[np.unique(np.linspace(0, len(frame) - 1, cap).round().astype(int))]


def speedup_heatmap(frame: pd.DataFrame, value: str, title: str) -> go.Figure:
    """Rows: shapes (`row`), columns: M buckets; cells: `value` (a ratio, 1 = no gain). Missing cells stay blank."""
    pivot = frame.pivot_table(index="row", columns="M", values=value, aggfunc="first", dropna=False).sort_index()
    pivot = pivot[sorted(pivot.columns)]
    z = pivot.to_numpy(dtype=float)
    text = [[f"{v:.2f}x" if np.isfinite(v) else "" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(m) for m in pivot.columns], y=list(pivot.index), text=text, texttemplate="%{text}",
        colorscale="RdBu", zmid=1.0, colorbar=dict(title="x"),
        hovertemplate="%{y}<br>M=%{x}: %{z:.3f}x<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title="M bucket", type="category"),
                      height=180 + 32 * len(pivot.index), margin=dict(l=10, r=10, t=50, b=40))
    return fig


def sampler_curves(curves: pd.DataFrame, title: str, steps: str) -> go.Figure:
    """Median best-so-far ratio per sampler (data.sampler_curves or bench.bench_sampler_curves) against `steps`."""
    fig = go.Figure()
    for sampler, c in curves.groupby("sampler"):
        fig.add_trace(go.Scatter(x=c["step"], y=c["ratio"], mode="lines", name=sampler, customdata=c["studies"],
                                 hovertemplate=f"{steps} %{{x:.0f}}: %{{y:.3f}} (median of %{{customdata}})"))
    fig.update_layout(title=title, xaxis_title=steps, yaxis_title="best so far / best found (1 = found it)",
                      height=380, margin=dict(l=10, r=10, t=50, b=40))
    return fig


def warm_vs_sampler(split: pd.DataFrame) -> go.Figure:
    """Per study that timed both (db.queries.search_split), the sampler's gain over its best warm start in percent
    (above 0: the sampler found a faster config), coloured by where the study's re-timed best came from."""
    both = split[split["gain"].notna()].assign(pct=lambda f: 100 * f["gain"])
    both = both.sort_values("pct", ascending=False, kind="stable")
    shown = _thin(both, SPLIT_BARS)
    fig = go.Figure()
    for origin, (name, colour) in ORIGIN_STYLE.items():
        mine = shown[shown["best_from"].isna()] if origin is None else shown[shown["best_from"] == origin]
        if mine.empty:
            continue
        fig.add_trace(go.Bar(
            x=mine["study_name"], y=mine["pct"], name=f"best: {name}", marker_color=colour,
            customdata=np.stack([mine["warm_us"], mine["sampler_us"], mine["best_step"].astype(float),
                                 mine["trials"]], axis=-1),
            hovertemplate="%{x}<br>sampler %{y:+.2f}%: best warm start %{customdata[0]:.2f} us, best sampler "
                          "trial %{customdata[1]:.2f} us<br>best reached after %{customdata[2]:.0f} of "
                          "%{customdata[3]:.0f} trials<extra></extra>"))
    drawn = f" ({len(shown)} of {len(both)} studies drawn)" if len(shown) < len(both) else ""
    fig.update_layout(title=f"The sampler's best trial against the best warm start{drawn}",
                      xaxis=dict(title="study", type="category", categoryorder="array",
                                 categoryarray=list(shown["study_name"]), showticklabels=len(shown) <= 40),
                      yaxis_title="gain of the sampler (%; above 0: faster than every warm start)", height=420,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def gpu_comparison(best: pd.DataFrame) -> go.Figure:
    """The re-timed winner of every (shape, M) on each GPU: speedup over the baseline and latency."""
    best = best.sort_values(["kernel", "dtype", "K", "N", "M"])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("speedup over the baseline", "tuned latency (us)"))
    palette = px.colors.qualitative.Plotly
    for i, (gpu, b) in enumerate(best.groupby("gpu")):
        x = [f"{r.dtype} K={r.K} N={r.N} M={r.M}" for r in b.itertuples()]
        style = dict(name=gpu, legendgroup=gpu, offsetgroup=gpu, marker_color=palette[i % len(palette)])
        fig.add_trace(go.Bar(x=x, y=b["speedup"], **style), row=1, col=1)
        fig.add_trace(go.Bar(x=x, y=b["median_us"], showlegend=False, **style), row=2, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_layout(title="GPUs compared", barmode="group", height=560, margin=dict(l=10, r=10, t=60, b=40))
    return fig


def history(trials: pd.DataFrame, title: str) -> go.Figure:
    """Timed trials (a thinned sample) and the best-so-far staircase through every improvement."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    best = done["value"].cummin()
    steps = done[best < best.shift(fill_value=np.inf)]
    shown = _thin(done, HISTORY_POINTS)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=shown["number"], y=shown["value"], mode="markers", name="timed trial",
                             marker=dict(size=5, color="#9aa9bd"), hovertemplate="trial %{x}: %{y:.2f} us"))
    stair_x = [*steps["number"], done["number"].iloc[-1]]
    stair_y = [*steps["value"], steps["value"].iloc[-1]]
    fig.add_trace(go.Scatter(x=stair_x, y=stair_y, mode="lines+markers", line_shape="hv", name="best so far",
                             line=dict(color="#d62728"), hovertemplate="trial %{x}: best %{y:.2f} us"))
    if len(shown) < len(done):
        title += f" ({len(shown)} of {len(done)} timed trials drawn)"
    fig.update_layout(title=title, xaxis_title="trial", yaxis_title="median latency (us)", height=360,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def importances(study: optuna.Study, title: str) -> go.Figure:
    """Optuna's parameter importances (PED-ANOVA by default in Optuna 5: no scikit-learn needed).
    Drawn here rather than by optuna.visualization.plot_param_importances, which copies every trial
    once per parameter for its hover text: seconds per study at thousands of trials."""
    imp = optuna.importance.get_param_importances(study)
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h", marker_color="#1f77b4",
                           texttemplate="%{x:.2f}", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="importance for the latency (sums to 1)", height=360,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def _parcoords_trace(trials: pd.DataFrame, params: list[str]) -> tuple[go.Parcoords, str]:
    """One line per timed config (the fastest quarter of the cap, then an even sample of the rest)."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("value")
    keep = PARCOORDS_LINES // 4
    shown = pd.concat([done.iloc[:keep], _thin(done.iloc[keep:], PARCOORDS_LINES - keep)])
    dims = []
    for p in params:
        values = sorted(shown[p].dropna().unique())
        span = [values[0], values[-1]] if len(values) > 1 else [values[0] - 1, values[0] + 1]
        dims.append(dict(label=p, values=shown[p], tickvals=values, range=span))
    dims.append(dict(label="latency (us)", values=shown["value"]))
    trace = go.Parcoords(line=dict(color=shown["value"], colorscale="Viridis_r", showscale=True,
                                   colorbar=dict(title="us")), dimensions=dims)
    drawn = f" ({len(shown)} of {len(done)} timed configs drawn)" if len(shown) < len(done) else ""
    return trace, drawn


def parallel_coordinates(studies: list[tuple[str, pd.DataFrame, list[str]]]) -> go.Figure:
    """The timed configs of several studies, one at a time (a menu picks the study): one figure, so one WebGL
    context, where a figure per study would pass the browser's limit of live contexts and lose the oldest."""
    fig = go.Figure()
    titles = []
    for name, trials, params in studies:
        trace, drawn = _parcoords_trace(trials, params)
        fig.add_trace(trace.update(visible=not titles))
        titles.append(f"Timed configs{drawn}")
    buttons = [dict(label=name, method="update",
                    args=[{"visible": [j == i for j in range(len(studies))]}, {"title.text": titles[i]}])
               for i, (name, _, _) in enumerate(studies)]
    fig.update_layout(title=titles[0], height=480, margin=dict(l=60, r=40, t=130, b=30),
                      updatemenus=[dict(buttons=buttons, x=1, xanchor="right", y=1.3, yanchor="top")])
    return fig
