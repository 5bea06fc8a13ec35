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
        raise ValueError(f"kernel {name!r}: no search space registered; known: {', '.join(_SPACES)}")
    return _SPACES[name]


def registered() -> list[str]:
    """The names of this project's kernels (a plugin's `module:Class` registers as it is first asked for)."""
    return list(_SPACES)


register(RmsNormLinearSpace())
register(LinearSpace())
register(AttentionDecodeSpace())
register(AttentionPrefillSpace())

__all__ = ["DTYPES", "Problem", "SearchSpace", "get_space", "register", "registered"]
