"""What a site runs after its product: the one value type for an epilogue, from the CLI's sites to the kernel.

- plain: the product itself;
- gated: the MLP's stacked [gate; up] site, silu(gate) * up (kernels/paired.py's GATED);
- rotary: the attention's stacked [q; k; v] site of `head_dim`-wide heads, `kv_heads` of them for k and for v:
  q and k rotated, k and v written to the KV cache (ROTARY).

`form` is how study names, the database and lookup tables spell it ("", "gated", "rotary=<head_dim>/<kv_heads>");
`Epilogue.parse` reads it back. `launched` is the one mapping of a config tuned for the stacked product onto the
kernel that applies the epilogue: half the BLOCK_N, so a program streams the same weight rows and the grid keeps
its size; None where that kernel cannot apply it (the site then runs the plain kernel and the separate one).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from kernels.config import Config

KINDS = ("plain", "gated", "rotary")
FORM_PATTERN = re.compile(r"(gated|rotary=([1-9][0-9]*)/([1-9][0-9]*))?")
_MIN_BLOCK = 16  # tl.dot's smallest tile dimension
# At 16 columns a rotary program's two dots and its rotation no longer pay: llama-7b's M = 16 config (BLOCK_N = 32,
# halved to 16) took batch-16 decode from 1.078x to 1.025x its baseline on an H200 (docs/PERF_NOTES.md).
_MIN_ROTARY_BLOCK_N = 32


@dataclass(frozen=True)
class Epilogue:
    kind: str = "plain"
    head_dim: int = 0
    kv_heads: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"epilogue {self.kind!r}: expected one of {KINDS}")
        rotary = self.kind == "rotary"
        for name in ("head_dim", "kv_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or (v > 0) != rotary or v < 0:
                raise ValueError(f"epilogue.{name}={v!r}: expected a positive int exactly for a rotary epilogue")
        if rotary and self.head_dim % 2:
            raise ValueError(f"epilogue.head_dim={self.head_dim}: expected an even head_dim")

    @classmethod
    def parse(cls, form: str) -> Epilogue:
        """The epilogue a `form` names; ValueError for anything else."""
        match = FORM_PATTERN.fullmatch(form) if isinstance(form, str) else None
        if match is None:
            raise ValueError(f"epilogue {form!r}: expected '', 'gated' or 'rotary=<head_dim>/<kv_heads>'")
        if form.startswith("rotary"):
            return cls("rotary", int(match.group(2)), int(match.group(3)))
        return cls("gated") if form else cls()

    @property
    def form(self) -> str:
        return f"rotary={self.head_dim}/{self.kv_heads}" if self.kind == "rotary" else "" if self.kind == "plain" \
            else self.kind

    @property
    def paired(self) -> bool:
        """Whether a program streams two weight rows per output column (kernels/paired.py)."""
        return self.kind != "plain"

    def q_heads(self, N: int) -> int:
        """The query heads of a rotary site whose stacked weight has N rows."""
        return N // self.head_dim - 2 * self.kv_heads

    def check_rows(self, N: int) -> None:
        """Raise unless a stacked weight of N rows fits this epilogue."""
        if self.kind == "gated" and N % 2:
            raise ValueError(f"N={N}: a gated [gate; up] site stacks two halves, expected an even N")
        q = self.q_heads(N) if self.kind == "rotary" else 0
        if self.kind == "rotary" and (N % self.head_dim or q < 1 or q % self.kv_heads):
            raise ValueError(f"N={N}: expected [q; k; v] heads of head_dim={self.head_dim}, kv_heads="
                             f"{self.kv_heads} for k and for v and a multiple of that for q")

    def launched(self, config: Config) -> Config | None:
        """`config` (tuned for the stacked product) as the kernel applying this epilogue launches it; None for
        split-K and TMA configs and where no column tile fits (a gated BLOCK_N halving below 16; a rotary one
        that divides no head_dim/2 at >= 32 columns). A plain epilogue launches the config itself."""
        if self.kind == "plain":
            return config
        if config.SPLIT_K != 1 or config.TMA:
            return None
        block_n = config.BLOCK_N // 2
        if self.kind == "gated":
            return dataclasses.replace(config, BLOCK_N=block_n) if block_n >= _MIN_BLOCK else None
        half = self.head_dim // 2
        while block_n >= _MIN_ROTARY_BLOCK_N and half % block_n:
            block_n //= 2
        return dataclasses.replace(config, BLOCK_N=block_n) if block_n >= _MIN_ROTARY_BLOCK_N else None

    def __str__(self) -> str:
        return self.form or "plain"


PLAIN = Epilogue()
GATED = Epilogue("gated")


def rotary(head_dim: int, kv_heads: int) -> Epilogue:
    return Epilogue("rotary", head_dim, kv_heads)
