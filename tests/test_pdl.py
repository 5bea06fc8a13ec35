"""When kernels launch with programmatic dependent launch (kernels/pdl.py)."""
import torch

from kernels import pdl


def test_cpu_and_interpreter_launch_without_pdl(monkeypatch):
    assert pdl.pdl_launch_args(torch.device("cpu")) == {"USE_PDL": False}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(pdl, "_hopper_or_newer", lambda index: True)
    assert not pdl.pdl_enabled(torch.device("cuda", 0))


def test_cuda_launches_with_pdl_on_hopper_only(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(pdl, "_hopper_or_newer", lambda index: index == 1)
    assert pdl.pdl_launch_args(torch.device("cuda", 1)) == {"USE_PDL": True, "launch_pdl": True}
    assert pdl.pdl_launch_args(torch.device("cuda", 0)) == {"USE_PDL": False}
