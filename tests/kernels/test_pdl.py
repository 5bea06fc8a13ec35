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
