"""Every Triton kernel the runtime launches compiles for Hopper (sm_90) in its bf16 launch configuration, with
programmatic dependent launch as the GPU launches it there, without register spills, and waits for the
previous kernel (griddepcontrol.wait) before its first global memory access (kernels/pdl.py's rule).
No GPU needed: Triton's compiler and its bundled ptxas run in a subprocess, away from the interpreter
that conftest.py turns on for CPU runs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SKIP = 3
# (kernel, constexprs, launch options[, argument types unlike arg_type's]) as the wrappers launch them for
# Llama-like bf16 shapes.
CASES = [
    ("_prefill_kernel", dict(GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_Q=16, BLOCK_M=64, BLOCK_N=64, BLOCK_SIZE=16,
                             USE_WINDOW=False, DOT_PRECISION="tf32"), dict(num_warps=4, num_stages=2)),
    ("_prefill_kernel", dict(GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_Q=32, BLOCK_M=128, BLOCK_N=64, BLOCK_SIZE=16,
                             USE_WINDOW=True, DOT_PRECISION="tf32"), dict(num_warps=8, num_stages=2)),
    ("_decode_split_kernel", dict(GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_H=16, BLOCK_N=64, BLOCK_SIZE=16,
                                  USE_WINDOW=False, SINGLE_SPLIT=False, DOT_PRECISION="tf32"),
     dict(num_warps=4, num_stages=2)),
    ("_decode_split_kernel", dict(GROUP=8, HEAD_DIM=64, BLOCK_D=64, BLOCK_H=16, BLOCK_N=64, BLOCK_SIZE=16,
                                  USE_WINDOW=True, SINGLE_SPLIT=True, DOT_PRECISION="tf32"),
     dict(num_warps=4, num_stages=2)),
    ("_decode_merge_kernel", dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_S=16), {}),
    ("_rms_norm_kernel", dict(HAS_RESIDUAL=True, BLOCK=4096), dict(num_warps=16)),
    ("_rotary_store_kvcache_kernel", dict(NUM_Q_HEADS=32, NUM_KV_HEADS=8, HEAD_DIM=128, BLOCK_HQ=32, BLOCK_HKV=8,
                                          BLOCK_HALF=64, BLOCK_D=128), {}),
    ("_silu_and_mul_kernel", dict(BLOCK=1024), {}),
    ("_gumbel_argmax_kernel", dict(CHUNK=4096, BLOCK=1024), dict(num_warps=4)),
    ("_row_stats_kernel", dict(PARTS=1, HAS_BIAS=False, HAS_RESIDUAL=True, WRITE_H=True, WIDE=False, BLOCK_K=4096),
     dict(num_warps=8)),
    # The plain linear's epilogue (1024 columns a program there): x_ptr is its split-K workspace.
    ("_row_stats_kernel", dict(PARTS=4, HAS_BIAS=True, HAS_RESIDUAL=True, WRITE_H=True, WIDE=False, BLOCK_K=1024),
     dict(num_warps=4), {"x_ptr": "*fp32"}),
    ("_gemm_kernel", dict(HAS_NORM=True, HAS_RESIDUAL=True, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                                     EVEN_K=True, IEEE=False, SUMSQ_IN_LOOP=False, WIDE=False, BLOCK_M=16,
                                     BLOCK_N=128, BLOCK_K=128, GROUP_M=1, SPLIT_K=1, GATED=False,
                                     ROTARY=False, HALF=1, NUM_Q_HEADS=0, NUM_KV_HEADS=0, SS_PARTS=1, EVICT=0,
                                     GEMV_STAGES=4), dict(num_warps=4, num_stages=4)),
    # The MLP's gate/up site with SiLU-and-mul in the epilogue, and the QKV site with the rotary and the KV write.
    ("_gemm_kernel", dict(HAS_NORM=True, HAS_RESIDUAL=False, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                                     EVEN_K=True, IEEE=False, SUMSQ_IN_LOOP=False, WIDE=False, BLOCK_M=16,
                                     BLOCK_N=32, BLOCK_K=128, GROUP_M=1, SPLIT_K=1, GATED=True, ROTARY=False,
                                     HALF=1, NUM_Q_HEADS=0, NUM_KV_HEADS=0, SS_PARTS=1, EVICT=0, GEMV_STAGES=3),
     dict(num_warps=4, num_stages=3)),
    ("_gemm_kernel", dict(HAS_NORM=True, HAS_RESIDUAL=False, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                                     EVEN_K=True, IEEE=False, SUMSQ_IN_LOOP=False, WIDE=False, BLOCK_M=16,
                                     BLOCK_N=32, BLOCK_K=128, GROUP_M=1, SPLIT_K=1, GATED=False, ROTARY=True,
                                     HALF=64, NUM_Q_HEADS=32, NUM_KV_HEADS=32, SS_PARTS=4, EVICT=0, GEMV_STAGES=4),
     dict(num_warps=2, num_stages=4)),
    # GEMV-like row tiles (no tl.dot) on the QKV and a plain site, unpipelined with the eviction hint (compiled
    # without the launch's specializations the K loop is not pipelined: see SPILLS_UNCHECKED).
    ("_gemm_kernel", dict(HAS_NORM=True, HAS_RESIDUAL=False, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                          EVEN_K=True, IEEE=False, SUMSQ_IN_LOOP=False, WIDE=False, BLOCK_M=4, BLOCK_N=32,
                          BLOCK_K=128, GROUP_M=1, SPLIT_K=1, GATED=False, ROTARY=True, HALF=64, NUM_Q_HEADS=32,
                          NUM_KV_HEADS=32, SS_PARTS=1, EVICT=1, GEMV_STAGES=1), dict(num_warps=2, num_stages=1)),
    ("_gemm_kernel", dict(HAS_NORM=True, HAS_RESIDUAL=False, HAS_NORM_WEIGHT=False, HAS_BIAS=False,
                          EVEN_K=True, IEEE=False, SUMSQ_IN_LOOP=False, WIDE=False, BLOCK_M=1, BLOCK_N=16,
                          BLOCK_K=128, GROUP_M=1, SPLIT_K=1, GATED=False, ROTARY=False, HALF=1, NUM_Q_HEADS=0,
                          NUM_KV_HEADS=0, SS_PARTS=1, EVICT=1, GEMV_STAGES=1), dict(num_warps=1, num_stages=1)),
    ("_split_k_reduce_kernel", dict(HAS_NORM=True, HAS_BIAS=False, SPLIT_K=4, SS_PARTS=1, WIDE=False, BLOCK_M=16,
                                    BLOCK_N=128), dict(num_warps=4)),
    ("_tma_gemm_kernel", dict(HAS_NORM=True, HAS_BIAS=False, IEEE=False, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64,
                              GROUP_M=8, SUBTILE=True, SS_PARTS=1), dict(num_warps=8, num_stages=4)),
]
# The TMA GEMM's descriptors, for its case above (the output stored in two half tiles).
DESCRIPTORS = {"a_desc": "tensordesc<bf16[128,64]>", "w_desc": "tensordesc<bf16[256,64]>",
               "o_desc": "tensordesc<bf16[128,128]>"}
# Compiled here without the launch-time specializations of M, N and K (== 1, % 16), the GEMM's K loop is not
# pipelined and spills; what it compiles to at launch is timed by the tuner. It is here for the PDL order only.
SPILLS_UNCHECKED = {"_gemm_kernel"}
INT32_POINTERS = {"block_tables_ptr", "cu_seqlens_q_ptr", "seq_lens_ptr"}
INT64_POINTERS = {"slot_ptr", "pos_ptr", "idx_ptr"}
FP32_POINTERS = {"part_o_ptr", "part_lse_ptr", "cos_sin_ptr", "logits_ptr", "temp_ptr", "noise_ptr", "val_ptr",
                 "ws_ptr", "ss_ptr", "cs_ptr"}
GLOBAL_ACCESS = re.compile(r"^\s*(@!?%p\d+\s+)?(ld\.global|st\.global|atom\.global|red\.global|cp\.async|prefetch)",
                           re.MULTILINE)
# kernels/pdl.py: the GEMMs place the next kernel after their main loop (the last MMA); every other kernel
# but decode attention places the next one before it waits.
GEMMS = {"_gemm_kernel", "_tma_gemm_kernel"}
# Decode attention runs in several waves: the next kernel is placed only as its programs exit.
PLACE_NEXT_ON_EXIT = {"_decode_split_kernel", "_decode_merge_kernel"}
MMA = re.compile(r"^\s*(@!?%p\d+\s+)?(mma\.sync|wgmma\.mma_async)", re.MULTILINE)
LOOP_LOADS = re.compile(r"^\s*(@!?%p\d+\s+)?(cp\.async\.c[ag]|ld\.global\S*L2::cache_hint)", re.MULTILINE)


def test_kernels_compile_for_sm90_without_spills():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode == SKIP:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr


def arg_type(name: str) -> str:
    if name in DESCRIPTORS:
        return DESCRIPTORS[name]
    if name in INT32_POINTERS:
        return "*i32"
    if name in INT64_POINTERS:
        return "*i64"
    if name in FP32_POINTERS:
        return "*fp32"
    if name.endswith("_ptr"):
        return "*bf16"
    return "fp32" if name in ("qk_scale", "eps") else "i32"


def main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    from kernels import gemm, row_stats, split_k, tma_gemm
    from kernels import activation, attention_decode, attention_prefill, norm, rotary_kvcache, sampling

    ptxas = get_ptxas(90).path
    if not os.path.exists(ptxas):
        print(f"no ptxas at {ptxas}")
        sys.exit(SKIP)
    modules = [activation, attention_decode, attention_prefill, norm, rotary_kvcache, sampling, gemm,
               row_stats, split_k, tma_gemm]
    kernels = {name: getattr(m, name) for m in modules for name in dir(m) if name.endswith("_kernel")}
    for name, constexprs, options, *types in CASES:
        constexprs, options = {**constexprs, "USE_PDL": True}, {**options, "launch_pdl": True}
        fn = kernels[name]
        types = types[0] if types else {}
        signature = {a: "constexpr" if a in constexprs else types.get(a) or arg_type(a) for a in fn.arg_names}
        # Pointers and strides are multiples of 16 in practice; Triton specializes on that at launch.
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if a not in constexprs and (a.endswith("_ptr") or a.startswith("stride"))}
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                                options=options)
        ptx_text = kernel.asm["ptx"]
        check_pdl_order(name, ptx_text)
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "kernel.ptx"
            ptx.write_text(ptx_text)
            log = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(90)}", str(ptx), "-o",
                                  str(ptx.with_suffix(".cubin"))], capture_output=True, text=True, check=True).stderr
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
        print(name, constexprs, *re.findall(r"Used \d+ registers", log))
        assert name in SPILLS_UNCHECKED or (spills and max(spills) == 0), f"{name} {constexprs} spills:\n{log}"


def check_pdl_order(name: str, ptx: str) -> None:
    wait = ptx.find("griddepcontrol.wait")
    launch_next = ptx.find("griddepcontrol.launch_dependents")
    first = GLOBAL_ACCESS.search(ptx)
    assert wait >= 0 and first and wait < first.start(), f"{name}: global memory touched before the wait"
    if name in GEMMS:
        # The main loop's tensor-core MMAs, or a GEMV tile's weight loads: pipelined copies or hinted loads.
        mmas = [m.start() for m in (MMA.finditer(ptx) if "mma" in ptx else LOOP_LOADS.finditer(ptx))]
        assert mmas and launch_next > max(mmas), f"{name}: the next kernel is placed before the main loop ends"
    elif name in PLACE_NEXT_ON_EXIT:
        assert launch_next < 0, f"{name}: the next kernel is placed before this one's programs exit"
    else:
        assert 0 <= launch_next < wait, f"{name}: the next kernel is not placed before the wait"


if __name__ == "__main__":
    main()
