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

/* out [n, L * F]: features of points [start, stop). */
void hg_forward(int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table, int F,
                int L, const double *scale, const uint32_t *mult, const int32_t *dense, const uint32_t *size,
                const int64_t *offset, float *out) {
    Corners c;
    for (int l = 0; l < L; ++l) { /* level-major: one level's table at a time stays in cache */
        for (int64_t i = start; i < stop; ++i) {
            corners(x + 3 * i, base[i], scale[l], mult + 3 * l, dense[l], size[l], offset[l], &c);
            float *o = out + (i * L + l) * F;
            for (int f = 0; f < F; ++f) {
                float acc = c.w[0] * table[c.idx[0] * F + f];
                for (int k = 1; k < 8; ++k) acc += c.w[k] * table[c.idx[k] * F + f];
                o[f] = acc;
            }
        }
    }
}

/* grad_table += d loss / d table for levels [l_start, l_stop) and all n points (levels own disjoint entries). */
void hg_backward_table(int64_t n, int l_start, int l_stop, const float *x, const int64_t *base,
                       const float *grad_out, int F, int L, const double *scale, const uint32_t *mult,
                       const int32_t *dense, const uint32_t *size, const int64_t *offset, float *grad_table) {
    Corners c;
    for (int l = l_start; l < l_stop; ++l)
        for (int64_t i = 0; i < n; ++i) {
            corners(x + 3 * i, base[i], scale[l], mult + 3 * l, dense[l], size[l], offset[l], &c);
            const float *g = grad_out + (i * L + l) * F;
            for (int k = 0; k < 8; ++k)
                for (int f = 0; f < F; ++f) grad_table[c.idx[k] * F + f] += c.w[k] * g[f];
        }
}

/* grad_x [n, 3] = d loss / d x for points [start, stop): d pos / d x = scale, d w / d frac from the corners. */
void hg_backward_x(int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table,
                   const float *grad_out, int F, int L, const double *scale, const uint32_t *mult,
                   const int32_t *dense, const uint32_t *size, const int64_t *offset, float *grad_x) {
    Corners c;
    for (int64_t i = start; i < stop; ++i) {
        float gx[3] = {0.0f, 0.0f, 0.0f};
        for (int l = 0; l < L; ++l) {
            corners(x + 3 * i, base[i], scale[l], mult + 3 * l, dense[l], size[l], offset[l], &c);
            const float *g = grad_out + (i * L + l) * F;
            float vg[8];
            for (int k = 0; k < 8; ++k) {
                float s = 0.0f;
                for (int f = 0; f < F; ++f) s += table[c.idx[k] * F + f] * g[f];
                vg[k] = s;
            }
            float d[3] = {0.0f, 0.0f, 0.0f};
            for (int b1 = 0; b1 < 2; ++b1)
                for (int b2 = 0; b2 < 2; ++b2) {
                    d[0] += (vg[4 + 2 * b1 + b2] - vg[2 * b1 + b2]) * (c.wx[1][b1] * c.wx[2][b2]);
                    d[1] += (vg[4 * b1 + 2 + b2] - vg[4 * b1 + b2]) * (c.wx[0][b1] * c.wx[2][b2]);
                    d[2] += (vg[4 * b1 + 2 * b2 + 1] - vg[4 * b1 + 2 * b2]) * (c.wx[0][b1] * c.wx[1][b2]);
                }
            for (int e = 0; e < 3; ++e) gx[e] += (float)scale[l] * d[e];
        }
        for (int e = 0; e < 3; ++e) grad_x[3 * i + e] = gx[e];
    }
}
