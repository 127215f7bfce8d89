"""Log-probability encodings and importance weights (pipeline/softlabels/encodings.py), against
the formulas of docs/FORMAT.md evaluated here by hand or in exact rational arithmetic:

    u8:  code = round(255 * clamp(x, lo, 0) / lo),  x̂ = code * lo / 255
    sampled weights: w = (draws / N) * p / q,  log p/q = (1 - 1/T) log p + log Σ p^(1/T)
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from pipeline.softlabels import schema as S
from pipeline.softlabels.encodings import (
    decode_logprobs,
    encode_logprobs,
    importance_weights,
    u8_error_bound,
)

U8 = S.LabelSpec("topk", 2, 10, "uint16", "u8", logprob_u8_min=-16.0)


def spec(encoding: str) -> S.LabelSpec:
    return S.LabelSpec("topk", 2, 10, "uint16", encoding)


def exact_code(x: float, lo: float) -> int:
    """round-half-even(255 * clamp(x, lo, 0) / lo) in exact rational arithmetic."""
    return round(Fraction(min(max(x, lo), 0.0)) * 255 / Fraction(lo))


def test_u8_codes_by_hand():
    x = np.array([0.0, -16.0, -20.0, -8.0, -1.0, -1 / 255, 0.3], dtype=np.float32)
    codes = encode_logprobs(x, U8)
    assert codes.dtype == np.uint8
    # 0 ↔ 0; lo ↔ 255; below lo clamps; -8 → 127.5 → 128 (half to even); -1 → 15.9375 → 16;
    # -1/255 → 0.996 → 1; a positive value (rounding) clamps to log p = 0
    assert codes.tolist() == [0, 255, 255, 128, 16, 0, 0]


def test_u8_codes_are_rounded_from_float64_whatever_the_input_type():
    """In float32, -9.75686264... x 255 / -16 rounds up to 155.5 and then to 156; the exact
    value is 155.49999833..., code 155."""
    x = np.array([-9.75686264038086, -13.898038864135742, -6.180392265319824],
                 dtype=np.float32)
    want = [exact_code(float(v), -16.0) for v in x]
    assert want == [155, 221, 99]
    assert encode_logprobs(x, U8).tolist() == want
    assert encode_logprobs(x.astype(np.float16), U8).tolist() == \
        [exact_code(float(v), -16.0) for v in x.astype(np.float16)]


def test_u8_decodes_to_code_times_lo_over_255_in_float32():
    codes = np.array([0, 1, 128, 255], dtype=np.uint8)
    got = decode_logprobs(codes, U8)
    assert got.dtype == np.float32
    step = np.float32(-16.0 / 255)
    assert got.tolist() == [0.0, float(step), float(np.float32(128) * step),
                            float(np.float32(255) * step)]
    assert got[-1] == pytest.approx(-16.0, abs=2e-6)


def test_u8_decoding_is_a_new_array():
    codes = np.array([3, 4], dtype=np.uint8)
    got = decode_logprobs(codes, U8)
    got[0] = 1.0
    assert codes.tolist() == [3, 4]


def test_u8_round_trip_error_is_at_most_half_a_step_plus_float32_rounding():
    x = np.linspace(-16.0, 0.0, 10001)
    err = np.abs(decode_logprobs(encode_logprobs(x, U8), U8) - x)
    assert err.max() <= u8_error_bound(-16.0) + 4e-6
    assert u8_error_bound(-16.0) == 16.0 / 510 and u8_error_bound(-8.5) == 8.5 / 510


@pytest.mark.parametrize("encoding, dtype", [("fp16", np.float16), ("fp32", np.float32)])
def test_float_encodings_store_in_their_own_type(encoding, dtype):
    x = np.array([-1.0001, -0.1, -30.123456789], dtype=np.float64)
    stored = encode_logprobs(x, spec(encoding))
    assert stored.dtype == dtype and stored.tolist() == x.astype(dtype).tolist()
    back = decode_logprobs(stored, spec(encoding))
    assert back.dtype == np.float32 and back.tolist() == x.astype(dtype).astype(np.float32).tolist()


def sampled(temperature: float) -> S.LabelSpec:
    return S.LabelSpec("sampled", 3, 10, "uint16", "fp32", samples=8,
                       proposal_temperature=temperature, seed=0)


def test_weights_at_temperature_one_are_draws_over_n():
    draws = np.array([[5, 3, 0]])
    lp = np.array([[-0.5, -1.5, -1e4]], dtype=np.float32)
    w = importance_weights(draws, lp, None, sampled(1.0))
    assert w.dtype == np.float32 and w.tolist() == [[0.625, 0.375, 0.0]]


def test_tempered_weights_are_draws_over_n_times_p_over_q():
    """p over q = p / (p^(1/T) / Z) = p^(1 - 1/T) Z with Z = Σ_v p_v^(1/T)."""
    T, log_z = 2.0, 0.7
    draws = np.array([[6, 2, 0], [8, 0, 0]])
    lp = np.array([[-0.2, -2.0, -1e4], [-0.01, -1e4, -1e4]], dtype=np.float32)
    w = importance_weights(draws, lp, np.array([log_z, -0.3]), sampled(T))
    p = np.exp(lp.astype(np.float64))
    want = [[6 / 8 * p[0, 0] ** 0.5 * math.exp(log_z), 2 / 8 * p[0, 1] ** 0.5 * math.exp(log_z),
             0.0], [1.0 * p[1, 0] ** 0.5 * math.exp(-0.3), 0.0, 0.0]]
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, want, rtol=1e-6)


def test_padding_weights_are_zero_even_where_their_exponent_would_overflow():
    """At T = 0.5, (1 - 1/T) log p = -log p: 1e4 for padding (log p = -1e4), whose exp is inf;
    0 draws must still give weight 0, not 0 x inf = NaN."""
    draws = np.array([[8, 0]])
    lp = np.array([[-0.1, -1e4]], dtype=np.float32)
    w = importance_weights(draws, lp, np.array([0.0]), sampled(0.5))
    assert w[0, 1] == 0.0 and w[0, 0] == pytest.approx(math.exp(0.1), rel=1e-6)
