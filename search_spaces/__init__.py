"""Declarative search spaces, one per tunable kernel, and the shape sets they are tuned on; a kernel named
`module:Class` is a plugin's space, loaded on first use (search_spaces/plugin.py)."""
from __future__ import annotations

from kernels.config import DTYPES
from search_spaces.attention import AttentionDecodeSpace, AttentionPrefillSpace
from search_spaces.base import Problem, SearchSpace
from search_spaces.linear import LinearSpace
from search_spaces.plugin import is_plugin, load_space
from search_spaces.rms_norm_linear import RmsNormLinearSpace

_SPACES: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> None:
    _SPACES[space.name] = space


def get_space(name: str) -> SearchSpace:
    if name not in _SPACES and is_plugin(name):
        register(load_space(name))
    if name not in _SPACES:
        raise ValueError(f"--kernel {name}: no such kernel; expected one of {', '.join(_SPACES)} or a plugin's "
                         "package.module:SpaceClass")
    return _SPACES[name]


register(RmsNormLinearSpace())
register(LinearSpace())
register(AttentionDecodeSpace())
register(AttentionPrefillSpace())

__all__ = ["DTYPES", "Problem", "SearchSpace", "get_space", "register"]
