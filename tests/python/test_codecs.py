"""Our E4M3 and E2M1 codecs, bit for bit against ml_dtypes (an independent implementation)."""
import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
E2M1 = ml_dtypes.float4_e2m1fn
RNG = np.random.default_rng(20261127)


def ref_e4m3(x):
    return np.asarray(x, np.float32).astype(E4M3).view(np.uint8)


def ref_e2m1(x):
    return np.asarray(x, np.float32).astype(E2M1).view(np.uint8) & 0xF


def all_e4m3_values():
    codes = np.arange(256, dtype=np.uint8)
    values = codes.view(E4M3).astype(np.float32)
    return codes, values


def test_e4m3_decode_every_byte(codec):
    codes, ref = all_e4m3_values()
    ours = codec.decode_e4m3(codes)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def e4m3_test_values():
    _, values = all_e4m3_values()
    finite = np.unique(np.abs(values[np.isfinite(values)]))  # 0 .. 448
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact ties
    mids = mids.astype(np.float32)
    around = np.concatenate([np.nextafter(mids, 0), mids, np.nextafter(mids, np.inf)])
    random = np.exp(RNG.uniform(np.log(2.0 ** -12), np.log(448.0), 200_000)).astype(np.float32)
    tiny = RNG.uniform(0, 2.0 ** -6, 20_000).astype(np.float32)
    values = np.concatenate([finite, around, random, tiny])
    values = values[values <= 448]
    return np.concatenate([values, -values])


def test_e4m3_rne_matches_ml_dtypes(codec):
    x = e4m3_test_values()
    ours = codec.encode_e4m3_rne(x)
    ref = ref_e4m3(x)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first x={x[bad[0]]!r}: {ours[bad[0]]:#x} vs {ref[bad[0]]:#x}"


def test_e4m3_scale_rule_clamps_then_rounds(codec):
    x = np.concatenate([
        e4m3_test_values(),
        np.exp(RNG.uniform(np.log(1e-12), np.log(1e12), 100_000)).astype(np.float32),
        np.array([0.0, 1e-30, 448.0, 460.0, 464.0, 470.0, 480.0, 1e38], np.float32),
    ])
    x = np.abs(x)
    ours = codec.encode_scale_e4m3(x)
    ref = ref_e4m3(np.clip(x, 2.0 ** -9, 448.0))
    assert np.array_equal(ours, ref)
    assert ours.min() >= 0x01 and ours.max() <= 0x7E


def e2m1_test_values():
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    around = np.concatenate([np.nextafter(ties, 0), ties, np.nextafter(ties, np.inf)])
    random = RNG.uniform(0, 6.5, 200_000).astype(np.float32)
    small = np.exp(RNG.uniform(np.log(1e-30), np.log(0.3), 20_000)).astype(np.float32)
    values = np.concatenate([grid, around, random, small])
    return np.concatenate([values, -values[values > 0]])


def test_e2m1_rne_matches_ml_dtypes(codec):
    x = e2m1_test_values()
    ours = codec.encode_e2m1(x)
    ref = ref_e2m1(x)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, f"{bad.size} mismatches, first x={x[bad[0]]!r}: {ours[bad[0]]:#x} vs {ref[bad[0]]:#x}"


def test_e2m1_saturates_and_signed_zero_convention(codec):
    big = np.array([6.0, 6.5, 100.0, 3e38], np.float32)
    assert np.array_equal(codec.encode_e2m1(big), ref_e2m1(np.clip(big, -6, 6)))
    assert np.array_equal(codec.encode_e2m1(-big), np.full(4, 0xF, np.uint8))
    # ModelOpt's sign bit is (y < 0): -0.0 encodes as 0x0 (ml_dtypes keeps the sign: 0x8);
    # small negatives that round to zero keep 0x8 in both.
    assert codec.encode_e2m1(np.array([-0.0], np.float32))[0] == 0x0
    assert codec.encode_e2m1(np.array([-0.1], np.float32))[0] == 0x8 == ref_e2m1([-0.1])[0]


def test_e2m1_decode_every_nibble(codec):
    nibbles = np.arange(16, dtype=np.uint8)
    ref = nibbles.view(E2M1).astype(np.float32)
    assert np.array_equal(codec.decode_e2m1(nibbles).view(np.uint32), ref.view(np.uint32))
