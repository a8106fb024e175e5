"""NumPy model of gdcore's 16-bit storage (csrc/gd_half.h), independent of
the C code: rounding float64/float32 values to bfloat16 and float16 to
nearest, stochastically (with the same counter-based random bits) and with a
Kahan compensation; distances in ulps.  Used by tests/test_half.py."""
import numpy as np

ml_dtypes = __import__("pytest").importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x):
    x = np.uint64(x)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x = x * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def stream_key(seed, stream, step, high=0):
    with np.errstate(over="ignore"):
        k = _mix64(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    k = _mix64(k ^ np.uint64(stream))
    k = _mix64(k ^ np.uint64(step))
    k = _mix64(k ^ np.uint64(high))
    return np.uint32(int(k) >> 32)


def random_bits(key, index):
    """32 random bits per element index (uint32 array)."""
    x = np.asarray(index, dtype=np.uint32) ^ np.uint32(key)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = (x * np.uint32(0x21F0AAAD)).astype(np.uint32)
        x = x ^ (x >> np.uint32(15))
        x = (x * np.uint32(0x735A2D97)).astype(np.uint32)
        x = x ^ (x >> np.uint32(15))
    return x


def random16(key, index):
    """16 random bits per bfloat16 element index: the low half of the hash
    of index // 2 for an even index, its high half for an odd one."""
    index = np.asarray(index, dtype=np.uint32)
    pair = random_bits(key, index >> np.uint32(1))
    return np.where(index & np.uint32(1), pair >> np.uint32(16), pair & np.uint32(0xFFFF))


def element_bits(dtype, key, index):
    """The random bits gdcore draws for each element of a 16-bit param."""
    return (random16 if dtype == BF16 else random_bits)(key, index)


def nearest(x, dtype):
    """x (any float array) rounded to nearest even in dtype, by way of
    float64 (exact for float32 inputs; for float64 inputs this is the
    correctly rounded value: ml_dtypes and NumPy round float64 directly)."""
    return np.asarray(x, np.float64).astype(dtype)


def stochastic(x, dtype, bits):
    """Stochastic rounding of values x (float64) to dtype, given each
    element's random bits (element_bits: 16 for bfloat16, 32 for float16),
    as gd_half.h does: with the dropped fraction f of an ulp, round away
    from zero iff f * 2^16 + bits >= 2^16 (bfloat16), f * 2^13 + (bits >> 19)
    >= 2^13 (normal float16), f * 2^24 > (bits >> 8) (float16 below 2^-14)."""
    x = np.asarray(x, np.float64)
    bits = np.asarray(bits, np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):
        near = x.astype(dtype)
        lo = np.where(np.abs(near.astype(np.float64)) > np.abs(x), _step(near, dtype, -1), near)
        lo64 = lo.astype(np.float64)
        hi = _step(lo, dtype, +1)
        hi64 = hi.astype(np.float64)
        below = _step(lo, dtype, -1).astype(np.float64)
        ulp = np.where(np.isfinite(hi64), np.abs(hi64 - lo64), np.abs(lo64 - below))
        fraction = np.where(ulp > 0, (np.abs(x) - np.abs(lo64)) / ulp, 0.0)
    if dtype == BF16:
        up = fraction * 2.0**16 + bits.astype(np.float64) >= 2.0**16
    else:
        tiny = np.abs(x) < 2.0**-14
        up = np.where(tiny, fraction * 2.0**24 > (bits >> np.uint32(8)).astype(np.float64),
                      fraction * 2.0**13 + (bits >> np.uint32(19)).astype(np.float64)
                      >= 2.0**13)
    out = np.where(up, hi, lo)
    special = ~np.isfinite(x) | (x == 0)
    return np.where(special, near, out).astype(dtype)


def _step(h, dtype, direction):
    """The 16-bit neighbour of h one ulp away from zero (+1) or towards it
    (-1), keeping the sign (bit arithmetic on the magnitude)."""
    bits = h.view(np.uint16).astype(np.int32)
    sign = bits & 0x8000
    mag = bits & 0x7FFF
    mag = np.clip(mag + direction, 0, 0x7FFF)
    return (sign | mag).astype(np.uint16).view(dtype)


def ulps_apart(a, b):
    """Distance in ulps between 16-bit arrays of one dtype (NaN = NaN: 0;
    NaN vs number: large)."""
    def order(h):
        bits = h.view(np.uint16).astype(np.int64)
        mag = bits & 0x7FFF
        return np.where(bits & 0x8000, -mag, mag)
    nan_a = np.isnan(a.astype(np.float32))
    nan_b = np.isnan(b.astype(np.float32))
    d = np.abs(order(a) - order(b))
    return np.where(nan_a & nan_b, 0, np.where(nan_a | nan_b, 1 << 20, d))


# float32 math's absolute error, in units of the buffer's largest value (the
# atol of tests/conftest.py TOLERANCES for float32): where a result cancels
# to near zero, float32 and float64 (or torch's float32 formula) may land
# on different tiny values, many ulps of the tiny value apart.
ATOL32 = 8e-6


def far_elements(got, want, dtype):
    """Mask of elements of 16-bit `got` more than 1 ulp from `want` (float64
    values, rounded to nearest in dtype) and, beyond that, more than ATOL32
    times the buffer's largest |want| away."""
    want = np.asarray(want, np.float64)
    far = ulps_apart(got, nearest(want, dtype)) > 1
    finite = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0)))
    with np.errstate(invalid="ignore"):
        near_abs = np.abs(got.astype(np.float64) - want) <= ATOL32 * scale
    return far & ~near_abs
