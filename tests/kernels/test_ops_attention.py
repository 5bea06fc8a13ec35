"""Paged prefill/decode attention kernels against the PyTorch reference (interpreter on CPU)."""
import pytest
import torch

from kernels.ops import paged_decode_attention, paged_prefill_attention
from kernels.attention_decode import paged_decode_attention_triton
from kernels.attention_prefill import paged_prefill_attention_triton
from kernels.reference import paged_decode_attention_reference, paged_prefill_attention_reference

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
BLOCK_SIZE = 16


def make_paged_kv(seq_lens, num_kv_heads, head_dim, dtype, device, spare_blocks=3, seed=0):
    """Random K/V in a cache whose blocks are handed out in shuffled order; tables padded with -1."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(n + BLOCK_SIZE - 1) // BLOCK_SIZE for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(shape, generator=gen).to(dtype).to(device)
    order = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    table = torch.full((len(seq_lens), max(blocks_per_seq) + 2), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(blocks_per_seq):
        table[b, :n] = order[used:used + n]
        used += n
    return k_cache, v_cache, table.to(device), torch.tensor(seq_lens, dtype=torch.int32, device=device)


def nan_like(q):
    return torch.full_like(q, float("nan"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("sliding_window", [None, 9, 100])
def test_prefill_matches_reference(device, dtype, head_dim, group, sliding_window):
    # Full prefill, prefill over a cached prefix (q_len < seq_len) and a one-token chunk, ragged.
    seq_lens, q_lens = [37, 150, 21, 70], [37, 3, 1, 21]
    num_kv_heads = 2
    k_cache, v_cache, table, lens = make_paged_kv(seq_lens, num_kv_heads, head_dim, dtype, device)
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), num_kv_heads * group, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    out = paged_prefill_attention_triton(q, k_cache, v_cache, table, cu, lens, scale, sliding_window, out=nan_like(q))
    expected = paged_prefill_attention_reference(q, k_cache, v_cache, table, cu, lens, scale, sliding_window)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("sliding_window", [None, 9])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_reference(device, dtype, head_dim, group, sliding_window, num_splits):
    seq_lens = [1, 37, 80, 16]
    num_kv_heads = 2
    k_cache, v_cache, table, lens = make_paged_kv(seq_lens, num_kv_heads, head_dim, dtype, device)
    q = torch.randn(len(seq_lens), num_kv_heads * group, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    out = paged_decode_attention_triton(q, k_cache, v_cache, table, lens, scale, sliding_window, num_splits,
                                        out=nan_like(q))
    expected = paged_decode_attention_reference(q, k_cache, v_cache, table, lens, scale, sliding_window)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, atol=TOL[dtype], rtol=TOL[dtype])


def test_prefill_many_ragged_sequences(device):
    # Enough sequences for a real binary search over cu_seqlens_q, an empty one among them.
    seq_lens, q_lens = [5, 40, 17, 33, 64, 1, 90, 20, 48], [5, 40, 0, 9, 64, 1, 2, 20, 31]
    k_cache, v_cache, table, lens = make_paged_kv(seq_lens, 1, 64, torch.float16, device)
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), 2, 64).half().to(device)
    out = paged_prefill_attention_triton(q, k_cache, v_cache, table, cu, lens, 0.125, out=nan_like(q))
    expected = paged_prefill_attention_reference(q, k_cache, v_cache, table, cu, lens, 0.125)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


def test_decode_padded_row_gives_zeros(device):
    # A CUDA-graph batch pads with seq_len 0 and an all -1 block table: no key is read, the row is zero.
    k_cache, v_cache, table, lens = make_paged_kv([40, 1], 2, 64, torch.float32, device)
    table[1] = -1
    lens[1] = 0
    q = torch.randn(2, 4, 64, device=device)
    out = paged_decode_attention_triton(q, k_cache, v_cache, table, lens, 0.125, out=nan_like(q))
    expected = paged_decode_attention_reference(q[:1], k_cache, v_cache, table[:1], lens[:1], 0.125)
    torch.testing.assert_close(out[:1], expected, atol=2e-5, rtol=2e-5)
    assert (out[1] == 0).all()


def test_prefill_head_dim_not_power_of_two(device):
    k_cache, v_cache, table, lens = make_paged_kv([19, 33], 1, 80, torch.float32, device)
    cu = torch.tensor([0, 19, 24], dtype=torch.int32, device=device)
    q = torch.randn(24, 3, 80, device=device)
    out = paged_prefill_attention_triton(q, k_cache, v_cache, table, cu, lens, 0.1)
    expected = paged_prefill_attention_reference(q, k_cache, v_cache, table, cu, lens, 0.1)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_dispatch_matches_reference_on_cpu():
    k_cache, v_cache, table, lens = make_paged_kv([5, 20], 1, 16, torch.float32, "cpu")
    q = torch.randn(2, 2, 16)
    expected = paged_decode_attention_reference(q, k_cache, v_cache, table, lens, 0.25)
    torch.testing.assert_close(paged_decode_attention(q, k_cache, v_cache, table, lens, 0.25), expected)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    torch.testing.assert_close(paged_prefill_attention(q, k_cache, v_cache, table, cu, lens, 0.25), expected)


def test_bad_arguments_name_the_argument(device):
    k_cache, v_cache, table, lens = make_paged_kv([5], 2, 64, torch.float32, device)
    q = torch.randn(1, 3, 64, device=device)
    with pytest.raises(ValueError, match="multiple of k_cache kv heads"):
        paged_decode_attention_triton(q, k_cache, v_cache, table, lens, 0.1)
    q = torch.randn(1, 4, 64, device=device)
    with pytest.raises(TypeError, match="block_tables"):
        paged_decode_attention_triton(q, k_cache, v_cache, table.long(), lens, 0.1)
    with pytest.raises(ValueError, match="sliding_window"):
        paged_decode_attention_triton(q, k_cache, v_cache, table, lens, 0.1, sliding_window=0)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        cu = torch.tensor([], dtype=torch.int32, device=device)
        paged_prefill_attention_triton(q, k_cache, v_cache, table, cu, lens, 0.1)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_decode_group_not_power_of_two(device, num_splits):
    k_cache, v_cache, table, lens = make_paged_kv([33, 70], 2, 80, torch.float32, device)
    q = torch.randn(2, 6, 80, device=device)
    out = paged_decode_attention_triton(q, k_cache, v_cache, table, lens, 0.1, num_splits=num_splits)
    expected = paged_decode_attention_reference(q, k_cache, v_cache, table, lens, 0.1)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("sliding_window", [None, 1000])
def test_long_context_bf16(sliding_window):
    seq_lens, q_lens = [3001, 1500, 4096, 257], [3001, 700, 1, 1]
    k_cache, v_cache, table, lens = make_paged_kv(seq_lens, 8, 128, torch.bfloat16, "cuda")
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(q_lens), 32, 128, device="cuda", dtype=torch.bfloat16)
    out = paged_prefill_attention(q, k_cache, v_cache, table, cu, lens, 128 ** -0.5, sliding_window)
    expected = paged_prefill_attention_reference(q, k_cache, v_cache, table, cu, lens, 128 ** -0.5, sliding_window)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
    qd = torch.randn(4, 32, 128, device="cuda", dtype=torch.bfloat16)
    out = paged_decode_attention(qd, k_cache, v_cache, table, lens, 128 ** -0.5, sliding_window)
    expected = paged_decode_attention_reference(qd, k_cache, v_cache, table, lens, 128 ** -0.5, sliding_window)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_decode_replays_in_cuda_graph():
    k_cache, v_cache, table, lens = make_paged_kv([300, 1000, 5], 2, 128, torch.bfloat16, "cuda")
    q = torch.randn(3, 8, 128, device="cuda", dtype=torch.bfloat16)
    paged_decode_attention(q, k_cache, v_cache, table, lens, 0.09)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, k_cache, v_cache, table, lens, 0.09)
    for new_lens in ([300, 1000, 5], [17, 999, 1]):
        lens.copy_(torch.tensor(new_lens))
        q.copy_(torch.randn_like(q))
        graph.replay()
        expected = paged_decode_attention_reference(q, k_cache, v_cache, table, lens, 0.09)
        torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
