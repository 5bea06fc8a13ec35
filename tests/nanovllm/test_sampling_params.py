"""SamplingParams refuses a bad value or type in one line naming its field, and keeps the conventions it documents."""
import dataclasses

import numpy as np
import pytest

from nanovllm import SamplingParams


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("inf")),
                                    dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2),
                                    dict(max_tokens=0), dict(stop_token_ids=[3, -1]), dict(seed=-1),
                                    dict(seed=2**64)])
def test_invalid_values(kwargs):
    with pytest.raises(ValueError, match=f"^{next(iter(kwargs))} ") as info:
        SamplingParams(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(temperature="0.5"), dict(temperature=None), dict(top_p=True),
                                    dict(top_k=2.5), dict(top_k=True), dict(max_tokens=2.5), dict(max_tokens=True),
                                    dict(max_tokens="8"), dict(ignore_eos=1), dict(stop_token_ids=5),
                                    dict(stop_token_ids="ab"), dict(seed="7"), dict(seed=7.0), dict(seed=False)])
def test_invalid_types(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"^{name} .*got {type(kwargs[name]).__name__}") as info:
        SamplingParams(**kwargs)
    assert "\n" not in str(info.value)


def test_a_bad_stop_token_is_named_by_its_index():
    with pytest.raises(TypeError, match=r"^stop_token_ids\[1\] must be an int, got bool True"):
        SamplingParams(stop_token_ids=[3, True])


def test_ints_and_numpy_numbers_are_taken_as_plain_python_values():
    params = SamplingParams(temperature=1, top_p=np.float32(0.5), top_k=np.int64(5), max_tokens=np.int32(8),
                            stop_token_ids=(np.int64(3),), seed=np.uint64(2**64 - 1))
    assert params == SamplingParams(temperature=1.0, top_p=0.5, top_k=5, max_tokens=8, stop_token_ids=[3],
                                    seed=2**64 - 1)
    assert [type(v) for v in (params.temperature, params.top_p, params.top_k, params.max_tokens, params.seed)] == \
        [float, float, int, int, int]
    assert type(params.stop_token_ids) is list and type(params.stop_token_ids[0]) is int


def test_top_k_minus_one_and_zero_are_both_off():
    assert SamplingParams(top_k=0).top_k == 0 and SamplingParams(top_k=-1).top_k == -1 == SamplingParams().top_k


def test_checked_params_cannot_be_changed_into_bad_ones():
    params = SamplingParams(seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = "x"
    assert dataclasses.replace(params, seed=2).seed == 2
    with pytest.raises(TypeError, match="^seed "):
        dataclasses.replace(params, seed="x")
