/* Fused CPU kernels of the per-bone hash grid (the "cpu" backend; hashgrid_cpu.py builds and loads this file).
 *
 * Same function, layout and float arithmetic as the plain-PyTorch twin ``hashgrid._HashGridFunction``
 * (specs/tcnn_nerfacc.md §A): per level, pos = (float)(x * scale + 0.5) rounded once (tcnn's fmaf),
 * cell = (uint32)(int)floor(pos), dense index sum(cell_d * res^d) or CoherentPrime XOR hash, both in uint32,
 * then % level_size; corner c = 4*b0 + 2*b1 + b2 with weight ((w0 * w1) * w2). The torch twin spends most of
 * its time writing and re-reading [8, N] temporaries level by level; here one point's 8 corners stay in
 * registers (~10x fewer memory passes).
 *
 * Threads: none here. Callers split the work (points for the forward and the x gradient, levels for the table
 * gradient, which keeps every entry written by one thread: deterministic) and call from Python threads; ctypes
 * releases the GIL during the call.
 *
 * Arrays (all contiguous): x [n, 3] float32 (bone-box coordinates), base [n] int64 (bone * n_entries),
 * table [n_bones * n_entries * F] float32, per level: scale [L] double, mult [L * 3] uint32 (1, res, res^2 when
 * dense, else the primes), dense [L] int32, size [L] uint32, offset [L] int64 (entries).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    int64_t idx[8]; /* flat entry index into the all-bones table */
    float w[8];     /* trilinear weights */
    float wx[3][2]; /* per-dimension weights (1 - frac, frac) */
} Corners;

static inline void corners(const float *x, int64_t base, double scale, const uint32_t *mult, int dense,
                           uint32_t size, int64_t offset, Corners *c) {
    uint32_t lo[3][2];
    for (int d = 0; d < 3; ++d) {
        float pos = (float)((double)x[d] * scale + 0.5); /* one rounding, as the twin's float64 product */
        float fl = (float)(int32_t)pos;                   /* floor without a libm call (|pos| < 2^31) */
        fl -= fl > pos ? 1.0f : 0.0f;
        float frac = pos - fl;
        uint32_t cell = (uint32_t)(int32_t)fl;
        lo[d][0] = cell * mult[d];
        lo[d][1] = (cell + 1u) * mult[d];
        c->wx[d][0] = 1.0f - frac;
        c->wx[d][1] = frac;
    }
    uint32_t raw[8];
    if (dense) {
        for (int k = 0; k < 8; ++k) raw[k] = lo[0][k >> 2] + lo[1][(k >> 1) & 1] + lo[2][k & 1];
    } else {
        for (int k = 0; k < 8; ++k) raw[k] = lo[0][k >> 2] ^ lo[1][(k >> 1) & 1] ^ lo[2][k & 1];
    }
    /* uint32 % size without a division where possible (a div per corner dominated the loop): power-of-two
     * sizes (every hashed level) keep the low bits; dense indices are < size except where the +1 corner
     * wraps at the domain's edge. */
    const int64_t start = base + offset;
    if ((size & (size - 1u)) == 0u) {
        for (int k = 0; k < 8; ++k) c->idx[k] = start + (int64_t)(raw[k] & (size - 1u));
    } else {
        for (int k = 0; k < 8; ++k) c->idx[k] = start + (int64_t)(raw[k] < size ? raw[k] : raw[k] % size);
    }
    for (int k = 0; k < 8; ++k) c->w[k] = c->wx[0][k >> 2] * c->wx[1][(k >> 1) & 1] * c->wx[2][k & 1];
}

/* Table reads are latency-bound (random rows of a ~12 MB table): the corners of BLOCK points are found and their
 * table lines prefetched before any is read, so the loads overlap (1.2-1.9x on 2k-128k points). */
#define BLOCK 32

/* Corners at level l of points [i0, min(i0 + BLOCK, stop)) into c, prefetching their rows of ``lines`` (the table
 * or its gradient); returns how many points. */
static inline int block_corners(const float *x, const int64_t *base, int64_t i0, int64_t stop, int l,
                                const double *scale, const uint32_t *mult, const int32_t *dense,
                                const uint32_t *size, const int64_t *offset, const float *lines, int F, Corners *c) {
    const int m = (int)(stop - i0 < BLOCK ? stop - i0 : BLOCK);
    for (int j = 0; j < m; ++j) {
        corners(x + 3 * (i0 + j), base[i0 + j], scale[l], mult + 3 * l, dense[l], size[l], offset[l], &c[j]);
        for (int k = 0; k < 8; ++k) __builtin_prefetch(lines + c[j].idx[k] * F, 0, 1);
    }
    return m;
}

/* out [n, L * F]: features of points [start, stop). */
void hg_forward(int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table, int F,
                int L, const double *scale, const uint32_t *mult, const int32_t *dense, const uint32_t *size,
                const int64_t *offset, float *out) {
    Corners c[BLOCK];
    for (int l = 0; l < L; ++l) { /* level-major: one level's table at a time stays in cache */
        for (int64_t i0 = start; i0 < stop; i0 += BLOCK) {
            const int m = block_corners(x, base, i0, stop, l, scale, mult, dense, size, offset, table, F, c);
            for (int j = 0; j < m; ++j) {
                float *o = out + ((i0 + j) * L + l) * F;
                for (int f = 0; f < F; ++f) {
                    float acc = c[j].w[0] * table[c[j].idx[0] * F + f];
                    for (int k = 1; k < 8; ++k) acc += c[j].w[k] * table[c[j].idx[k] * F + f];
                    o[f] = acc;
                }
            }
        }
    }
}

/* grad_table += d loss / d table for levels [l_start, l_stop) and all n points (levels own disjoint entries). */
void hg_backward_table(int64_t n, int l_start, int l_stop, const float *x, const int64_t *base,
                       const float *grad_out, int F, int L, const double *scale, const uint32_t *mult,
                       const int32_t *dense, const uint32_t *size, const int64_t *offset, float *grad_table) {
    Corners c[BLOCK];
    for (int l = l_start; l < l_stop; ++l)
        for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
            const int m = block_corners(x, base, i0, n, l, scale, mult, dense, size, offset, grad_table, F, c);
            for (int j = 0; j < m; ++j) { /* in point order, as before: the same float sums */
                const float *g = grad_out + ((i0 + j) * L + l) * F;
                for (int k = 0; k < 8; ++k)
                    for (int f = 0; f < F; ++f) grad_table[c[j].idx[k] * F + f] += c[j].w[k] * g[f];
            }
        }
}

/* grad_x [n, 3] = d loss / d x for points [start, stop): d pos / d x = scale, d w / d frac from the corners. */
void hg_backward_x(int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table,
                   const float *grad_out, int F, int L, const double *scale, const uint32_t *mult,
                   const int32_t *dense, const uint32_t *size, const int64_t *offset, float *grad_x) {
    Corners c[BLOCK];
    for (int64_t i = start; i < stop; ++i) { /* zeroed here, accumulated level by level below */
        for (int e = 0; e < 3; ++e) grad_x[3 * i + e] = 0.0f;
    }
    for (int l = 0; l < L; ++l)
        for (int64_t i0 = start; i0 < stop; i0 += BLOCK) {
            const int m = block_corners(x, base, i0, stop, l, scale, mult, dense, size, offset, table, F, c);
            for (int j = 0; j < m; ++j) {
                const Corners *cj = &c[j];
                const float *g = grad_out + ((i0 + j) * L + l) * F;
                float vg[8];
                for (int k = 0; k < 8; ++k) {
                    float s = 0.0f;
                    for (int f = 0; f < F; ++f) s += table[cj->idx[k] * F + f] * g[f];
                    vg[k] = s;
                }
                float d[3] = {0.0f, 0.0f, 0.0f};
                for (int b1 = 0; b1 < 2; ++b1)
                    for (int b2 = 0; b2 < 2; ++b2) {
                        d[0] += (vg[4 + 2 * b1 + b2] - vg[2 * b1 + b2]) * (cj->wx[1][b1] * cj->wx[2][b2]);
                        d[1] += (vg[4 * b1 + 2 + b2] - vg[4 * b1 + b2]) * (cj->wx[0][b1] * cj->wx[2][b2]);
                        d[2] += (vg[4 * b1 + 2 * b2 + 1] - vg[4 * b1 + 2 * b2]) * (cj->wx[0][b1] * cj->wx[1][b2]);
                    }
                float *gx = grad_x + 3 * (i0 + j);
                for (int e = 0; e < 3; ++e) gx[e] += (float)scale[l] * d[e];
            }
        }
}

/* The fast field's no-gradient encoding of samples [start, stop), fused (field.py's ``_encode`` without autograd):
 * for each sample i and bone b (ascending) whose box holds it, u = (x[i,b] - box_min[b]) / box_size[b] in [0,1]^3,
 * w = r(u0) * r(u1) * r(u2) with r the smoothstep ramp over the outer ``margin`` of the box; then
 *   wsum[i] = sum_b w,  feats[i] = (sum_b w * grid_b(u)) / max(wsum, 1e-6),  dblend[i] = sum_b w * d[i,b]
 * (dblend only when d is not NULL). Sums run over bones in ascending order, starting from 0, each term rounded
 * as w * value first: exactly the PyTorch path's index_add_ over (sample, bone) pairs, so the results are equal.
 * Pairs are gathered per block of samples, then encoded level by level with the table lines prefetched.
 * x, d: [n, J, 3] float32; box_min, box_size: [J, 3]; feats [n, L*F], wsum [n], dblend [n, 3]: written here;
 * *status = 1 when the pair buffers could not be allocated (nothing useful written), else 0. */
#define BLEND_SAMPLES 128
void hg_blend_forward(int64_t start, int64_t stop, int J, const float *x, const float *d, const float *box_min,
                      const float *box_size, float margin, const uint8_t *mask, int R, const float *table,
                      int64_t n_entries, int F, int L,
                      const double *scale, const uint32_t *mult, const int32_t *dense, const uint32_t *size,
                      const int64_t *offset, float *feats, float *wsum, float *dblend, int *status) {
    const int64_t max_pairs = (int64_t)BLEND_SAMPLES * J;
    float(*pu)[3] = malloc(sizeof(float[3]) * max_pairs); /* the block's pairs: box coordinates, weight, */
    float *pw = malloc(sizeof(float) * max_pairs);         /* sample and table offset of their bone */
    int64_t *psample = malloc(sizeof(int64_t) * max_pairs), *pbase = malloc(sizeof(int64_t) * max_pairs);
    if (!pu || !pw || !psample || !pbase) {
        free(pu), free(pw), free(psample), free(pbase);
        *status = 1;
        return;
    }
    const int W = L * F;
    Corners c[BLOCK];
    for (int64_t s0 = start; s0 < stop; s0 += BLEND_SAMPLES) {
        const int64_t s1 = stop - s0 < BLEND_SAMPLES ? stop : s0 + BLEND_SAMPLES;
        int64_t np = 0;
        for (int64_t i = s0; i < s1; ++i) { /* pairs of this block, sample-major, bones ascending */
            float ws = 0.0f, db[3] = {0.0f, 0.0f, 0.0f};
            for (int b = 0; b < J; ++b) {
                const float *xb = x + (i * J + b) * 3;
                float u[3], w = 1.0f;
                int in = 1;
                for (int e = 0; e < 3; ++e) {
                    u[e] = (xb[e] - box_min[3 * b + e]) / box_size[3 * b + e];
                    in &= (u[e] >= 0.0f) & (u[e] <= 1.0f);
                }
                if (!in) continue;
                for (int e = 0; e < 3; ++e) {
                    float m = u[e] < 1.0f - u[e] ? u[e] : 1.0f - u[e];
                    float s = m / margin;
                    s = s < 0.0f ? 0.0f : (s > 1.0f ? 1.0f : s);
                    const float r = s * s * (3.0f - 2.0f * s);
                    w = e == 0 ? r : w * r;
                }
                if (mask) { /* the bone counts only in cells its occupancy grid marks occupied */
                    int64_t cell = b;
                    for (int e = 0; e < 3; ++e) {
                        float cf = floorf(u[e] * (float)R);
                        cf = cf < 0.0f ? 0.0f : (cf > (float)(R - 1) ? (float)(R - 1) : cf);
                        cell = cell * R + (int64_t)cf;
                    }
                    w = w * (mask[cell] ? 1.0f : 0.0f);
                }
                ws += w;
                if (d) {
                    const float *dbv = d + (i * J + b) * 3;
                    for (int e = 0; e < 3; ++e) db[e] += dbv[e] * w;
                }
                for (int e = 0; e < 3; ++e) pu[np][e] = u[e];
                pw[np] = w;
                psample[np] = i;
                pbase[np] = (int64_t)b * n_entries;
                ++np;
            }
            wsum[i] = ws;
            if (dblend)
                for (int e = 0; e < 3; ++e) dblend[3 * i + e] = db[e];
            for (int k = 0; k < W; ++k) feats[i * W + k] = 0.0f;
        }
        for (int l = 0; l < L; ++l)
            for (int64_t p0 = 0; p0 < np; p0 += BLOCK) {
                const int m = block_corners(pu[0], pbase, p0, np, l, scale, mult, dense, size, offset, table, F, c);
                for (int j = 0; j < m; ++j) {
                    const float w = pw[p0 + j];
                    float *o = feats + psample[p0 + j] * W + l * F;
                    for (int f = 0; f < F; ++f) {
                        float acc = c[j].w[0] * table[c[j].idx[0] * F + f];
                        for (int k = 1; k < 8; ++k) acc += c[j].w[k] * table[c[j].idx[k] * F + f];
                        o[f] += acc * w;
                    }
                }
            }
        for (int64_t i = s0; i < s1; ++i) {
            const float den = wsum[i] > 1e-6f ? wsum[i] : 1e-6f;
            for (int k = 0; k < W; ++k) feats[i * W + k] /= den;
        }
    }
    free(pu), free(pw), free(psample), free(pbase);
    *status = 0;
}
