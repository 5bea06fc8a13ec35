"""Gumbel-max sampling kernel and the sample() entry point: greedy rows, seeds, top-k/top-p, distribution."""
import pytest
import torch

from kernels.ops import sample
from kernels.reference import gumbel_argmax_reference
from kernels.sampling import apply_top_k_top_p, gumbel_argmax_triton


def test_gumbel_argmax_matches_reference(device):
    gen = torch.Generator().manual_seed(0)
    # 9000 tokens: three chunks of the kernel's vocabulary split.
    logits = (torch.randn(6, 9000, generator=gen) * 4).to(device)
    temperatures = torch.tensor([0.0, 1.0, 0.5, 2.0, 0.0, 0.7], device=device)
    noise = torch.rand(6, 9000, generator=gen).to(device)
    got = gumbel_argmax_triton(logits, temperatures, noise)
    expected = gumbel_argmax_reference(logits, temperatures, noise)
    greedy = temperatures == 0
    assert torch.equal(got[greedy], logits[greedy].argmax(-1))
    # Sampled rows: the kernel's pick scores the row maximum (exact ties aside, the same token).
    t = torch.where(greedy, 1.0, temperatures)[:, None]
    scores = logits / t - torch.log(-torch.log(noise))
    best = scores.gather(1, expected[:, None])[~greedy]
    torch.testing.assert_close(scores.gather(1, got[:, None])[~greedy], best, atol=1e-4, rtol=0)


def test_greedy_ties_take_the_first_index_across_chunks(device):
    logits = torch.full((2, 9000), 1.5, device=device)
    logits[0, [5000, 8000]] = 2.0
    noise = torch.rand(2, 9000, device=device)
    got = gumbel_argmax_triton(logits, torch.zeros(2, device=device), noise)
    assert got.tolist() == [5000, 0]


def test_gumbel_argmax_follows_softmax(device):
    rows, vocab = 1500, 6
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], device=device).expand(rows, vocab).contiguous()
    temperatures = torch.full((rows,), 0.8, device=device)
    noise = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(1)).to(device)
    tokens = gumbel_argmax_triton(logits, temperatures, noise)
    freq = torch.bincount(tokens.cpu(), minlength=vocab).float() / rows
    torch.testing.assert_close(freq, torch.softmax(logits[0].cpu() / 0.8, dim=-1), atol=0.04, rtol=0)


def test_sample_is_greedy_at_zero_temperature_and_reproducible_with_seeds(device):
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(0)).to(device)
    temperatures = torch.tensor([0.0, 1.0, 1.0, 0.0], device=device)
    top_ks = torch.full((4,), -1, device=device)
    top_ps = torch.ones(4, device=device)

    def draw(seed):
        gens = [None] + [torch.Generator(device=device).manual_seed(seed + i) for i in range(2)] + [None]
        return sample(logits, temperatures, top_ks, top_ps, gens)

    first, again = draw(7), draw(7)
    assert torch.equal(first, again)
    assert torch.equal(first[[0, 3]], logits[[0, 3]].argmax(-1))
    others = torch.stack([draw(100 + 2 * i)[1] for i in range(6)])
    assert others.unique().numel() > 1


def test_top_k_and_top_p_restrict_candidates(device):
    rows = 64
    logits = torch.randn(1, 200, device=device).expand(rows, 200).contiguous()
    order = logits[0].argsort(descending=True)
    temperatures = torch.ones(rows, device=device)
    top_ks = torch.tensor([5] * (rows // 2) + [-1] * (rows // 2), device=device)
    top_ps = torch.tensor([1.0] * (rows // 2) + [0.3] * (rows // 2), device=device)
    tokens = sample(logits, temperatures, top_ks, top_ps)
    assert torch.isin(tokens[: rows // 2], order[:5]).all()
    probs = torch.softmax(logits[0], -1)[order]
    nucleus = order[: int(((probs.cumsum(0) - probs) < 0.3).sum())]
    assert torch.isin(tokens[rows // 2:], nucleus).all()


def test_filtered_told_by_the_caller_draws_what_reading_the_tensors_draws(device):
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(1)).to(device)
    temperatures = torch.ones(3, device=device)
    top_ks = torch.tensor([4, -1, -1], device=device)
    top_ps = torch.tensor([1.0, 0.5, 1.0], device=device)

    def draw(filtered, ks=top_ks, ps=top_ps):
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(3)]
        return sample(logits, temperatures, ks, ps, gens, filtered=filtered)

    assert torch.equal(draw(True), draw(None))
    # Told "no filtering", the parameters are not applied: the flag is what decides.
    assert torch.equal(draw(False), draw(None, torch.full((3,), -1, device=device), torch.ones(3, device=device)))


def test_apply_top_k_top_p_keeps_the_best_token():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    masked = apply_top_k_top_p(logits, torch.ones(2), torch.tensor([1, 2]), torch.tensor([1.0, 0.01]))
    assert torch.isfinite(masked).tolist() == [[False, True, False, False], [False, True, False, False]]


def test_sample_rejects_bad_arguments():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="temperatures must have shape"):
        sample(logits, torch.ones(3), torch.full((2,), -1), torch.ones(2))
    with pytest.raises(TypeError, match="logits must have dtype"):
        sample(logits.half(), torch.ones(2), torch.full((2,), -1), torch.ones(2))
    with pytest.raises(ValueError, match="generators must have one entry per row"):
        sample(logits, torch.ones(2), torch.full((2,), -1), torch.ones(2), [torch.Generator()])


def test_apply_top_k_top_p_matches_hf_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)) * 2
    masked = apply_top_k_top_p(logits, torch.full((3,), 0.7), torch.full((3,), 10), torch.full((3,), 0.6))
    hf = TemperatureLogitsWarper(0.7)(None, logits.clone())
    hf = TopPLogitsWarper(0.6)(None, TopKLogitsWarper(10)(None, hf))
    assert torch.equal(torch.isfinite(masked), torch.isfinite(hf))
