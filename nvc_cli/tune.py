"""`nvc tune` (find the fastest correct config of every shape and M bucket) and `nvc list-shapes` (its presets)."""
from __future__ import annotations

import math
import sys
import time

import click

from autotune.hardware import Hardware
from autotune.samplers import SAMPLERS
from autotune.tuner import TuneSettings
from autotune.workers import make_jobs, run_workers
from db.storage import StorageError, open_engine, optuna_storage, storage_errors
from kernels.config import DTYPES
from nvc_cli.options import one_line_error, storage_option
from autotune.workers import Study
from search_spaces import Problem, get_space, registered
from search_spaces.attention import (DEFAULT_BATCH_BUCKETS, DEFAULT_CONTEXT_BUCKETS, DEFAULT_PREFILL_CONTEXT_BUCKETS,
                                     DEFAULT_TOKEN_BUCKETS, MAX_KV_TOKENS)
from search_spaces.plugin import checked_problems, is_plugin
from search_spaces.shapes import (PRESETS, SITE_KERNELS, is_gemm_shape, parse_buckets, parse_m_buckets, parse_shapes,
                                  sites_from_config)
from tuning_table import check_gpu_arg

ATTENTION_KERNELS = ("attention_decode", "attention_prefill")
# What the runtime runs for a model, and so what `tune --shapes MODEL` tunes without --kernel.
MODEL_KERNELS = (*SITE_KERNELS, *ATTENTION_KERNELS)


def _buckets(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def model_studies(kernel: str | None, shapes: str, dtype: str, tp: int, m_spec: str | None,
                  context_spec: str | None) -> list[Study]:
    """The (kernel, problem) studies of `tune`: of `kernel`, or of every kernel of MODEL_KERNELS for the models of
    `shapes` (an NxK item there is a GEMM shape of the fused kernel only)."""
    items = [s.strip() for s in shapes.split(",")]
    models = ",".join(i for i in items if i and not is_gemm_shape(i))
    kernels = [kernel] if kernel is not None else [k for k in MODEL_KERNELS if models or k == "rms_norm_linear"]
    if context_spec is not None and not set(kernels) & set(ATTENTION_KERNELS):
        raise ValueError(f"--context: only for the attention kernels ({', '.join(ATTENTION_KERNELS)})")
    studies: list[Study] = []
    for k in kernels:
        if k in SITE_KERNELS:
            sites = parse_shapes(shapes if kernel is not None or k == "rms_norm_linear" else models, k, tp=tp)
            studies += [(k, Problem(m, s.K, s.N, dtype, s.epilogue)) for s in sites for m in parse_m_buckets(m_spec, k)]
        elif k in ATTENTION_KERNELS:
            rows = None if m_spec is None else parse_buckets(m_spec, (), "--m")
            contexts = None if context_spec is None else parse_buckets(context_spec, (), "--context")
            studies += [(k, p) for p in get_space(k).problems(models if kernel is None else shapes, dtype, tp, rows,
                                                              contexts)]
        else:
            raise ValueError(f"--kernel {k}: no problems known for it; expected one of {', '.join(MODEL_KERNELS)} or "
                             "package.module:SpaceClass")
    return studies


def _seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    # Parsed here rather than by click's float type, whose refusal is a usage message of several lines.
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise click.ClickException(f"--{param.name} {value}: expected a positive number of seconds")
    return seconds


@click.command()
@click.option("--gpu", "gpu_name", required=True, help="normalized GPU name; must match the device (h100, a100, ...)")
@click.option("--shapes", required=True, help="preset, config.json path or NxK, comma-separated; for a plugin's "
              "--kernel, what its space reads (docs/PLUGINS.md)")
@click.option("--m", "m_spec", default=None,
              help="the rows of a step to tune at, comma-separated: GEMM M, attention_decode's batch, "
                   "attention_prefill's new tokens (decode leaves out batch x context > "
                   f"{MAX_KV_TOKENS}) [default: rms_norm_linear 1,2,4,...,16384; linear 1,2,...,64; "
                   f"attention_decode {_buckets(DEFAULT_BATCH_BUCKETS)}; attention_prefill "
                   f"{_buckets(DEFAULT_TOKEN_BUCKETS)}]")
@click.option("--context", "context_spec", default=None,
              help="the attention kernels' context lengths (keys of a step's longest sequence) to tune at, "
                   f"comma-separated [default: attention_decode {_buckets(DEFAULT_CONTEXT_BUCKETS)}; attention_prefill {_buckets(DEFAULT_PREFILL_CONTEXT_BUCKETS)}]")
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(sorted(DTYPES)))
@click.option("--kernel", default=None,
              help="rms_norm_linear (the fused sites), linear (the plain o_proj and down_proj GEMMs), "
                   "attention_decode, attention_prefill, or a plugin's search space as package.module:SpaceClass "
                   "(docs/PLUGINS.md) [default: every kernel the runtime runs for the --shapes models, those four; an "
                   "NxK item of --shapes is a shape of rms_norm_linear only]")
@click.option("--trials", default=TuneSettings.trials, show_default=True, type=int,
              help="finished trials per study (a rerun resumes up to this)")
@click.option("--patience", default=TuneSettings.patience, show_default=True, type=int,
              help="end a study after this many trials in a row without a gain beyond the noise (0: never; "
                   "the grid sampler never ends early)")
@click.option("--timeout", default=None, callback=_seconds, metavar="SECONDS", help="seconds per study [default: none]")
@click.option("--budget", default=None, callback=_seconds, metavar="SECONDS",
              help="seconds for the whole run, most valuable studies first (decode sizes, the largest weights) "
                   "[default: none]")
@click.option("--sampler", default="tpe", show_default=True, type=click.Choice(SAMPLERS))
@storage_option
@click.option("--workers", default=1, show_default=True, type=int, help="one process per visible GPU")
@click.option("--tp", default=1, show_default=True, type=click.IntRange(min=1),
              help="tensor-parallel ranks: tune each rank's shard of a preset's or config's sites")
@click.pass_obj
def tune(hardware: Hardware, gpu_name: str, shapes: str, m_spec: str | None, context_spec: str | None, dtype: str,
         kernel: str | None, trials: int, patience: int, timeout: float | None, budget: float | None, sampler: str,
         storage: str, workers: int, tp: int) -> None:
    """Find the fastest correct config of every (kernel, shape, bucket) on this GPU: every kernel the runtime runs
    for the --shapes models, unless --kernel names one."""
    try:
        gpu_name = check_gpu_arg(gpu_name)
        if kernel is not None and is_plugin(kernel):
            space = get_space(kernel)
            for name, value, unset in (("--m", m_spec, None), ("--context", context_spec, None), ("--tp", tp, 1)):
                if value != unset:
                    raise ValueError(f"{name}: only for the project's kernels; a plugin's --shapes names its problems")
            studies = [(kernel, p) for p in checked_problems(space, shapes, dtype)]
        else:
            if kernel is not None and kernel not in registered():
                raise ValueError(f"--kernel {kernel}: no such kernel; expected one of {', '.join(registered())} or a "
                                 "plugin's package.module:SpaceClass")
            studies = model_studies(kernel, shapes, dtype, tp, m_spec, context_spec)
        counts = {k: sum(k == s for s, _ in studies) for k in dict.fromkeys(s for s, _ in studies)}
        what = f"{len(studies)} studies " + (f"of {kernel}" if kernel is not None else
                                             f"({', '.join(f'{k} {n}' for k, n in counts.items())})")
        settings = TuneSettings(sampler=sampler, trials=trials, timeout_s=timeout, patience=patience)
        if workers < 1:
            raise ValueError(f"--workers {workers}: expected >= 1")
        visible = hardware.count()
        if visible == 0:
            hardware.detect(0)  # raises the one-line "no CUDA device" error
        if workers > visible:
            raise ValueError(f"--workers {workers}: only {visible} GPU(s) visible")
        for i in range(workers):
            info = hardware.detect(i)
            if info.short_name != gpu_name:
                raise ValueError(f"--gpu {gpu_name}: device {i} is {info.name!r} ({info.short_name})")
        open_engine(storage)
        optuna_storage(storage)
    except (ValueError, RuntimeError, StorageError) as e:
        raise one_line_error(e) from None
    within = f" within {budget:g} s" if budget is not None else ""
    click.echo(f"tuning {what} on {workers} x {gpu_name}, {trials} trials each{within}, into {storage}", err=True)
    deadline = time.time() + budget if budget is not None else None
    try:
        with storage_errors(storage):
            run_workers(make_jobs(storage, studies, settings, workers, hardware, deadline))
    except KeyboardInterrupt:
        click.echo("interrupted: finished trials are stored; rerun the same command to resume", err=True)
        sys.exit(130)
    except StorageError as e:
        # The database failed mid-tune (its disk filled, say): every finished trial was committed on its own, and
        # SQLite rolled back the write that failed.
        raise click.ClickException(f"tuning stopped: {one_line_error(e).message} (the finished trials are stored; "
                                   f"the same command resumes the tune)") from None
    except RuntimeError as e:
        raise one_line_error(e) from None
    prog = click.get_current_context().find_root().info_name  # nvc, or cli.py from a checkout
    click.echo(f"done; see `{prog} show` and `{prog} export-table`", err=True)


@click.command("list-shapes")
def list_shapes() -> None:
    """Print the shape presets: NxK of each RMSNorm+Linear site, and of each plain linear (--kernel linear)."""
    for name, cfg in PRESETS.items():
        sites = {k: ", ".join(f"{s.name} {s.N}x{s.K}" + (f" ({s.epilogue})" if s.epilogue.paired else "")
                              for s in sites_from_config(cfg, name, k)) for k in SITE_KERNELS}
        click.echo(f"{name:12s} {sites['rms_norm_linear']}; linear: {sites['linear']}")
