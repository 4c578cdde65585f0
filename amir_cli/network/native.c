/* Fused CPU kernels for amir's inference: each does in one or two passes over memory what
 * PyTorch's operators do in several. Maps are channels-last (NHWC)
 * float32; the inner loops vectorise (over channels, or over pixels side by side), the outer ones
 * run on OpenMP threads (the runtime PyTorch loaded, so its thread count applies). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

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

/* GELU with the error function: erf(z) = z * P(z^2) / Q(z^2) on [-4, 4] and +-1 beyond, a rational
 * minimax fit made for amir (absolute error 7e-8 in exact arithmetic, 4e-7 in float32). No exp,
 * one division: about twice as fast as the usual exp-based forms. */
static inline float gelu(float x) {
    float z = x * 0.70710678f;
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
    return 0.5f * x * (1.0f + z * p / q);
}

/* LayerNorm over the last axis of `rows` rows of `channels` values: y = (x - mean) / sqrt(var + eps)
 * * weight + bias. Without a bias (NULL) the mean is not removed, only divided by the deviation. */
void amir_layer_norm(const float *x, const float *weight, const float *bias, float *y, int64_t rows,
                     int64_t channels, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *in = x + r * channels;
        float *out = y + r * channels;
        float sum = 0.0f, dev = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t c = 0; c < channels; c++) sum += in[c];
        float mean = sum / (float)channels;
        #pragma omp simd reduction(+:dev)
        for (int64_t c = 0; c < channels; c++) dev += (in[c] - mean) * (in[c] - mean);
        float rstd = 1.0f / sqrtf(dev / (float)channels + eps);
        if (bias) {
            #pragma omp simd
            for (int64_t c = 0; c < channels; c++) out[c] = (in[c] - mean) * rstd * weight[c] + bias[c];
        } else {
            #pragma omp simd
            for (int64_t c = 0; c < channels; c++) out[c] = in[c] * rstd * weight[c];
        }
    }
}

/* The attention's Gram matrix and norms of `batch` images of `n` pixels: gram[b] = q[b]^T k[b]
 * (channels x channels) and squares[b] = the sums of squares of q's channels, then k's. Pixel p's
 * q and k start at q + b * image_q + p * row_q (k alike). Each of `threads` threads sums its share
 * of the pixels into its own part of `partial` (threads * (channels^2 + 2 * channels) floats); the
 * parts are added in thread order, so that a run repeats itself exactly. */
void amir_gram(const float *q, const float *k, int64_t row_q, int64_t row_k, int64_t image_q, int64_t image_k,
               int64_t batch, int64_t n, int64_t channels, int64_t threads, float *partial, float *gram,
               float *squares) {
    const int64_t size = channels * channels + 2 * channels;
    for (int64_t b = 0; b < batch; b++) {
        memset(partial, 0, sizeof(float) * threads * size);
        #pragma omp parallel num_threads((int)threads)
        {
            float *sum = partial + omp_get_thread_num() * size, *sq = sum + channels * channels;
            #pragma omp for schedule(static)
            for (int64_t p = 0; p < n; p++) {
                const float *qp = q + b * image_q + p * row_q, *kp = k + b * image_k + p * row_k;
                for (int64_t i = 0; i < channels; i++) {
                    const float qi = qp[i];
                    float *row = sum + i * channels;
                    #pragma omp simd
                    for (int64_t j = 0; j < channels; j++) row[j] += qi * kp[j];
                }
                #pragma omp simd
                for (int64_t i = 0; i < channels; i++) {
                    sq[i] += qp[i] * qp[i];
                    sq[channels + i] += kp[i] * kp[i];
                }
            }
        }
        float *out = gram + b * channels * channels, *out_sq = squares + b * 2 * channels;
        memcpy(out, partial, sizeof(float) * channels * channels);
        memcpy(out_sq, partial + channels * channels, sizeof(float) * 2 * channels);
        for (int t = 1; t < threads; t++) {
            const float *part = partial + t * size;
            for (int64_t i = 0; i < channels * channels; i++) out[i] += part[i];
            for (int64_t i = 0; i < 2 * channels; i++) out_sq[i] += part[channels * channels + i];
        }
    }
}

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

#define LANES 32  /* pixels computed side by side (four vector registers of floats on AVX2) */

/* A linear layer on LANES pixels side by side: out[o][l] = bias[o] + sum_i w[o][i] * in[i][l]. */
static void layer_lanes(const float *w, const float *bias, const float *in, int64_t n_in, int64_t n_out, float *out) {
    for (int64_t o = 0; o < n_out; o++) {
        float *dst = out + o * LANES;
        #pragma omp simd
        for (int l = 0; l < LANES; l++) dst[l] = bias[o];
        for (int64_t i = 0; i < n_in; i++) {
            const float weight = w[o * n_in + i], *src = in + i * LANES;
            #pragma omp simd
            for (int l = 0; l < LANES; l++) dst[l] += weight * src[l];
        }
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
        float logits[experts * LANES];
        #pragma omp for schedule(static)
        for (int64_t block = 0; block < n; block += LANES) {
            int64_t lanes = n - block < LANES ? n - block : LANES;
            for (int64_t e = 0; e < experts; e++)
                for (int64_t l = 0; l < LANES; l++)
                    logits[e * LANES + l] = l < lanes ? cue_logits[((first + block + l) / per_image) * experts + e] : 0.0f;
            for (int64_t l = 0; l < lanes; l++) {
                const float *x = tokens + (block + l) * channels;
                for (int64_t c = 0; c < channels; c++)
                    for (int64_t e = 0; e < experts; e++) logits[e * LANES + l] += x[c] * gate_w[c * experts + e];
            }
            float top[LANES], largest[LANES], total[LANES];
            int32_t best[LANES];
            for (int64_t r = 0; r < k; r++) {
                #pragma omp simd
                for (int l = 0; l < LANES; l++) { top[l] = -INFINITY; best[l] = 0; }
                for (int64_t e = 0; e < experts; e++) {
                    #pragma omp simd
                    for (int l = 0; l < LANES; l++) {
                        int better = logits[e * LANES + l] > top[l];
                        top[l] = better ? logits[e * LANES + l] : top[l];
                        best[l] = better ? (int32_t)e : best[l];
                    }
                }
                for (int64_t e = 0; e < experts; e++) {  /* a chosen expert leaves the race */
                    #pragma omp simd
                    for (int l = 0; l < LANES; l++) logits[e * LANES + l] = best[l] == e ? -INFINITY : logits[e * LANES + l];
                }
                #pragma omp simd
                for (int l = 0; l < LANES; l++) {
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
    /* each expert on its pixels, LANES at a time; a pixel meets each expert at most once, so the
     * adds into `mixed` within one expert never collide */
    for (int64_t e = 0; e < experts; e++) {
        const float *w1e = w1 + e * hidden * channels, *b1e = b1 + e * hidden;
        const float *w2e = w2 + e * channels * hidden, *b2e = b2 + e * channels;
        int64_t count = start[e + 1] - start[e];
        #pragma omp parallel
        {
            float xt[channels * LANES], ht[hidden * LANES], ot[channels * LANES];
            #pragma omp for schedule(static)
            for (int64_t block = 0; block < count; block += LANES) {
                int64_t pixel[LANES];
                float gate[LANES];
                for (int l = 0; l < LANES; l++) {
                    int64_t slot = order[start[e] + (block + l < count ? block + l : block)];
                    pixel[l] = slot / k;
                    gate[l] = block + l < count ? gates[slot] : 0.0f;
                }
                for (int64_t c = 0; c < channels; c++)
                    for (int l = 0; l < LANES; l++) xt[c * LANES + l] = tokens[pixel[l] * channels + c];
                layer_lanes(w1e, b1e, xt, channels, hidden, ht);
                #pragma omp simd
                for (int64_t i = 0; i < hidden * LANES; i++) ht[i] = gelu(ht[i]);
                layer_lanes(w2e, b2e, ht, hidden, channels, ot);
                for (int64_t c = 0; c < channels; c++) {
                    float *o = ot + c * LANES;
                    #pragma omp simd
                    for (int l = 0; l < LANES; l++) o[l] = gate[l] * exp_clamped(o[l]);
                    for (int l = 0; l < LANES; l++)
                        if (block + l < count) mixed[pixel[l] * channels + c] += o[l];
                }
            }
        }
    }
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n * channels; i++) out[i] = log_positive(mixed[i] == 0.0f ? floor : mixed[i]);
}

/* The second half of a transformer block in one pass: out = x + FFN(LayerNorm(x)), the feed-forward
 * being a 1x1 expansion to 2 * hidden channels (gates, then values), a depthwise 3x3 convolution
 * (zero padding), GELU(gate) * value, and a 1x1 projection back to `channels`. Rows of a band are
 * expanded once into a ring of three planar rows (channel, then pixel) held by the thread, so the
 * hidden map never exists: each thread's `work` holds 3 * 2 * hidden * stride floats. A bias may be
 * NULL; without ln_b the LayerNorm is the bias-free variant (`amir_layer_norm`). */
typedef float v8 __attribute__((vector_size(32)));
#define FL 16  /* pixels computed side by side: two vectors */

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* rows `n_out` of w (n_out x n_in) times the FL-pixel planar block `in` (n_in x FL), plus bias, into
 * `out` (n_out rows `out_stride` apart), four rows at a time in registers */
static void product_lanes(const float *w, const float *bias, const float *in, int64_t n_in, int64_t n_out,
                          float *out, int64_t out_stride) {
    int64_t o = 0;
    for (; o + 4 <= n_out; o += 4) {
        v8 a[4][2];
        for (int q = 0; q < 4; q++) a[q][0] = a[q][1] = (v8){} + (bias ? bias[o + q] : 0.0f);
        for (int64_t i = 0; i < n_in; i++) {
            const v8 u = load8(in + i * FL), v = load8(in + i * FL + 8);
            for (int q = 0; q < 4; q++) {
                const float weight = w[(o + q) * n_in + i];
                a[q][0] += weight * u;
                a[q][1] += weight * v;
            }
        }
        for (int q = 0; q < 4; q++) {
            store8(out + (o + q) * out_stride, a[q][0]);
            store8(out + (o + q) * out_stride + 8, a[q][1]);
        }
    }
    for (; o < n_out; o++) {
        v8 a0 = (v8){} + (bias ? bias[o] : 0.0f), a1 = a0;
        for (int64_t i = 0; i < n_in; i++) {
            const float weight = w[o * n_in + i];
            a0 += weight * load8(in + i * FL);
            a1 += weight * load8(in + i * FL + 8);
        }
        store8(out + o * out_stride, a0);
        store8(out + o * out_stride + 8, a1);
    }
}

/* LayerNorm of `lanes` pixels (NHWC, `channels` each) into the planar block `xt`, computed across
 * the pixels side by side; lanes past them are 0 */
static void norm_lanes(const float *x, const float *ln_w, const float *ln_b, float eps, int64_t channels,
                       int64_t lanes, float *xt) {
    for (int64_t c = 0; c < channels; c++)
        for (int64_t l = 0; l < FL; l++) xt[c * FL + l] = l < lanes ? x[l * channels + c] : 0.0f;
    for (int half = 0; half < 2; half++) {
        float *col = xt + 8 * half;
        v8 sum = {}, dev = {};
        for (int64_t c = 0; c < channels; c++) sum += load8(col + c * FL);
        const v8 mean = sum / (float)channels;
        for (int64_t c = 0; c < channels; c++) {
            const v8 d = load8(col + c * FL) - mean;
            dev += d * d;
        }
        v8 rstd;
        for (int l = 0; l < 8; l++) rstd[l] = 1.0f / sqrtf(dev[l] / (float)channels + eps);
        for (int64_t c = 0; c < channels; c++) {
            const v8 v = load8(col + c * FL);
            store8(col + c * FL, ln_b ? (v - mean) * rstd * ln_w[c] + ln_b[c] : v * rstd * ln_w[c]);
        }
    }
}

void amir_ffn_block(const float *x, const float *ln_w, const float *ln_b, float eps, const float *w_in,
                    const float *b_in, const float *w_dw, const float *b_dw, const float *w_out, const float *b_out,
                    float *out, float *work, int64_t batch, int64_t height, int64_t width, int64_t channels,
                    int64_t hidden, int64_t threads) {
    const int64_t wide = 2 * hidden, padded = (width + FL - 1) / FL * FL;
    const int64_t stride = padded + 2;  /* a planar row: zero, the row's pixels, zeros */
    int64_t bands = threads, a = batch, b = threads;  /* bands per image: batch * bands a multiple of threads */
    while (b) { int64_t t = a % b; a = b; b = t; }
    bands /= a;
    bands = bands > height ? height : bands;
    const int64_t band = (height + bands - 1) / bands, units = batch * bands;
    #pragma omp parallel num_threads((int)threads)
    {
        float *ring = work + omp_get_thread_num() * 3 * wide * stride;
        float xt[channels * FL], gated[hidden * FL], projected[channels * FL], gate[FL], value[FL];
        #pragma omp for schedule(static)
        for (int64_t unit = 0; unit < units; unit++) {
            const int64_t image = unit / bands, y0 = unit % bands * band;
            const int64_t y1 = y0 + band < height ? y0 + band : height;
            const float *img = x + image * height * width * channels;
            float *dst = out + image * height * width * channels;
            for (int64_t y = y0 - 1; y <= y1; y++) {
                /* expand row y into its ring slot */
                float *slot = ring + (y + 3) % 3 * wide * stride;
                if (y < 0 || y >= height) {
                    memset(slot, 0, sizeof(float) * wide * stride);
                } else {
                    for (int64_t x0 = 0; x0 < width; x0 += FL) {
                        const int64_t lanes = width - x0 < FL ? width - x0 : FL;
                        norm_lanes(img + (y * width + x0) * channels, ln_w, ln_b, eps, channels, lanes, xt);
                        product_lanes(w_in, b_in, xt, channels, wide, slot + 1 + x0, stride);
                    }
                    for (int64_t j = 0; j < wide; j++) {
                        float *row = slot + j * stride;
                        row[0] = 0.0f;
                        for (int64_t i = 1 + width; i < stride; i++) row[i] = 0.0f;
                    }
                }
                if (y - 1 < y0) continue;
                /* output row r = y - 1 from the slots of rows r - 1, r, r + 1 */
                const int64_t r = y - 1;
                const float *rows[3] = {ring + (r + 2) % 3 * wide * stride, ring + r % 3 * wide * stride,
                                        ring + (r + 1) % 3 * wide * stride};
                for (int64_t x0 = 0; x0 < width; x0 += FL) {
                    const int64_t lanes = width - x0 < FL ? width - x0 : FL;
                    for (int64_t j = 0; j < hidden; j++) {
                        for (int half = 0; half < 2; half++) {
                            const int64_t ch = j + half * hidden;
                            const float *k = w_dw + ch * 9;
                            v8 a0 = (v8){} + (b_dw ? b_dw[ch] : 0.0f), a1 = a0;
                            for (int dy = 0; dy < 3; dy++) {
                                const float *p = rows[dy] + ch * stride + x0;
                                for (int dx = 0; dx < 3; dx++) {
                                    a0 += k[dy * 3 + dx] * load8(p + dx);
                                    a1 += k[dy * 3 + dx] * load8(p + dx + 8);
                                }
                            }
                            float *to = half ? value : gate;
                            store8(to, a0);
                            store8(to + 8, a1);
                        }
                        #pragma omp simd
                        for (int l = 0; l < FL; l++) gated[j * FL + l] = gelu(gate[l]) * value[l];
                    }
                    product_lanes(w_out, b_out, gated, hidden, channels, projected, FL);
                    const float *res = img + (r * width + x0) * channels;
                    float *o = dst + (r * width + x0) * channels;
                    for (int64_t l = 0; l < lanes; l++)
                        for (int64_t c = 0; c < channels; c++)
                            o[l * channels + c] = res[l * channels + c] + projected[c * FL + l];
                }
            }
        }
    }
}
