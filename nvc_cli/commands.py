"""The click group of `nvc` (`python cli.py` from a checkout): tune kernels per GPU and shape, export lookup tables,
show results, write the dashboard. Needs the [tune] extra; `dashboard` also the [dashboard] extra.

    nvc tune --gpu h100 --shapes llama-7b
    nvc export-table --gpu h100 --out tables/h100.json
    nvc export-table --gpu h200 --merge          # add to tables/h200.json, keeping its other buckets
    nvc show
    nvc list-shapes
    nvc dashboard --out dashboard.html

What `tune` runs on is click's context object, a Hardware (autotune/hardware.py): CudaHardware unless the caller
passes another, as the tests do with `main(obj=FakeHardware(...))`.
"""
from __future__ import annotations

import importlib.util

import click

from autotune.hardware import CudaHardware
from nvc_cli.tables import export_table, show
from nvc_cli.tune import list_shapes, tune

DASHBOARD_EXTRA = "pip install 'nano-vllm-coconut[dashboard]'"
# Click >= 8.2 shows the help for a bare `nvc` through this usage error; it must keep doing so.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(e: click.UsageError) -> click.UsageError:
    """`e` as one line, `Error: ... (see 'nvc tune --help')`: click prints a usage error after the command's usage
    and a hint, several lines in all, while every other refusal of the command line is one line."""
    if e.ctx is None or isinstance(e, _SHOWS_HELP):
        return e
    return click.UsageError(f"{e.format_message()} (see '{e.ctx.command_path} --help')")


class _Commands(click.Group):
    """The group, with `dashboard` imported only when it is looked up: the other commands need only [tune]; and
    with its usage errors and its commands' in one line."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "dashboard"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name != "dashboard":
            return super().get_command(ctx, name)
        if importlib.util.find_spec("plotly") is None:  # the one package [dashboard] adds to [tune]
            return _needs_dashboard_extra
        from dashboard.command import dashboard_command
        return dashboard_command


@click.command("dashboard", help=f"(needs the [dashboard] extra: {DASHBOARD_EXTRA})", add_help_option=False,
               context_settings=dict(ignore_unknown_options=True, allow_extra_args=True))
def _needs_dashboard_extra() -> None:
    raise click.ClickException(f"dashboard needs the [dashboard] extra (plotly is not installed): {DASHBOARD_EXTRA}")


@click.group(cls=_Commands)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Autotune the fused RMSNorm+Linear kernel (and its norm-free GEMM, --kernel linear), or a search space of your
    own (--kernel package.module:SpaceClass, docs/PLUGINS.md), per GPU and shape."""
    if ctx.obj is None:
        ctx.obj = CudaHardware()


main.add_command(tune)
main.add_command(export_table)
main.add_command(show)
main.add_command(list_shapes)
