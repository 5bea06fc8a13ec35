"""Search spaces of other modules: `nvc tune --kernel package.module:SpaceClass` (docs/PLUGINS.md).

A plugin kernel is named by the `module:Class` it is loaded from, in study names, the database and the lookup
table alike, so that whoever reads a result can load its space again (the compile pool's worker processes do). A
plugin that cannot be loaded, or whose problems or axes are not what docs/PLUGINS.md says, is one ValueError naming
it, raised before anything is stored.
"""
from __future__ import annotations

import importlib
import json
import importlib.util
import re
from kernels.config import DTYPES
from search_spaces.base import SearchSpace, TunedProblem
from tuning_table.format import LookupTable

# What the database's columns hold (db/models.py: nvc_kernels.name, nvc_shapes.form and dims).
MAX_NAME, MAX_FORM, MAX_DIMS = 64, 64, 512
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_plugin(kernel: str) -> bool:
    return ":" in kernel


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def load_space(spec: str) -> SearchSpace:
    """An instance of the SearchSpace subclass `spec` ("package.module:Class") names, its `name` set to `spec`."""
    where = f"--kernel {spec}"
    if not _SPEC.fullmatch(spec):
        raise ValueError(f"{where}: expected a registered kernel or package.module:SpaceClass")
    if len(spec) > MAX_NAME:
        raise ValueError(f"{where}: {len(spec)} characters; the database keeps kernel names of up to {MAX_NAME} (import "
                         f"the class from a shorter module path)")
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{where}: cannot import {module_name} ({_first_line(e)}); is it on the Python path?") \
            from None
    except Exception as e:  # noqa: BLE001 - whatever the module raises, the user's one line names it
        raise ValueError(f"{where}: importing {module_name} raised {_first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: module {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, SearchSpace)):
        raise ValueError(f"{where}: {attr} is not a subclass of search_spaces.base.SearchSpace")
    try:
        space = obj()
    except Exception as e:  # noqa: BLE001 - an abstract method left out says which here
        raise ValueError(f"{where}: {attr}() raised {_first_line(e)}") from None
    dims = getattr(space, "bucket_dims", None)
    if not isinstance(dims, tuple) or not dims or not all(isinstance(d, str) and d for d in dims):
        raise ValueError(f"{where}: bucket_dims {dims!r}: expected a non-empty tuple of dim names")
    space.name = spec
    return space


def checked_problems(space: SearchSpace, shapes: str, dtype: str) -> list[TunedProblem]:
    """`space.problems(shapes, dtype)`, each problem and its axes checked: what the tuner, the database and the table
    rely on, so that a broken plugin fails here in one line rather than mid-tune."""
    where = f"--kernel {space.name}"
    try:
        problems = space.problems(shapes, dtype)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where}: problems({shapes!r}) raised {_first_line(e)}") from None
    if not isinstance(problems, list) or not problems:
        raise ValueError(f"{where}: problems({shapes!r}) gave {problems!r}; expected a non-empty list")
    for p in problems:
        try:
            dims, p_dtype, form = p.dims, p.dtype, p.form
            hash(p)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{where}: problem {p!r}: {_first_line(e)} (expected dims, dtype and form, and "
                             f"hashable)") from None
        if not isinstance(dims, dict) or not all(isinstance(k, str) and type(v) is int and v >= 1
                                                 for k, v in dims.items()):
            raise ValueError(f"{where}: problem {p!r}: dims {dims!r}: expected {{name: int >= 1}}")
        missing = [d for d in space.bucket_dims if d not in dims]
        if missing:
            raise ValueError(f"{where}: problem {p!r}: dims {dims} lack the bucket dim(s) {', '.join(missing)}")
        if p_dtype not in DTYPES or not isinstance(form, str) or "|" in form or len(form) > MAX_FORM:
            raise ValueError(f"{where}: problem {p!r}: dtype {p_dtype!r} (expected one of {', '.join(DTYPES)}) "
                             f"and form {form!r} (expected a string without '|', up to {MAX_FORM} characters)")
        if len(json.dumps(dims)) > MAX_DIMS:
            raise ValueError(f"{where}: problem {p!r}: dims longer than the database keeps ({MAX_DIMS} characters)")
        try:
            axes = space.axes(p)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{where}: axes({p!r}) raised {_first_line(e)}") from None
        if not isinstance(axes, dict) or not axes or not all(
                isinstance(k, str) and isinstance(v, list) and v and all(type(x) is int for x in v)
                for k, v in axes.items()):
            raise ValueError(f"{where}: axes({p!r}) gave {axes!r}; expected {{name: non-empty list of ints}}")
    return problems


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def check_table(table: LookupTable, source: str = "table") -> None:
    """Check each plugin kernel's configs against its space's axes where its module can be imported (parse_table
    checked the rest); a kernel whose module is not importable here stays checked structurally only."""
    for kernel in table.bucket_dims:
        if not is_plugin(kernel) or not _importable(kernel.partition(":")[0]):
            continue
        space = load_space(kernel)
        for (name, fixed, dtype, form), buckets in table.generic.items():
            if name != kernel:
                continue
            for b in buckets:
                dims = {**dict(fixed), **b.bucket}
                try:
                    axes = list(space.axes(space.make_problem(dims, dtype, form)))
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"{source}: kernels.{kernel} {dims} {dtype}: its space cannot read the "
                                     f"entry ({_first_line(e)})") from None
                if sorted(b.config) != sorted(axes):
                    raise ValueError(f"{source}: kernels.{kernel} {dims} {dtype}: config fields "
                                     f"{', '.join(sorted(b.config))}; the space's axes are {', '.join(sorted(axes))}")
