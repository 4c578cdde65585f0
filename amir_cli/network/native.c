/* Fused CPU kernels for amir's inference: each does in one or two passes over memory what
 * PyTorch's operators do in several. Maps are channels-last (NHWC)
 * float32; the inner loops vectorise (over channels, or over pixels side by side), the outer ones
 * run on OpenMP threads (the runtime PyTorch loaded, so its thread count applies). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

/* exp(x) without libm calls, so that loops vectorise: 2^n * e^r, |r| <= ln2 / 2, with a degree-6
 * polynomial for e^r (relative error about 2e-7); x is clamped to [-87, 88]. */
static inline float exp_clamped(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(x * 1.44269504f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* The error function as z * P(z^2) / Q(z^2) on [-4, 4] and +-1 beyond, a rational minimax fit made
 * for amir (absolute error 7e-8 in exact arithmetic, 4e-7 in float32). No exp, one division: GELU
 * with it is about twice as fast as the usual exp-based forms. */
static inline float erf_rational(float z) {
    z = z < -4.0f ? -4.0f : (z > 4.0f ? 4.0f : z);
    float t = z * z;
    float p = 1.919267481e-08f;
    p = p * t - 1.971035305e-06f;
    p = p * t + 1.519786957e-04f;
    p = p * t + 4.157711519e-03f;
    p = p * t + 5.201315344e-02f;
    p = p * t + 2.108799922e-01f;
    p = p * t + 1.128378728e+00f;
    float q = 1.064214753e-03f;
    q = q * t + 1.528018232e-02f;
    q = q * t + 1.195193826e-01f;
    q = q * t + 5.202158799e-01f;
    q = q * t + 1.0f;
    return z * p / q;
}

static inline float gelu(float x) { return 0.5f * x * (1.0f + erf_rational(x * 0.70710678f)); }

/* log(x) for x > 0 without libm calls: x = m * 2^e with m in [sqrt(1/2), sqrt(2)), then a degree-9
 * polynomial in m - 1 (relative error about 1e-7). */
static inline float log_positive(float x) {
    union { float f; int32_t i; } bits = {.f = x};
    int32_t e = ((bits.i >> 23) & 0xff) - 126;
    bits.i = (bits.i & 0x007fffff) | 0x3f000000;  /* mantissa in [0.5, 1) */
    float m = bits.f;
    int small = m < 0.70710678f;
    e -= small;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    p = p * m * z;
    float fe = (float)e;
    p += fe * -2.12194440e-4f;
    p -= 0.5f * z;
    return m + p + fe * 0.693359375f;
}

/* Eight floats side by side: a GCC/Clang vector type (one AVX register, two SSE or NEON ones) */
typedef float v8 __attribute__((vector_size(32)));
#define FL 16  /* pixels computed side by side, and the lanes of each partial sum */
/* The vectors the arithmetic runs on: FL floats in one AVX-512 register, else two of eight (a
 * wider generic vector than the machine's would go through memory) */
#ifdef __AVX512F__
#define VL 16
#else
#define VL 8
#endif
#define NV (FL / VL)  /* vectors per FL lanes */
#define TILE (8 / NV)  /* output rows of a product held in registers: eight vectors */
typedef float vec __attribute__((vector_size(4 * VL)));

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline vec loadv(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void storev(float *p, vec v) { memcpy(p, &v, sizeof v); }

/* acc (FL lanes) += a * b, lane by lane (FL each) */
static inline void add_products(float *acc, const float *a, const float *b) {
    for (int v = 0; v < NV; v++) storev(acc + v * VL, loadv(acc + v * VL) + loadv(a + v * VL) * loadv(b + v * VL));
}

/* acc (FL lanes) += a */
static inline void add_lanes(float *acc, const float *a) {
    for (int v = 0; v < NV; v++) storev(acc + v * VL, loadv(acc + v * VL) + loadv(a + v * VL));
}

/* Eight vectors transposed in place: r[i][j] <- r[j][i] */
static inline void transpose8(v8 r[8]) {
#ifdef __AVX__
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps((__m256)r[i], (__m256)r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps((__m256)r[i], (__m256)r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = (v8)_mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = (v8)_mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
#else
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++) {
            const float t = r[i][j];
            r[i][j] = r[j][i];
            r[j][i] = t;
        }
#endif
}

/* The pixels row[0..lanes) (`channels` each) into the planar block xt (channels x FL); lanes past them are 0 */
static void rows_to_planar(const float *const row[FL], int64_t channels, int64_t lanes, float *xt) {
    int64_t c0 = 0;
    for (; c0 + 8 <= channels; c0 += 8)
        for (int64_t l0 = 0; l0 < FL; l0 += 8) {
            v8 r[8];
            for (int64_t p = 0; p < 8; p++) r[p] = l0 + p < lanes ? load8(row[l0 + p] + c0) : (v8){};
            transpose8(r);
            for (int i = 0; i < 8; i++) store8(xt + (c0 + i) * FL + l0, r[i]);
        }
    for (int64_t c = c0; c < channels; c++)
        for (int64_t l = 0; l < FL; l++) xt[c * FL + l] = l < lanes ? row[l][c] : 0.0f;
}

/* row[l] = add[l] + lane l of the planar block (channels x FL), for the pixels l < lanes (`channels`
 * each; add[l] may be row[l], or NULL for none) */
static void planar_to_rows(const float *planar, int64_t channels, int64_t lanes, const float *const add[FL],
                           float *const row[FL]) {
    int64_t c0 = 0;
    for (; c0 + 8 <= channels; c0 += 8)
        for (int64_t l0 = 0; l0 < lanes; l0 += 8) {
            v8 r[8];
            for (int i = 0; i < 8; i++) r[i] = load8(planar + (c0 + i) * FL + l0);
            transpose8(r);
            for (int64_t p = 0; p < 8 && l0 + p < lanes; p++)
                store8(row[l0 + p] + c0, add[l0 + p] ? r[p] + load8(add[l0 + p] + c0) : r[p]);
        }
    for (int64_t l = 0; l < lanes; l++)
        for (int64_t c = c0; c < channels; c++) row[l][c] = (add[l] ? add[l][c] : 0.0f) + planar[c * FL + l];
}

/* rows `n_out` of w (n_out x n_in) times the FL-pixel planar block `in` (n_in x FL), plus bias, into
 * `out` (n_out rows `out_stride` apart), TILE rows at a time in registers */
static void product_lanes(const float *w, const float *bias, const float *in, int64_t n_in, int64_t n_out,
                          float *out, int64_t out_stride) {
    int64_t o = 0;
    for (; o + TILE <= n_out; o += TILE) {
        vec a[TILE][NV];
        for (int q = 0; q < TILE; q++)
            for (int v = 0; v < NV; v++) a[q][v] = (vec){} + (bias ? bias[o + q] : 0.0f);
        for (int64_t i = 0; i < n_in; i++) {
            vec u[NV];
            for (int v = 0; v < NV; v++) u[v] = loadv(in + i * FL + v * VL);
            for (int q = 0; q < TILE; q++)
                for (int v = 0; v < NV; v++) a[q][v] += w[(o + q) * n_in + i] * u[v];
        }
        for (int q = 0; q < TILE; q++)
            for (int v = 0; v < NV; v++) storev(out + (o + q) * out_stride + v * VL, a[q][v]);
    }
    for (; o < n_out; o++) {
        vec a[NV];
        for (int v = 0; v < NV; v++) a[v] = (vec){} + (bias ? bias[o] : 0.0f);
        for (int64_t i = 0; i < n_in; i++)
            for (int v = 0; v < NV; v++) a[v] += w[o * n_in + i] * loadv(in + i * FL + v * VL);
        for (int v = 0; v < NV; v++) storev(out + o * out_stride + v * VL, a[v]);
    }
}

/* Spatial routing's mixture of experts on `n` pixels of `channels` features (rows of `tokens`):
 * each pixel's gate logits are tokens @ gate_w (channels x experts) + cue_logits of its image
 * (`per_image` pixels each; the first pixel here is pixel `first` of the batch), its `k` largest choose the experts, their softmax the gates, and the
 * output is log(sum of gate * exp(expert(pixel))) (a zero sum floored at `floor`). Expert e is
 * w2[e] @ GELU(w1[e] @ x + b1[e]) + b2[e], with w1 (experts, hidden, channels) and w2 (experts,
 * channels, hidden). `chosen`, `order` and `gates` (n * k each) are work space; `out` (n * channels)
 * holds the sum before its log. */
void amir_experts(const float *tokens, const float *gate_w, const float *cue_logits, const float *w1,
                  const float *b1, const float *w2, const float *b2, float *out, int32_t *chosen, int32_t *order,
                  float *gates, int64_t n, int64_t first, int64_t per_image, int64_t channels, int64_t hidden,
                  int64_t experts, int64_t k, float floor) {
    int64_t start[experts + 1];
    memset(start, 0, sizeof(start));
    /* gating: the k largest logits of each pixel (the first of equal ones), softmax over them */
    #pragma omp parallel
    {
        float logits[experts * FL], xt[channels * FL];
        const float *row[FL];
        #pragma omp for schedule(static)
        for (int64_t block = 0; block < n; block += FL) {
            int64_t lanes = n - block < FL ? n - block : FL;
            for (int64_t l = 0; l < lanes; l++) row[l] = tokens + (block + l) * channels;
            rows_to_planar(row, channels, lanes, xt);
            for (int64_t e = 0; e < experts; e++) {
                float *logit = logits + e * FL;
                for (int64_t l = 0; l < FL; l++)
                    logit[l] = l < lanes ? cue_logits[((first + block + l) / per_image) * experts + e] : 0.0f;
                for (int64_t c = 0; c < channels; c++) {
                    const float weight = gate_w[c * experts + e];
                    #pragma omp simd
                    for (int l = 0; l < FL; l++) logit[l] += xt[c * FL + l] * weight;
                }
            }
            float top[FL], largest[FL], total[FL];
            int32_t best[FL];
            for (int64_t r = 0; r < k; r++) {
                #pragma omp simd
                for (int l = 0; l < FL; l++) { top[l] = -INFINITY; best[l] = 0; }
                for (int64_t e = 0; e < experts; e++) {
                    #pragma omp simd
                    for (int l = 0; l < FL; l++) {
                        int better = logits[e * FL + l] > top[l];
                        top[l] = better ? logits[e * FL + l] : top[l];
                        best[l] = better ? (int32_t)e : best[l];
                    }
                }
                for (int64_t e = 0; e < experts; e++) {  /* a chosen expert leaves the race */
                    #pragma omp simd
                    for (int l = 0; l < FL; l++) logits[e * FL + l] = best[l] == e ? -INFINITY : logits[e * FL + l];
                }
                #pragma omp simd
                for (int l = 0; l < FL; l++) {
                    if (r == 0) { largest[l] = top[l]; total[l] = 0.0f; }
                    top[l] = exp_clamped(top[l] - largest[l]);
                    total[l] += top[l];
                }
                for (int64_t l = 0; l < lanes; l++) {
                    chosen[(block + l) * k + r] = best[l];
                    gates[(block + l) * k + r] = top[l];
                }
            }
            for (int64_t l = 0; l < lanes; l++)
                for (int64_t r = 0; r < k; r++) gates[(block + l) * k + r] /= total[l];
        }
    }
    /* the (pixel, rank) pairs grouped by expert */
    for (int64_t i = 0; i < n * k; i++) start[chosen[i] + 1]++;
    for (int64_t e = 0; e < experts; e++) start[e + 1] += start[e];
    {
        int64_t fill[experts];
        memcpy(fill, start, sizeof(fill));
        for (int64_t i = 0; i < n * k; i++) order[fill[chosen[i]]++] = (int32_t)i;
    }
    float *mixed = out;
    memset(mixed, 0, sizeof(float) * n * channels);
    /* each expert on its pixels, FL at a time; a pixel meets each expert at most once, so the
     * adds into `mixed` within one expert never collide */
    for (int64_t e = 0; e < experts; e++) {
        const float *w1e = w1 + e * hidden * channels, *b1e = b1 + e * hidden;
        const float *w2e = w2 + e * channels * hidden, *b2e = b2 + e * channels;
        int64_t count = start[e + 1] - start[e];
        #pragma omp parallel
        {
            float xt[channels * FL], ht[hidden * FL], ot[channels * FL];
            const float *in[FL];
            float *sum[FL];
            #pragma omp for schedule(static)
            for (int64_t block = 0; block < count; block += FL) {
                const int64_t lanes = count - block < FL ? count - block : FL;
                float gate[FL];
                for (int l = 0; l < FL; l++) {
                    int64_t slot = order[start[e] + (l < lanes ? block + l : block)];
                    in[l] = tokens + slot / k * channels;
                    sum[l] = mixed + slot / k * channels;
                    gate[l] = l < lanes ? gates[slot] : 0.0f;
                }
                rows_to_planar(in, channels, lanes, xt);
                product_lanes(w1e, b1e, xt, channels, hidden, ht, FL);
                #pragma omp simd
                for (int64_t i = 0; i < hidden * FL; i++) ht[i] = gelu(ht[i]);
                product_lanes(w2e, b2e, ht, hidden, channels, ot, FL);
                for (int64_t c = 0; c < channels; c++) {
                    float *o = ot + c * FL;
                    #pragma omp simd
                    for (int l = 0; l < FL; l++) o[l] = gate[l] * exp_clamped(o[l]);
                }
                planar_to_rows(ot, channels, lanes, (const float *const *)sum, sum);
            }
        }
    }
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n * channels; i++) out[i] = log_positive(mixed[i] == 0.0f ? floor : mixed[i]);
}

/* A transformer block's halves stream rows: LayerNorm of x's pixels, a 1x1 expansion to `wide`
 * channels and a depthwise 3x3 convolution (zero padding), then a back end per block of pixels.
 * Each band of rows is expanded once, row by row, into a ring of three planar rows (channel, then
 * pixel) held by its thread, so the expanded map never exists: `work` holds threads * wide *
 * (3 * stride + FL) floats, each thread's ring and its block's depthwise outputs (`stride`: a
 * row's pixels in whole blocks, and a zero each side). A bias may be NULL; without ln_b the
 * LayerNorm is the bias-free variant (the deviation divides, the mean stays). */

/* LayerNorm of `lanes` pixels (NHWC, `channels` each) into the planar block `n`, computed across
 * the pixels side by side; lanes past them are 0. Where `cen` is given (the backward pass), it also
 * keeps what the gradient needs: the centred values (x - mean) * rstd into cen, the normalised ones
 * before weight and bias into nh (cen, or x * rstd without a bias) and rstd per lane. */
static void norm_lanes(const float *x, const float *ln_w, const float *ln_b, float eps, int64_t channels,
                       int64_t lanes, float *n, float *nh, float *cen, float *rstd) {
    const float *row[FL];
    for (int64_t l = 0; l < lanes; l++) row[l] = x + l * channels;
    rows_to_planar(row, channels, lanes, n);
    for (int64_t h = 0; h < FL; h += VL) {
        vec sum = {}, dev = {};
        for (int64_t c = 0; c < channels; c++) sum += loadv(n + c * FL + h);
        const vec mean = sum / (float)channels;
        for (int64_t c = 0; c < channels; c++) {
            const vec d = loadv(n + c * FL + h) - mean;
            dev += d * d;
        }
        vec r;
        for (int l = 0; l < VL; l++) r[l] = 1.0f / sqrtf(dev[l] / (float)channels + eps);
        if (cen) storev(rstd + h, r);
        for (int64_t c = 0; c < channels; c++) {
            const vec v = loadv(n + c * FL + h), plain = ln_b ? (v - mean) * r : v * r;
            if (cen) {
                storev(cen + c * FL + h, (v - mean) * r);
                storev(nh + c * FL + h, plain);
            }
            storev(n + c * FL + h, ln_b ? plain * ln_w[c] + ln_b[c] : plain * ln_w[c]);
        }
    }
}

/* The sum over bands [first, last) and their FL lanes of entry i of the bands' partial sums
 * (`size` entries of FL floats a band): the bands in order lane by lane, then the lanes in order */
static float band_sum(const float *partial, int64_t size, int64_t i, int64_t first, int64_t last) {
    vec lanes[NV] = {};
    for (int64_t u = first; u < last; u++)
        for (int v = 0; v < NV; v++) lanes[v] += loadv(partial + (u * size + i) * FL + v * VL);
    float sum = 0.0f;
    for (int v = 0; v < NV; v++)
        for (int l = 0; l < VL; l++) sum += lanes[v][l];
    return sum;
}

typedef struct {
    const float *x, *ln_w, *ln_b, *w_in, *b_in, *w_dw, *b_dw;
    float eps;
    int64_t batch, height, width, channels, wide, threads;
} stream_t;

/* The back end: given the depthwise outputs `d` (wide x FL, planar) of pixels x0.. (`lanes` of
 * them) of row r of an image, computed by band `unit` */
typedef void (*back_t)(const void *ctx, const stream_t *s, int64_t unit, int64_t image, int64_t r, int64_t x0,
                       int64_t lanes, float *d);

/* Bands per image: as many as threads, fewer where images alone share out evenly (batch * bands a
 * multiple of threads), at most one per row */
static int64_t bands_per_image(const stream_t *s) {
    int64_t a = s->batch, b = s->threads;
    while (b) { int64_t t = a % b; a = b; b = t; }
    const int64_t bands = s->threads / a;
    return bands > s->height ? s->height : bands;
}

/* A row's blocks of FL pixels */
static int64_t blocks_of(int64_t width) { return (width + FL - 1) / FL; }

/* A planar row's floats: its pixels in whole blocks of FL, and a zero each side */
static int64_t row_stride(int64_t width) { return blocks_of(width) * FL + 2; }

/* The floats of `work` each thread of `stream` holds: its ring of three rows, then a block's
 * depthwise outputs */
static int64_t stream_floats(const stream_t *s) { return s->wide * (3 * row_stride(s->width) + FL); }

/* The floats of `amir_block_half`'s `work` */
int64_t amir_block_half_work(int64_t width, int64_t wide, int64_t threads) {
    const stream_t s = {.width = width, .wide = wide};
    return threads * stream_floats(&s);
}

/* Row y of the expansion P = w_in @ LayerNorm(x) + b_in of an image into a planar ring slot
 * (wide rows of `stride` floats, the row's pixels from index 1); zeros outside the image and
 * around its pixels, the depthwise convolution's padding */
static void expand_row(const stream_t *s, const float *img, int64_t y, int64_t stride, float *slot, float *xt) {
    const int64_t C = s->channels, wide = s->wide, width = s->width;
    if (y < 0 || y >= s->height) {
        memset(slot, 0, sizeof(float) * wide * stride);
        return;
    }
    for (int64_t x0 = 0; x0 < width; x0 += FL) {
        const int64_t lanes = width - x0 < FL ? width - x0 : FL;
        norm_lanes(img + (y * width + x0) * C, s->ln_w, s->ln_b, s->eps, C, lanes, xt, NULL, NULL, NULL);
        product_lanes(s->w_in, s->b_in, xt, C, wide, slot + 1 + x0, stride);
    }
    for (int64_t j = 0; j < wide; j++) {
        float *row = slot + j * stride;
        row[0] = 0.0f;
        for (int64_t i = 1 + width; i < stride; i++) row[i] = 0.0f;
    }
}

/* The depthwise convolution (plus b_dw) at pixels x0.. of a row, from the ring slots of the rows
 * above, at and below it, into the planar block d (wide x FL) */
static void depthwise(const stream_t *s, const float *const rows[3], int64_t stride, int64_t x0, float *d) {
    for (int64_t ch = 0; ch < s->wide; ch++) {
        const float *k = s->w_dw + ch * 9;
        vec a[NV];
        for (int v = 0; v < NV; v++) a[v] = (vec){} + (s->b_dw ? s->b_dw[ch] : 0.0f);
        for (int dy = 0; dy < 3; dy++) {
            const float *p = rows[dy] + ch * stride + x0;
            for (int dx = 0; dx < 3; dx++)
                for (int v = 0; v < NV; v++) a[v] += k[dy * 3 + dx] * loadv(p + dx + v * VL);
        }
        for (int v = 0; v < NV; v++) storev(d + ch * FL + v * VL, a[v]);
    }
}

static void stream(const stream_t *s, float *work, back_t back, const void *ctx) {
    const int64_t C = s->channels, wide = s->wide, width = s->width, height = s->height;
    const int64_t stride = row_stride(width), bands = bands_per_image(s);
    const int64_t band = (height + bands - 1) / bands, units = s->batch * bands;
    #pragma omp parallel num_threads((int)s->threads)
    {
        float *ring = work + omp_get_thread_num() * stream_floats(s), *d = ring + 3 * wide * stride;
        float xt[C * FL];
        #pragma omp for schedule(static)
        for (int64_t unit = 0; unit < units; unit++) {
            const int64_t image = unit / bands, y0 = unit % bands * band;
            const int64_t y1 = y0 + band < height ? y0 + band : height;
            const float *img = s->x + image * height * width * C;
            for (int64_t y = y0 - 1; y <= y1; y++) {
                expand_row(s, img, y, stride, ring + (y + 3) % 3 * wide * stride, xt);
                if (y - 1 < y0) continue;
                /* row r = y - 1 from the slots of rows r - 1, r, r + 1 */
                const int64_t r = y - 1;
                const float *rows[3] = {ring + (r + 2) % 3 * wide * stride, ring + r % 3 * wide * stride,
                                        ring + (r + 1) % 3 * wide * stride};
                for (int64_t x0 = 0; x0 < width; x0 += FL) {
                    depthwise(s, rows, stride, x0, d);
                    back(ctx, s, unit, image, r, x0, width - x0 < FL ? width - x0 : FL, d);
                }
            }
        }
    }
}

typedef struct {
    const float *w_out, *b_out;
    int64_t w_image, gated;
    float *out;
} project_t;

/* out = x + b_out + w_out @ h for the block's pixels, h being the depthwise outputs, or with
 * `gated` GELU(first half) * second half of them; w_out (channels x h's channels) moves on by
 * w_image floats from one image to the next */
static void back_project(const void *ctx, const stream_t *s, int64_t unit, int64_t image, int64_t r, int64_t x0,
                         int64_t lanes, float *d) {
    (void)unit;
    const project_t *p = ctx;
    const int64_t C = s->channels, hidden = p->gated ? s->wide / 2 : s->wide;
    float projected[C * FL];
    if (p->gated)
        for (int64_t j = 0; j < hidden; j++) {
            float *gate = d + j * FL;
            const float *value = d + (hidden + j) * FL;
            #pragma omp simd
            for (int l = 0; l < FL; l++) gate[l] = gelu(gate[l]) * value[l];
        }
    product_lanes(p->w_out + image * p->w_image, p->b_out, d, hidden, C, projected, FL);
    const int64_t at = ((image * s->height + r) * s->width + x0) * C;
    const float *res = s->x + at;
    float *o = p->out + at;
    const float *add[FL];
    float *row[FL];
    for (int64_t l = 0; l < lanes; l++) {
        add[l] = res + l * C;
        row[l] = o + l * C;
    }
    planar_to_rows(projected, C, lanes, add, row);
}

/* A block half with a projection after the depthwise convolution: the feed-forward (`gated`, wide
 * = 2 * hidden) or the attention's output, v's channels times each image's matrix (w_image =
 * channels^2). */
void amir_block_half(const float *x, const float *ln_w, const float *ln_b, float eps, const float *w_in,
                     const float *b_in, const float *w_dw, const float *b_dw, const float *w_out, int64_t w_image,
                     const float *b_out, int64_t gated, float *out, float *work, int64_t batch, int64_t height,
                     int64_t width, int64_t channels, int64_t wide, int64_t threads) {
    const stream_t s = {x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, eps, batch, height, width, channels, wide, threads};
    const project_t p = {w_out, b_out, w_image, gated, out};
    stream(&s, work, back_project, &p);
}

typedef struct {
    int64_t heads;
    float *partial, *rows;  /* rows: each thread's depthwise outputs of one row, block after block */
} gram_t;

/* A tile of products held in registers over a run of blocks, GI x GJ entries: sixteen of the 32
 * AVX-512 registers, or eight of the 16 AVX ones */
#define GI 4
#define GJ (NV == 1 ? 4 : 1)
#define HELD_BLOCKS 8  /* blocks of pixels whose products a tile sums before it is stored (at least) */

/* acc[i * n_b + j] (FL lanes) += the sum over `blocks` blocks (a row's, or several rows') of a_i *
 * b_j lane by lane, the planar rows a_i at a + i * FL and b_j at b + j * FL in each block, blocks
 * `step` floats apart: a tile of entries at a time, so that each is read and written once a call */
static void row_products(float *acc, const float *a, int64_t n_a, const float *b, int64_t n_b, int64_t blocks,
                         int64_t step) {
    for (int64_t i0 = 0; i0 < n_a; i0 += GI)
        for (int64_t j0 = 0; j0 < n_b; j0 += GJ) {
            int64_t ai[GI], bj[GJ];  /* a tile past the edge repeats the last row or column */
            for (int u = 0; u < GI; u++) ai[u] = (i0 + u < n_a ? i0 + u : n_a - 1) * FL;
            for (int w = 0; w < GJ; w++) bj[w] = (j0 + w < n_b ? j0 + w : n_b - 1) * FL;
            vec t[GI][GJ][NV] = {};
            for (int64_t k = 0; k < blocks; k++)
                for (int v = 0; v < NV; v++) {
                    vec bv[GJ];
                    for (int w = 0; w < GJ; w++) bv[w] = loadv(b + k * step + bj[w] + v * VL);
                    for (int u = 0; u < GI; u++) {
                        const vec av = loadv(a + k * step + ai[u] + v * VL);
                        for (int w = 0; w < GJ; w++) t[u][w][v] += av * bv[w];
                    }
                }
            for (int u = 0; u < GI && i0 + u < n_a; u++)
                for (int w = 0; w < GJ && j0 + w < n_b; w++) {
                    float *e = acc + ((i0 + u) * n_b + j0 + w) * FL;
                    for (int v = 0; v < NV; v++) storev(e + v * VL, loadv(e + v * VL) + t[u][w][v]);
                }
        }
}

/* Keeps the block's depthwise outputs; at the row's last block, adds the row's q^T k per head and
 * the squares of q's and k's channels (q the first half of the outputs, k the second) to the
 * band's partial sums, FL lanes each */
static void back_gram(const void *ctx, const stream_t *s, int64_t unit, int64_t image, int64_t r, int64_t x0,
                      int64_t lanes, float *d) {
    (void)image, (void)r;
    const gram_t *g = ctx;
    const int64_t C = s->channels, c = C / g->heads, wide = 2 * C, blocks = blocks_of(s->width);
    float *row = g->rows + omp_get_thread_num() * wide * blocks * FL, *block = row + x0 / FL * wide * FL;
    memcpy(block, d, sizeof(float) * wide * FL);
    if (lanes < FL)  /* the depthwise outputs past the row's end are not pixels */
        for (int64_t ch = 0; ch < wide; ch++)
            for (int64_t l = lanes; l < FL; l++) block[ch * FL + l] = 0.0f;
    if (x0 + lanes < s->width) return;
    float *acc = g->partial + unit * (g->heads * c * c + wide) * FL, *sq = acc + g->heads * c * c * FL;
    for (int64_t h = 0; h < g->heads; h++)
        row_products(acc + h * c * c * FL, row + h * c * FL, c, row + (C + h * c) * FL, c, blocks, wide * FL);
    for (int64_t ch = 0; ch < wide; ch++) {
        vec t[NV] = {};
        for (const float *p = row + ch * FL; p < row + blocks * wide * FL; p += wide * FL)
            for (int v = 0; v < NV; v++) t[v] += loadv(p + v * VL) * loadv(p + v * VL);
        for (int v = 0; v < NV; v++) storev(sq + ch * FL + v * VL, loadv(sq + ch * FL + v * VL) + t[v]);
    }
}

/* The space `amir_attention_gram` takes, in floats: space[0] its `work`, the streams' rings, then
 * each thread's row of depthwise outputs; space[1] its `partial`, the sums of each band, FL lanes
 * each */
void amir_attention_gram_space(int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t heads,
                               int64_t threads, int64_t *space) {
    const stream_t s = {.batch = batch, .height = height, .width = width, .wide = 2 * channels, .threads = threads};
    const int64_t c = channels / heads;
    space[0] = threads * (stream_floats(&s) + 2 * channels * blocks_of(width) * FL);
    space[1] = batch * bands_per_image(&s) * (heads * c * c + 2 * channels) * FL;
}

/* The attention's Gram matrices per head, gram (batch, heads, c, c), and the sums of squares of q's
 * channels then k's, squares (batch, 2 * channels), of q and k = depthwise(w_in @ LayerNorm(x)),
 * w_in (2 * channels x channels). `partial` holds the sums of each band, added in band order so
 * that a run repeats itself; `work` and `partial` are sized by `amir_attention_gram_space`. */
void amir_attention_gram(const float *x, const float *ln_w, const float *ln_b, float eps, const float *w_in,
                         const float *b_in, const float *w_dw, const float *b_dw, int64_t heads, float *partial,
                         float *work, float *gram, float *squares, int64_t batch, int64_t height, int64_t width,
                         int64_t channels, int64_t threads) {
    const stream_t s = {x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, eps, batch, height, width, channels, 2 * channels,
                        threads};
    const gram_t g = {heads, partial, work + threads * stream_floats(&s)};
    const int64_t c = channels / heads, n_gram = heads * c * c, size = n_gram + 2 * channels;
    const int64_t bands = bands_per_image(&s);
    #pragma omp parallel for num_threads((int)threads) schedule(static)
    for (int64_t unit = 0; unit < batch * bands; unit++) memset(partial + unit * size * FL, 0, sizeof(float) * size * FL);
    stream(&s, work, back_gram, &g);
    #pragma omp parallel for collapse(2) num_threads((int)threads) schedule(static)
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < size; i++) {
            const float sum = band_sum(partial, size, i, b * bands, (b + 1) * bands);
            if (i < n_gram) gram[b * n_gram + i] = sum;
            else squares[b * 2 * channels + i - n_gram] = sum;
        }
}

/* GELU's derivative, with the same error function */
static inline float gelu_grad(float x) {
    return 0.5f * (1.0f + erf_rational(x * 0.70710678f)) + 0.39894228f * x * exp_clamped(-0.5f * x * x);
}

/* What a block half's backward pass starts from, per pixel: the gradient of its depthwise outputs D */
enum { GATED = 0, LINEAR = 1, QUADRATIC = 2 };

/* The rows whose weight gradients a thread of `amir_half_backward` sums at once, at least
 * HELD_BLOCKS blocks of pixels */
static int64_t held_rows(int64_t width) { return (HELD_BLOCKS + blocks_of(width) - 1) / blocks_of(width); }

/* `amir_half_backward`'s work space per thread: its two rings of three rows and a block's D and dD
 * (ring), then the held rows' blocks of [dout, what w_out takes] and of [dP, LayerNorm(x)] (rows) */
static int64_t backward_ring_floats(int64_t width, int64_t wide) { return wide * (6 * row_stride(width) + 2 * FL); }
static int64_t backward_row_floats(int64_t width, int64_t channels, int64_t wide, int64_t hidden) {
    return held_rows(width) * blocks_of(width) * FL * (wide + 2 * channels + hidden);
}

/* The gradients `amir_half_backward` sums over all pixels: w_in, b_in, w_dw, b_dw, ln_w, ln_b, b_out,
 * then (but for QUADRATIC) w_out's of one image */
static int64_t summed_grads(int64_t channels, int64_t wide, int64_t hidden, int64_t kind) {
    return wide * channels + wide + wide * 9 + wide + 3 * channels + (kind == QUADRATIC ? 0 : channels * hidden);
}

/* The space `amir_half_backward` takes, in floats: space[0] its `work`, space[1] its `partial` */
void amir_half_backward_space(int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t wide,
                              int64_t kind, int64_t threads, int64_t *space) {
    const stream_t s = {.batch = batch, .height = height, .threads = threads};
    const int64_t hidden = kind == GATED ? wide / 2 : wide;
    space[0] = threads * (backward_ring_floats(width, wide) + backward_row_floats(width, channels, wide, hidden));
    space[1] = batch * bands_per_image(&s) * summed_grads(channels, wide, hidden, kind) * FL;
}

/* A block half's gradients. The half is the gated `amir_block_half` (GATED: out = x + b_out + w_out
 * @ (GELU(D1) * D2), the feed-forward), its linear one (LINEAR: out = x + b_out + w_out[image] @ D,
 * the attention's output), or the attention's Gram pass (QUADRATIC: no output but what the
 * sums of D's products feed, so that dD = m[image] @ D and dout is not read). From x and dout =
 * dL/d(out): dx = dL/dx and, summed over all pixels into `grads`, those of w_in (wide x C), b_in,
 * w_dw (wide x 9), b_dw, ln_w, ln_b, b_out, then w_out per image (batch x C x hidden), in that
 * order. `m` holds w_out transposed (hidden x C; LINEAR: per image, m_image floats apart) or, for
 * QUADRATIC, the wide x wide matrices. Each band of rows recomputes the expansion P row by row
 * into a ring of three and the gradient dD one row behind into another ring of three: the
 * gradient of P at a row is the transposed depthwise convolution of three dD rows. Rows outside
 * the image and pixels past a row's end are zero in both rings. Each band adds its gradients into
 * its part of `partial`, and the parts are added in band order. The weights' gradients of the
 * two products are summed over `held_rows` at a time, so that narrow maps read and write them
 * seldom. `work` and `partial` are sized by `amir_half_backward_space`; w_in_t is w_in transposed. */
void amir_half_backward(const float *x, const float *dout, const float *ln_w, const float *ln_b, float eps,
                        const float *w_in, const float *w_in_t, const float *b_in, const float *w_dw, const float *b_dw,
                        const float *m, int64_t m_image, int64_t kind, float *dx, float *grads, float *partial,
                        float *work, int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t wide,
                        int64_t threads) {
    const int64_t C = channels, hidden = kind == GATED ? wide / 2 : wide, blocks = blocks_of(width);
    const int64_t stride = row_stride(width), held = held_rows(width);
    const stream_t s = {x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, eps, batch, height, width, C, wide, threads};
    const int64_t bands = bands_per_image(&s), band = (height + bands - 1) / bands, units = batch * bands;
    const int64_t o_bin = wide * C, o_wdw = o_bin + wide, o_bdw = o_wdw + wide * 9, o_lnw = o_bdw + wide;
    const int64_t o_lnb = o_lnw + C, o_bout = o_lnb + C, o_wout = o_bout + C;
    const int64_t n_grads = summed_grads(C, wide, hidden, kind);
    #pragma omp parallel num_threads((int)threads)
    {
        const int64_t rings = backward_ring_floats(width, wide), rows_each = backward_row_floats(width, C, wide, hidden);
        float *ring = work + omp_get_thread_num() * rings, *dring = ring + 3 * wide * stride;
        float *d = dring + 3 * wide * stride, *e = d + wide * FL;  /* a block's D, then dD */
        /* held rows' blocks of [dout, what w_out takes] and of [dP, LayerNorm(x)], for the weights' gradients */
        float *out_rows = work + threads * rings + omp_get_thread_num() * rows_each;
        float *in_rows = out_rows + held * blocks * (C + hidden) * FL;
        float xt[C * FL], nh[C * FL], cen[C * FL], dn[C * FL], rstd[FL];
        #pragma omp for schedule(static)
        for (int64_t unit = 0; unit < units; unit++) {
            const int64_t image = unit / bands, y0 = unit % bands * band;
            const int64_t y1 = y0 + band < height ? y0 + band : height, at = image * height * width * C;
            const float *img = x + at, *dimg = kind == QUADRATIC ? NULL : dout + at, *mi = m + image * m_image;
            float *acc = partial + unit * n_grads * FL;
            memset(acc, 0, sizeof(float) * n_grads * FL);  /* here, in cache, rather than by the caller */
            for (int64_t t = y0 - 2; t <= y1 + 1; t++) {
                expand_row(&s, img, t, stride, ring + (t + 3) % 3 * wide * stride, xt);
                /* dD of row r = t - 1, from P of rows r - 1, r, r + 1 */
                const int64_t r = t - 1;
                if (r >= y0 - 1 && r <= y1) {
                    float *dslot = dring + (r + 3) % 3 * wide * stride;
                    memset(dslot, 0, sizeof(float) * wide * stride);
                    const float *rows[3] = {ring + (r + 2) % 3 * wide * stride, ring + (r + 3) % 3 * wide * stride,
                                            ring + (r + 4) % 3 * wide * stride};
                    const int owned = r >= y0 && r < y1;
                    const int64_t slot = owned ? (r - y0) % held : 0;  /* among the held rows */
                    for (int64_t x0 = 0; r >= 0 && r < height && x0 < width; x0 += FL) {
                        const int64_t lanes = width - x0 < FL ? width - x0 : FL;
                        float *dt = out_rows + (slot * blocks + x0 / FL) * (C + hidden) * FL, *taken = dt + C * FL;
                        depthwise(&s, rows, stride, x0, d);
                        if (kind == QUADRATIC) {
                            product_lanes(mi, NULL, d, wide, wide, e, FL);
                        } else {
                            const float *row[FL];
                            for (int64_t l = 0; l < lanes; l++) row[l] = dimg + (r * width + x0 + l) * C;
                            rows_to_planar(row, C, lanes, dt);
                            product_lanes(mi, NULL, dt, C, hidden, e, FL);  /* the gradient of what w_out takes */
                        }
                        if (kind == GATED)
                            for (int64_t j = 0; j < hidden; j++) {
                                const float *gate = d + j * FL, *value = d + (hidden + j) * FL;
                                float *dgate = e + j * FL, *dvalue = e + (hidden + j) * FL, *gj = taken + j * FL;
                                #pragma omp simd
                                for (int l = 0; l < FL; l++) {
                                    const float act = gelu(gate[l]), dgj = dgate[l];
                                    gj[l] = act * value[l];
                                    dgate[l] = dgj * value[l] * gelu_grad(gate[l]);
                                    dvalue[l] = dgj * act;
                                }
                            }
                        if (lanes < FL)  /* not pixels */
                            for (int64_t ch = 0; ch < wide; ch++)
                                for (int64_t l = lanes; l < FL; l++) e[ch * FL + l] = 0.0f;
                        for (int64_t ch = 0; ch < wide; ch++) memcpy(dslot + ch * stride + 1 + x0, e + ch * FL, sizeof(float) * FL);
                        if (!owned || kind == QUADRATIC) continue;
                        if (kind == LINEAR) memcpy(taken, d, sizeof(float) * hidden * FL);
                        for (int64_t c = 0; c < C; c++) add_lanes(acc + (o_bout + c) * FL, dt + c * FL);
                    }
                    if (owned && kind != QUADRATIC && (slot == held - 1 || r == y1 - 1))  /* dout is zero past a row's end */
                        row_products(acc + o_wout * FL, out_rows, C, out_rows + C * FL, hidden, (slot + 1) * blocks, (C + hidden) * FL);
                    if (owned && r >= 0 && r < height)  /* the depthwise weights' gradients over the whole row */
                        for (int64_t ch = 0; ch < wide; ch++) {
                            const float *dd = dslot + ch * stride + 1;  /* zero past the row's end */
                            vec sums[10][NV] = {};  /* the nine weights', then the bias's, in FL lanes */
                            for (int64_t x0 = 0; x0 < stride - 2; x0 += FL)
                                for (int v = 0; v < NV; v++) {
                                    const vec grad = loadv(dd + x0 + v * VL);
                                    sums[9][v] += grad;
                                    for (int a = 0; a < 3; a++)
                                        for (int b = 0; b < 3; b++) sums[a * 3 + b][v] += grad * loadv(rows[a] + ch * stride + x0 + v * VL + b);
                                }
                            for (int i = 0; i < 10; i++) {
                                float *e = acc + (i < 9 ? o_wdw + ch * 9 + i : o_bdw + ch) * FL;
                                for (int v = 0; v < NV; v++) storev(e + v * VL, loadv(e + v * VL) + sums[i][v]);
                            }
                        }
                }
                /* row u = t - 2: dP from dD of rows u + 1, u, u - 1, then w_in's and the LayerNorm's gradients */
                const int64_t u = t - 2;
                if (u < y0 || u >= y1) continue;
                const float *drows[3] = {dring + (u + 4) % 3 * wide * stride, dring + (u + 3) % 3 * wide * stride,
                                         dring + (u + 2) % 3 * wide * stride};
                for (int64_t x0 = 0; x0 < width; x0 += FL) {
                    const int64_t lanes = width - x0 < FL ? width - x0 : FL;
                    float *dP = in_rows + ((u - y0) % held * blocks + x0 / FL) * (wide + C) * FL, *xn = dP + wide * FL;
                    for (int64_t ch = 0; ch < wide; ch++) {  /* dP[x] = sum w[a][b] dD[u + 1 - a][x + 1 - b] */
                        const float *k = w_dw + ch * 9;
                        float *dp = dP + ch * FL;
                        vec a0[NV] = {};
                        for (int a = 0; a < 3; a++) {
                            const float *p = drows[a] + ch * stride + x0;
                            for (int b = 0; b < 3; b++)
                                for (int v = 0; v < NV; v++) a0[v] += k[a * 3 + b] * loadv(p + 2 - b + v * VL);
                        }
                        for (int v = 0; v < NV; v++) storev(dp + v * VL, a0[v]);
                        for (int64_t l = lanes; l < FL; l++) dp[l] = 0.0f;
                    }
                    norm_lanes(img + (u * width + x0) * C, ln_w, ln_b, eps, C, lanes, xn, nh, cen, rstd);
                    for (int64_t ch = 0; ch < wide; ch++) add_lanes(acc + (o_bin + ch) * FL, dP + ch * FL);
                    product_lanes(w_in_t, NULL, dP, wide, C, dn, FL);
                    for (int64_t c = 0; c < C; c++) {
                        add_products(acc + (o_lnw + c) * FL, dn + c * FL, nh + c * FL);
                        add_lanes(acc + (o_lnb + c) * FL, dn + c * FL);
                    }
                    /* LayerNorm's input gradient, with gn = dn * ln_w: rstd * (gn - mean(gn) - cen * mean(gn * cen)),
                     * or without a bias rstd * (gn - cen * mean(gn * nh)) */
                    for (int64_t h = 0; h < FL; h += VL) {
                        vec sum = {}, dot = {};
                        for (int64_t c = 0; c < C; c++) {
                            const vec gn = loadv(dn + c * FL + h) * ln_w[c];
                            sum += gn;
                            dot += gn * loadv((ln_b ? cen : nh) + c * FL + h);
                        }
                        const vec mean = ln_b ? sum / (float)C : (vec){}, mdot = dot / (float)C, rs = loadv(rstd + h);
                        for (int64_t c = 0; c < C; c++) {
                            const vec gn = loadv(dn + c * FL + h) * ln_w[c];
                            storev(dn + c * FL + h, rs * (gn - mean - loadv(cen + c * FL + h) * mdot));
                        }
                    }
                    const float *add[FL];
                    float *out[FL];
                    for (int64_t l = 0; l < lanes; l++) {  /* the residual's gradient, but for the Gram pass */
                        add[l] = kind == QUADRATIC ? NULL : dimg + (u * width + x0 + l) * C;
                        out[l] = dx + at + (u * width + x0 + l) * C;
                    }
                    planar_to_rows(dn, C, lanes, add, out);
                }
                if ((u - y0) % held == held - 1 || u == y1 - 1)
                    row_products(acc, in_rows, wide, in_rows + wide * FL, C, ((u - y0) % held + 1) * blocks, (wide + C) * FL);
            }
        }
    }
    /* the weights' gradients: w_out's per image, the rest over all */
    #pragma omp parallel num_threads((int)threads)
    {
        #pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < o_wout; i++) grads[i] = band_sum(partial, n_grads, i, 0, units);
        #pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++)
            for (int64_t i = o_wout; i < n_grads; i++)
                grads[o_wout + b * (n_grads - o_wout) + i - o_wout] = band_sum(partial, n_grads, i, b * bands, (b + 1) * bands);
    }
}
