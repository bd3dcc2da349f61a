/*
 * torchinit's keyed random stream, the fast path: Philox4x32-10 and the transforms to uniform and
 * normal values. It is a plain shared library (no Python API, no Python headers needed to build it):
 * the functions are called through ctypes, which releases the GIL during a call.
 *
 * The stream is specified in docs/keyed_rng.md and implemented a second time, with torch tensor
 * operations, in src/torchinit/rng/keyed.py (the reference, used where this library is not built and
 * on other devices). Both give the same bits: the transforms use only IEEE-754 double operations
 * that are correctly rounded (+ - * / sqrt, integer to double conversion), in the same order, and
 * this file is compiled with -ffp-contract=off so that no multiply-add is fused.
 *
 * Philox4x32-10: Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011.
 * Word layout: word w of the stream keyed (k0, k1) on sub-stream (c2, c3) is word (w mod 4) of the
 * Philox block for the counter (block mod 2^32, block div 2^32, c2, c3), block = w div 4.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define TILE 64 /* blocks per tile: 256 words, computed lane-parallel */

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define TI_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TI_CLONES
#endif

static const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u; /* Philox4x32 multipliers */
static const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u; /* Weyl key increments */

/* log(m) = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m - 1)/(m + 1): coefficients 1/(2k+1), k = 0..8 */
static const double LOG_C[9] = {0x1.0000000000000p+0, 0x1.5555555555555p-2, 0x1.999999999999ap-3,
                                0x1.2492492492492p-3, 0x1.c71c71c71c71cp-4, 0x1.745d1745d1746p-4,
                                0x1.3b13b13b13b14p-4, 0x1.1111111111111p-4, 0x1.e1e1e1e1e1e1ep-5};
/* sin: (-1)^k/(2k+1)!, k = 0..6; cos: (-1)^k/(2k)!, k = 0..7 */
static const double SIN_C[7] = {0x1.0000000000000p+0, -0x1.5555555555555p-3, 0x1.1111111111111p-7,
                                -0x1.a01a01a01a01ap-13, 0x1.71de3a556c734p-19, -0x1.ae64567f544e4p-26,
                                0x1.6124613a86d09p-33};
static const double COS_C[8] = {0x1.0000000000000p+0, -0x1.0000000000000p-1, 0x1.5555555555555p-5,
                                -0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-16, -0x1.27e4fb7789f5cp-22,
                                0x1.1eed8eff8d898p-29, -0x1.93974a8c07c9dp-37};
static const double LN2 = 0x1.62e42fefa39efp-1, SQRT2 = 0x1.6a09e667f3bcdp+0, HALF_PI = 0x1.921fb54442d18p+0;

/* The four words of TILE consecutive blocks, lane-parallel (structure of arrays). */
static inline void philox_tile(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t block0,
                               uint32_t w0[TILE], uint32_t w1[TILE], uint32_t w2[TILE], uint32_t w3[TILE]) {
    for (int t = 0; t < TILE; t++) {
        uint64_t b = block0 + (uint64_t)t;
        uint32_t x0 = (uint32_t)b, x1 = (uint32_t)(b >> 32), x2 = c2, x3 = c3;
        uint32_t a = k0, c = k1;
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)M0 * x0, p1 = (uint64_t)M1 * x2;
            uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ a, y1 = (uint32_t)p1;
            uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3 ^ c, y3 = (uint32_t)p0;
            x0 = y0; x1 = y1; x2 = y2; x3 = y3;
            a += W0; c += W1;
        }
        w0[t] = x0; w1[t] = x1; w2[t] = x2; w3[t] = x3;
    }
}

static inline double as_double(uint64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline uint64_t bits_of(double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

/* An integer below 2^52 as a double, exactly (written with 64-bit lane operations only, which vectorize). */
static inline double small_int(uint64_t v) { return as_double(v | 0x4330000000000000ull) - 0x1p52; }

/* log of the mantissa m of x = m 2^e, m in [sqrt(1/2), sqrt(2)] (x > 0, normal): 2 s (1 + s^2/3 + ...),
 * s = (m - 1)/(m + 1); *e gets e. */
static inline double log_mantissa(double x, double *e_out) {
    uint64_t bits = bits_of(x);
    double e = small_int(bits >> 52) - 1023.0;
    double m = as_double((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    int big = m > SQRT2;
    m = big ? m * 0.5 : m;
    *e_out = big ? e + 1.0 : e;
    double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double p = LOG_C[8];
    for (int k = 7; k >= 0; k--) p = p * s2 + LOG_C[k];
    return (2.0 * s) * p;
}

/* sqrt(-2 log u), u = (a + 1/2) 2^-32 in (0, 1): log u = (e - 32) log 2 + log m, where a + 1/2 = m 2^e
 * with m in [sqrt(1/2), sqrt(2)]. */
static inline double radius(uint64_t a) {
    double e, log_m = log_mantissa(small_int(a) + 0.5, &e);
    double log_u = (e - 32.0) * LN2 + log_m;
    return sqrt(-2.0 * log_u);
}

/* (cos, sin) of the angle q pi/2 + phi, q = b >> 30, phi = (f - 1/2) pi/2 with f = (low 30 bits + 1/2) 2^-30. */
static inline void angle(uint64_t b, double *cos_out, double *sin_out) {
    uint64_t q = b >> 30;
    double phi = (small_int(b & 0x3FFFFFFFu) * 0x1p-30 + (0x1p-31 - 0.5)) * HALF_PI;
    double p2 = phi * phi;
    double sp = SIN_C[6];
    for (int k = 5; k >= 0; k--) sp = sp * p2 + SIN_C[k];
    double cp = COS_C[7];
    for (int k = 6; k >= 0; k--) cp = cp * p2 + COS_C[k];
    double s = phi * sp;
    double x = (q & 1) ? s : cp, y = (q & 1) ? cp : s;
    *cos_out = ((q + 1) & 2) ? -x : x;
    *sin_out = (q & 2) ? -y : y;
}

/* Standard normals z[4 t + j], t < TILE, from a tile of words: Box-Muller on (w0, w1) and (w2, w3). */
static inline void normal_tile(const uint32_t w0[TILE], const uint32_t w1[TILE], const uint32_t w2[TILE],
                               const uint32_t w3[TILE], double z[4 * TILE]) {
    double z0[TILE], z1[TILE], z2[TILE], z3[TILE];
    for (int t = 0; t < TILE; t++) {
        double c, s;
        double r = radius(w0[t]);
        angle(w1[t], &c, &s);
        z0[t] = r * c; z1[t] = r * s;
        r = radius(w2[t]);
        angle(w3[t], &c, &s);
        z2[t] = r * c; z3[t] = r * s;
    }
    for (int t = 0; t < TILE; t++) {
        z[4 * t] = z0[t]; z[4 * t + 1] = z1[t]; z[4 * t + 2] = z2[t]; z[4 * t + 3] = z3[t];
    }
}

static inline void words_tile(const uint32_t w0[TILE], const uint32_t w1[TILE], const uint32_t w2[TILE],
                              const uint32_t w3[TILE], uint32_t w[4 * TILE]) {
    for (int t = 0; t < TILE; t++) {
        w[4 * t] = w0[t]; w[4 * t + 1] = w1[t]; w[4 * t + 2] = w2[t]; w[4 * t + 3] = w3[t];
    }
}

/* The 4 TILE words of the tile that holds word `word`, in stream order; returns the position of `word` in it
 * and sets *take to how many of the n - done words still wanted lie in this tile from there. */
static inline unsigned word_tile(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t word, uint64_t left,
                                 uint32_t w[4 * TILE], uint64_t *take) {
    uint32_t w0[TILE], w1[TILE], w2[TILE], w3[TILE];
    unsigned skip = (unsigned)(word % 4);
    philox_tile(k0, k1, c2, c3, word / 4, w0, w1, w2, w3);
    words_tile(w0, w1, w2, w3, w);
    *take = 4 * TILE - skip < left ? 4 * TILE - skip : left;
    return skip;
}

static inline float below(float high) { /* the largest float < high */
    return nextafterf(high, -INFINITY);
}

/* Words [first, first + n) of the stream. */
TI_CLONES void ti_words(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t first, uint64_t n, uint32_t *out) {
    uint32_t w[4 * TILE];
    uint64_t done = 0, take;
    while (done < n) {
        unsigned skip = word_tile(k0, k1, c2, c3, first + done, n - done, w, &take);
        memcpy(out + done, w + skip, take * sizeof(uint32_t));
        done += take;
    }
}

/* Elements [first, first + n) of mean + std * z in float32 and float64: element i is normal i of the stream. */
#define TI_NORMAL(NAME, TYPE)                                                                                  \
    TI_CLONES void NAME(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t first, uint64_t n,        \
                        double mean, double std, TYPE *out) {                                                  \
        uint32_t w0[TILE], w1[TILE], w2[TILE], w3[TILE];                                                       \
        double z[4 * TILE];                                                                                    \
        uint64_t done = 0;                                                                                     \
        while (done < n) {                                                                                     \
            uint64_t i = first + done;                                                                         \
            unsigned skip = (unsigned)(i % 4);                                                                 \
            philox_tile(k0, k1, c2, c3, i / 4, w0, w1, w2, w3);                                                \
            normal_tile(w0, w1, w2, w3, z);                                                                    \
            uint64_t take = 4 * TILE - skip;                                                                   \
            if (take > n - done) take = n - done;                                                              \
            for (uint64_t j = 0; j < take; j++) out[done + j] = (TYPE)(mean + std * z[skip + j]);              \
            done += take;                                                                                      \
        }                                                                                                      \
    }

TI_NORMAL(ti_normal_f32, float)
TI_NORMAL(ti_normal_f64, double)

/* Uniform on [low, high): float32 element i from word i (its top 24 bits), float64 element i from
 * words 2i and 2i+1 (53 bits); low + (high - low) u in double, rounded; a result that rounds up to
 * high becomes the largest value below it. */
TI_CLONES void ti_uniform_f32(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t first, uint64_t n,
                              double low, double high, float *out) {
    uint32_t w[4 * TILE];
    double span = high - low;
    float top = (float)high, last = below(top);
    uint64_t done = 0, take;
    while (done < n) {
        unsigned skip = word_tile(k0, k1, c2, c3, first + done, n - done, w, &take);
        for (uint64_t j = 0; j < take; j++) {
            float v = (float)(low + span * ((double)(w[skip + j] >> 8) * 0x1p-24));
            out[done + j] = v >= top ? last : v;
        }
        done += take;
    }
}

TI_CLONES void ti_uniform_f64(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t first, uint64_t n,
                              double low, double high, double *out) {
    uint32_t w0[TILE], w1[TILE], w2[TILE], w3[TILE], w[4 * TILE];
    double span = high - low, last = nextafter(high, -INFINITY);
    uint64_t done = 0;
    while (done < n) {
        uint64_t i = first + done; /* element i: words 2i, 2i+1, in block i/2 */
        unsigned skip = (unsigned)(i % 2);
        philox_tile(k0, k1, c2, c3, i / 2, w0, w1, w2, w3);
        words_tile(w0, w1, w2, w3, w);
        uint64_t take = 2 * TILE - skip;
        if (take > n - done) take = n - done;
        for (uint64_t j = 0; j < take; j++) {
            uint64_t hi = w[2 * (skip + j)], lo = w[2 * (skip + j) + 1];
            double u = (double)((hi << 21) | (lo >> 11)) * 0x1p-53;
            double v = low + span * u;
            out[done + j] = v >= high ? last : v;
        }
        done += take;
    }
}

/* The truncated normal's polynomial inverse CDF (torchinit.schemes.truncnorm): element i is
 * x = mean + y H(a0 + a1 log(1 - y^2)), y = y_lo + (y_hi - y_lo) (word_i + 1/2) 2^-32, H(s) = sum_k c_k s^k
 * (Horner from the top), in double; rounded to float32 and clamped to [lo, hi]. */
TI_CLONES void ti_trunc_poly_f32(uint32_t k0, uint32_t k1, uint32_t c2, uint32_t c3, uint64_t first, uint64_t n,
                                 double y_lo, double y_hi, double mean, double a0, double a1,
                                 const double *coeffs, int32_t degree, float lo, float hi, float *out) {
    uint32_t w[4 * TILE];
    double yv[4 * TILE], sv[4 * TILE], pv[4 * TILE], c[32];
    int32_t d = degree < 31 ? degree : 31;
    for (int32_t k = 0; k <= d; k++) c[k] = coeffs[k];
    double span = y_hi - y_lo;
    uint64_t done = 0, take;
    while (done < n) {
        unsigned skip = word_tile(k0, k1, c2, c3, first + done, n - done, w, &take);
        for (int t = 0; t < 4 * TILE; t++) { /* lane-parallel: y, then s = a0 + a1 log(1 - y^2) */
            double y = y_lo + span * ((small_int(w[t]) + 0.5) * 0x1p-32), e;
            double log_m = log_mantissa(1.0 - y * y, &e);
            yv[t] = y;
            sv[t] = a0 + a1 * (e * LN2 + log_m);
            pv[t] = c[d];
        }
        for (int32_t k = d - 1; k >= 0; k--)
            for (int t = 0; t < 4 * TILE; t++) pv[t] = pv[t] * sv[t] + c[k];
        for (uint64_t j = 0; j < take; j++) {
            float v = (float)(mean + yv[skip + j] * pv[skip + j]);
            v = v < lo ? lo : v;
            out[done + j] = v > hi ? hi : v;
        }
        done += take;
    }
}
