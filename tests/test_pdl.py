"""When kernels launch with programmatic dependent launch (kernels/pdl.py)."""
import pytest
import torch

from kernels import pdl


@pytest.fixture
def hopper(monkeypatch):
    """A compiled run on a pretend sm_90 device 1 (and a pre-Hopper device 0)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(pdl, "_hopper_or_newer", lambda index: index == 1)


def test_cpu_and_the_interpreter_launch_without_pdl(hopper, monkeypatch):
    assert pdl.pdl_launch_args(torch.device("cpu")) == {"USE_PDL": False}
    for value in ("1", "true"):  # whatever Triton itself reads as "interpret"
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert not pdl.pdl_enabled(torch.device("cuda", 1))


def test_cuda_launches_with_pdl_on_hopper_only(hopper):
    assert pdl.pdl_launch_args(torch.device("cuda", 1)) == {"USE_PDL": True, "launch_pdl": True}
    assert pdl.pdl_launch_args(torch.device("cuda", 0)) == {"USE_PDL": False}


def test_pdl_off_holds_for_its_block_nested_and_after_an_error(hopper):
    device = torch.device("cuda", 1)
    with pdl.pdl_off():
        with pdl.pdl_off():
            assert not pdl.pdl_enabled(device)
        assert not pdl.pdl_enabled(device)
    assert pdl.pdl_enabled(device)
    with pytest.raises(RuntimeError), pdl.pdl_off():
        raise RuntimeError("a timing failed")
    assert pdl.pdl_enabled(device)


class FakeWeight:
    """What weight_prefetch reads of a CUDA weight, without a GPU."""

    def __init__(self, n: int, k: int, elem: int = 2, transposed: bool = False):
        self.shape, self.device, self.elem = (n, k), torch.device("cuda", 1), elem
        self.strides = (1, n) if transposed else (k, 1)

    def element_size(self) -> int:
        return self.elem

    def stride(self, dim: int) -> int:
        return self.strides[dim]


@pytest.fixture
def l2_50mb(hopper, monkeypatch):
    monkeypatch.setattr(pdl, "_l2_bytes", lambda index: 50 * 2**20)


@pytest.mark.parametrize("n,k,split", [(12288, 4096, 1), (22016, 4096, 1), (4096, 4096, 2), (4096, 11008, 2),
                                       (32000, 4096, 1)])
def test_weight_prefetch_stays_within_its_share_of_l2_in_whole_lines(l2_50mb, n, k, split):
    got = pdl.weight_prefetch(FakeWeight(n, k), split)
    assert got["LINE"] == 64  # bf16 elements in a 128-byte line
    assert got["PREFETCH_K"] > 0 and got["PREFETCH_K"] % 64 == 0
    fetched = n * split * got["PREFETCH_K"] * 2
    assert pdl.PREFETCH_L2_SHARE * 50 * 2**20 - n * split * 128 < fetched <= pdl.PREFETCH_L2_SHARE * 50 * 2**20


def test_weight_prefetch_caps_the_unrolled_loop_and_k(l2_50mb):
    assert pdl.weight_prefetch(FakeWeight(64, 8192), 1)["PREFETCH_K"] == 32 * 64
    assert pdl.weight_prefetch(FakeWeight(64, 100), 1)["PREFETCH_K"] == 2 * 64
    assert pdl.weight_prefetch(FakeWeight(64, 8192, elem=4), 1) == {"PREFETCH_K": 32 * 32, "LINE": 32}


def test_no_prefetch_without_pdl_or_with_a_strided_weight(l2_50mb):
    assert pdl.weight_prefetch(FakeWeight(4096, 4096, transposed=True), 1)["PREFETCH_K"] == 0
    weight = FakeWeight(4096, 4096)
    weight.device = torch.device("cuda", 0)  # pre-Hopper
    assert pdl.weight_prefetch(weight, 1)["PREFETCH_K"] == 0
    with pdl.pdl_off():
        assert pdl.weight_prefetch(FakeWeight(4096, 4096), 1)["PREFETCH_K"] == 0
