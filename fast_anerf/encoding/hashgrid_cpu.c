/* Fused CPU kernels of the per-bone hash grid (the "cpu" backend; hashgrid_cpu.py builds and loads this file).
 *
 * Same function, layout and float arithmetic as the plain-PyTorch twin ``hashgrid._HashGridFunction``
 * (specs/tcnn_nerfacc.md §A): per level, pos = (float)(x * scale + 0.5) rounded once (tcnn's fmaf),
 * cell = (uint32)(int)floor(pos), dense index sum(cell_d * res^d) or CoherentPrime XOR hash, both in uint32,
 * then % level_size; corner c = 4*b0 + 2*b1 + b2 with weight ((w0 * w1) * w2). The torch twin spends most of
 * its time writing and re-reading [8, N] temporaries level by level; here one point's 8 corners stay in
 * registers (~10x fewer memory passes).
 *
 * Threads: each ``*_piece`` function works on a range; the exported kernels at the end of the file split it over
 * OpenMP threads (ckernels.h): points for the forward and the x gradient, levels for the table gradient, which
 * keeps every entry written by one thread (deterministic). ctypes releases the GIL during a call.
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

/* d/dpos of the trilinear interpolation of corner values v[8] (corner k = 4*b0 + 2*b1 + b2), per dimension. */
static inline void interp_gradient(const Corners *c, const float v[8], float d[3]) {
    d[0] = d[1] = d[2] = 0.0f;
    for (int b1 = 0; b1 < 2; ++b1)
        for (int b2 = 0; b2 < 2; ++b2) {
            d[0] += (v[4 + 2 * b1 + b2] - v[2 * b1 + b2]) * (c->wx[1][b1] * c->wx[2][b2]);
            d[1] += (v[4 * b1 + 2 + b2] - v[4 * b1 + b2]) * (c->wx[0][b1] * c->wx[2][b2]);
            d[2] += (v[4 * b1 + 2 * b2 + 1] - v[4 * b1 + 2 * b2]) * (c->wx[0][b1] * c->wx[1][b2]);
        }
}

/* out [n, L * F]: features of points [start, stop). With jac (else NULL) also their derivatives d out / d x,
 * jac [n, L, 3, F] (d pos / d x = scale): the corner values are in registers here, so the backward's x gradient
 * becomes a dot product instead of a second pass of random table reads (as tcnn keeps dy/dx from its forward). */
static void hg_forward_piece(int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table,
                             int F, int L, const double *scale, const uint32_t *mult, const int32_t *dense,
                             const uint32_t *size, const int64_t *offset, float *out, float *jac) {
    Corners c[BLOCK];
    for (int l = 0; l < L; ++l) { /* level-major: one level's table at a time stays in cache */
        for (int64_t i0 = start; i0 < stop; i0 += BLOCK) {
            const int m = block_corners(x, base, i0, stop, l, scale, mult, dense, size, offset, table, F, c);
            for (int j = 0; j < m; ++j) {
                float *o = out + ((i0 + j) * L + l) * F;
                for (int f = 0; f < F; ++f) {
                    float v[8];
                    for (int k = 0; k < 8; ++k) v[k] = table[c[j].idx[k] * F + f];
                    float acc = c[j].w[0] * v[0];
                    for (int k = 1; k < 8; ++k) acc += c[j].w[k] * v[k];
                    o[f] = acc;
                    if (jac) {
                        float d[3];
                        interp_gradient(&c[j], v, d);
                        for (int e = 0; e < 3; ++e) jac[(((i0 + j) * L + l) * 3 + e) * F + f] = (float)scale[l] * d[e];
                    }
                }
            }
        }
    }
}

/* grad_x [n, 3] = d loss / d x of points [start, stop) from the forward's jac [n, L, 3, F] and grad_out [n, L*F]. */
static void hg_backward_x_piece(int64_t start, int64_t stop, int F, int L, const float *jac, const float *grad_out,
                                float *grad_x) {
    for (int64_t i = start; i < stop; ++i) {
        float gx[3] = {0.0f, 0.0f, 0.0f};
        for (int l = 0; l < L; ++l) {
            const float *g = grad_out + (i * L + l) * F, *jl = jac + (i * L + l) * 3 * F;
            for (int e = 0; e < 3; ++e)
                for (int f = 0; f < F; ++f) gx[e] += jl[e * F + f] * g[f];
        }
        for (int e = 0; e < 3; ++e) grad_x[3 * i + e] = gx[e];
    }
}

/* grad_table += d loss / d table for levels [l_start, l_stop) and all n points (levels own disjoint entries). */
static void hg_backward_table_piece(int64_t n, int l_start, int l_stop, const float *x, const int64_t *base,
                                    const float *grad_out, int F, int L, const double *scale, const uint32_t *mult,
                                    const int32_t *dense, const uint32_t *size, const int64_t *offset,
                                    float *grad_table) {
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

/* The fast field's encoding constants (the arguments every blend kernel shares). */
typedef struct {
    int J;                                  /* bones */
    const float *box_min, *box_size;        /* [J, 3] */
    float margin;                           /* smoothstep ramp width, fraction of a box */
    const uint8_t *mask;                    /* [J, R, R, R] occupancy cells (1 = occupied) or NULL */
    int R;                                  /* mask resolution */
    const float *table;                     /* [J * n_entries * F] */
    int64_t n_entries;                      /* entries per bone */
    int F, L;                               /* features per level, levels */
    const double *scale;                    /* per-level arrays, as hg_forward's */
    const uint32_t *mult;
    const int32_t *dense;
    const uint32_t *size;
    const int64_t *offset;
} Field;

/* A block's (sample, bone) pairs: box coordinates, weight, sample (within the block), table offset of the bone. */
typedef struct {
    float (*u)[3];
    float *w;
    int64_t *sample, *base;
} Pairs;

static int pairs_alloc(Pairs *p, int64_t max_pairs) {
    p->u = malloc(sizeof(float[3]) * max_pairs);
    p->w = malloc(sizeof(float) * max_pairs);
    p->sample = malloc(sizeof(int64_t) * max_pairs);
    p->base = malloc(sizeof(int64_t) * max_pairs);
    return p->u && p->w && p->sample && p->base;
}

static void pairs_free(Pairs *p) { free(p->u), free(p->w), free(p->sample), free(p->base); }

/* The fast field's no-gradient encoding of samples [0, n) (field.py's ``_encode`` without autograd):
 * for each sample i and bone b (ascending) whose box holds it, u = (x[i,b] - box_min[b]) / box_size[b] in [0,1]^3,
 * w = r(u0) * r(u1) * r(u2) with r the smoothstep ramp over the outer ``margin`` of the box (times the bone's
 * occupancy cell, 0 or 1, with a mask); then
 *   wsum[i] = sum_b w,  feats[i] = (sum_b w * grid_b(u)) / max(wsum, 1e-6),  dblend[i] = sum_b w * d[i,b]
 * (dblend only when d is not NULL). Sums run over bones in ascending order, starting from 0, each term rounded
 * as w * value first: exactly the PyTorch path's index_add_ over (sample, bone) pairs, so the results are equal.
 * Pairs of weight 0 (a masked cell, a box face) add exactly nothing there and are not looked up here.
 * The pairs are encoded level by level with the table lines prefetched.
 * x, d: [n, J, 3] float32; feats [n, L*F], wsum [n], dblend [n, 3]: written here; p holds >= n * J pairs. */
static void blend_block(const Field *f, int64_t n, const float *x, const float *d, Pairs *p, float *feats,
                        float *wsum, float *dblend) {
    const int J = f->J, R = f->R, W = f->L * f->F, F = f->F;
    int64_t np = 0;
    for (int64_t i = 0; i < n; ++i) { /* pairs, sample-major, bones ascending */
        float ws = 0.0f, db[3] = {0.0f, 0.0f, 0.0f};
        for (int b = 0; b < J; ++b) {
            const float *xb = x + (i * J + b) * 3;
            float u[3], w = 1.0f;
            int in = 1;
            for (int e = 0; e < 3; ++e) {
                u[e] = (xb[e] - f->box_min[3 * b + e]) / f->box_size[3 * b + e];
                in &= (u[e] >= 0.0f) & (u[e] <= 1.0f);
            }
            if (!in) continue;
            for (int e = 0; e < 3; ++e) {
                float m = u[e] < 1.0f - u[e] ? u[e] : 1.0f - u[e];
                float s = m / f->margin;
                s = s < 0.0f ? 0.0f : (s > 1.0f ? 1.0f : s);
                const float r = s * s * (3.0f - 2.0f * s);
                w = e == 0 ? r : w * r;
            }
            if (f->mask) { /* the bone counts only in cells its occupancy grid marks occupied */
                int64_t cell = b;
                for (int e = 0; e < 3; ++e) {
                    float cf = floorf(u[e] * (float)R);
                    cf = cf < 0.0f ? 0.0f : (cf > (float)(R - 1) ? (float)(R - 1) : cf);
                    cell = cell * R + (int64_t)cf;
                }
                w = w * (f->mask[cell] ? 1.0f : 0.0f);
            }
            ws += w;
            if (d) {
                const float *dbv = d + (i * J + b) * 3;
                for (int e = 0; e < 3; ++e) db[e] += dbv[e] * w;
            }
            if (w == 0.0f) continue; /* its features would be added times 0 */
            for (int e = 0; e < 3; ++e) p->u[np][e] = u[e];
            p->w[np] = w;
            p->sample[np] = i;
            p->base[np] = (int64_t)b * f->n_entries;
            ++np;
        }
        wsum[i] = ws;
        if (dblend)
            for (int e = 0; e < 3; ++e) dblend[3 * i + e] = db[e];
        for (int k = 0; k < W; ++k) feats[i * W + k] = 0.0f;
    }
    Corners c[BLOCK];
    for (int l = 0; l < f->L; ++l)
        for (int64_t p0 = 0; p0 < np; p0 += BLOCK) {
            const int m = block_corners(p->u[0], p->base, p0, np, l, f->scale, f->mult, f->dense, f->size,
                                        f->offset, f->table, F, c);
            for (int j = 0; j < m; ++j) {
                const float w = p->w[p0 + j];
                float *o = feats + p->sample[p0 + j] * W + l * F;
                for (int q = 0; q < F; ++q) {
                    float acc = c[j].w[0] * f->table[c[j].idx[0] * F + q];
                    for (int k = 1; k < 8; ++k) acc += c[j].w[k] * f->table[c[j].idx[k] * F + q];
                    o[q] += acc * w;
                }
            }
        }
    for (int64_t i = 0; i < n; ++i) {
        const float den = wsum[i] > 1e-6f ? wsum[i] : 1e-6f;
        for (int k = 0; k < W; ++k) feats[i * W + k] /= den;
    }
}

/* The per-level arguments (hg_forward's), and the fast field's (Field's members, in order), as parameter lists
 * and as the names that pass them on. */
#define LEVEL_PARAMS                                                                                               \
    int F, int L, const double *scale, const uint32_t *mult, const int32_t *dense, const uint32_t *size,         \
        const int64_t *offset
#define LEVEL_VALUES F, L, scale, mult, dense, size, offset
#define FIELD_ARGS                                                                                                 \
    int J, const float *box_min, const float *box_size, float margin, const uint8_t *mask, int R,                 \
        const float *table, int64_t n_entries, LEVEL_PARAMS
#define FIELD_VALUES J, box_min, box_size, margin, mask, R, table, n_entries, LEVEL_VALUES
#define FIELD_INIT {FIELD_VALUES}

/* blend_block over samples [start, stop) of x, d [n, J, 3], in blocks of BLEND_SAMPLES samples; feats [n, L*F],
 * wsum [n], dblend [n, 3] (or NULL); *status = 1 when the pair buffers could not be allocated, else 0. */
#define BLEND_SAMPLES 128
static void hg_blend_forward_piece(int64_t start, int64_t stop, const float *x, const float *d, FIELD_ARGS,
                                   float *feats, float *wsum, float *dblend, int *status) {
    const Field f = FIELD_INIT;
    const int W = L * F;
    Pairs p;
    if (!pairs_alloc(&p, (int64_t)BLEND_SAMPLES * J)) {
        pairs_free(&p);
        *status = 1;
        return;
    }
    for (int64_t s0 = start; s0 < stop; s0 += BLEND_SAMPLES) {
        const int64_t n = stop - s0 < BLEND_SAMPLES ? stop - s0 : BLEND_SAMPLES;
        blend_block(&f, n, x + s0 * J * 3, d ? d + s0 * J * 3 : NULL, &p, feats + s0 * W, wsum + s0,
                    dblend ? dblend + 3 * s0 : NULL);
    }
    pairs_free(&p);
    *status = 0;
}

/* First output of a bias-free ReLU MLP (tcnn layout, output activation None) for one input of n_in floats.
 * mlp: the hidden matrices transposed ([n_in, N], then [N, N] x (H - 1)), then row 0 of the output matrix [N];
 * H = 0: just that row, over the n_in inputs. Each hidden unit sums its inputs in ascending order (vectorised
 * across units, the order of a dot product). N <= 256. */
static float mlp_first_output(const float *mlp, const float *in, int n_in, int N, int H) {
    float h[256], g[256];
    if (H == 0) {
        float acc = 0.0f;
        for (int i = 0; i < n_in; ++i) acc += mlp[i] * in[i];
        return acc;
    }
    for (int o = 0; o < N; ++o) h[o] = 0.0f;
    for (int i = 0; i < n_in; ++i)
        for (int o = 0; o < N; ++o) h[o] += mlp[i * N + o] * in[i];
    for (int o = 0; o < N; ++o) h[o] = h[o] > 0.0f ? h[o] : 0.0f;
    mlp += n_in * N;
    for (int layer = 1; layer < H; ++layer, mlp += N * N) {
        for (int o = 0; o < N; ++o) g[o] = 0.0f;
        for (int i = 0; i < N; ++i)
            for (int o = 0; o < N; ++o) g[o] += mlp[i * N + o] * h[i];
        for (int o = 0; o < N; ++o) h[o] = g[o] > 0.0f ? g[o] : 0.0f;
    }
    float acc = 0.0f;
    for (int i = 0; i < N; ++i) acc += mlp[i] * h[i];
    return acc;
}

/* nerfacc's visibility pass (volrend.visibility_progressive's result) for rays [r0, r1), fused with the field's
 * density: each ray's candidates are walked front to back and only until the ray is opaque, so no density is
 * evaluated behind the surface. Rays advance in waves of WAVE (one candidate per active ray per wave), so the
 * hash-grid reads of a wave overlap. Per candidate c of ray r (candidates sorted by ray: first[r], count[r]):
 *   x_b = o[r,b] + t_mid * d[r,b],  sigma = min(wsum, 1) * exp(min(mlp(feats)[0] + bias, 15)) / height,
 *   sd = sigma * ((t_end - t_start) * ray_scale[r]),
 *   keep[c] = exp(-depth) >= eps && (alpha_thre <= 0 || 1 - exp(-sd) >= alpha_thre),  depth += sd,
 * and the ray stops once exp(-depth) < eps (depth in double, as the PyTorch twin). keep is written only for
 * the candidates evaluated (the caller zeroes it); *evaluated = their number; *status = 1 on a failed allocation. */
#define WAVE 32
static void fused_visibility_piece(int64_t r0, int64_t r1, const float *origins, const float *dirs,
                                   const float *ray_scale, const int64_t *first, const int64_t *count,
                                   const float *t_starts, const float *t_ends, FIELD_ARGS, const float *mlp,
                                   int n_neurons, int n_hidden, float bias, float height, double eps,
                                   float alpha_thre, uint8_t *keep, int64_t *evaluated, int *status) {
    const Field f = FIELD_INIT;
    const int W = L * F;
    Pairs p;
    float *x = malloc(sizeof(float) * WAVE * J * 3), *feats = malloc(sizeof(float) * WAVE * W);
    if (!pairs_alloc(&p, (int64_t)WAVE * J) || !x || !feats) {
        pairs_free(&p), free(x), free(feats);
        *status = 1;
        return;
    }
    float wsum[WAVE];
    int64_t ray[WAVE], cursor[WAVE], n_eval = 0, next = r0;
    double depth[WAVE];
    int active = 0;
    for (;;) {
        for (; active < WAVE && next < r1; ++next) /* refill the wave with the next rays that have candidates */
            if (count[next] > 0) ray[active] = next, cursor[active] = 0, depth[active] = 0.0, ++active;
        if (active == 0) break;
        for (int s = 0; s < active; ++s) {
            const int64_t c = first[ray[s]] + cursor[s];
            const float t_mid = 0.5f * (t_starts[c] + t_ends[c]);
            const float *o = origins + ray[s] * J * 3, *dr = dirs + ray[s] * J * 3;
            for (int k = 0; k < J * 3; ++k) x[s * J * 3 + k] = o[k] + t_mid * dr[k];
        }
        blend_block(&f, active, x, NULL, &p, feats, wsum, NULL);
        int kept = 0;
        for (int s = 0; s < active; ++s) {
            const int64_t c = first[ray[s]] + cursor[s];
            const float raw = mlp_first_output(mlp, feats + s * W, W, n_neurons, n_hidden) + bias;
            const float coverage = wsum[s] < 1.0f ? wsum[s] : 1.0f;
            const float sigma = coverage * expf(raw < 15.0f ? raw : 15.0f) / height;
            const float sd = sigma * ((t_ends[c] - t_starts[c]) * ray_scale[ray[s]]);
            int visible = exp(-depth[s]) >= eps;
            if (alpha_thre > 0.0f) visible &= (1.0f - expf(-sd)) >= alpha_thre;
            keep[c] = (uint8_t)visible;
            depth[s] += (double)sd;
            ++cursor[s], ++n_eval;
            if (exp(-depth[s]) >= eps && cursor[s] < count[ray[s]]) { /* still transparent: stays in the wave */
                ray[kept] = ray[s], cursor[kept] = cursor[s], depth[kept] = depth[s];
                ++kept;
            }
        }
        active = kept;
    }
    pairs_free(&p), free(x), free(feats);
    *evaluated = n_eval;
    *status = 0;
}

/* The exported kernels: the pieces above, each run over ``pieces`` parts of its range on OpenMP threads
 * (ckernels.h's PARALLEL_PIECES). The table gradient splits levels, which own disjoint entries: each entry is
 * written by one thread, in point order, so the result does not depend on the number of pieces. */

/* jac: NULL, or [n, L, 3, F] (see hg_forward_piece). */
void hg_forward(int pieces, int64_t start, int64_t stop, const float *x, const int64_t *base, const float *table,
                LEVEL_PARAMS, float *out, float *jac) {
    PARALLEL_PIECES(pieces, start, stop, hg_forward_piece(a, b, x, base, table, LEVEL_VALUES, out, jac));
}

void hg_backward_table(int pieces, int l_start, int l_stop, int64_t n, const float *x, const int64_t *base,
                       const float *grad_out, LEVEL_PARAMS, float *grad_table) {
    PARALLEL_PIECES(pieces, l_start, l_stop,
                    hg_backward_table_piece(n, (int)a, (int)b, x, base, grad_out, LEVEL_VALUES, grad_table));
}

void hg_backward_x(int pieces, int64_t start, int64_t stop, int F, int L, const float *jac, const float *grad_out,
                   float *grad_x) {
    PARALLEL_PIECES(pieces, start, stop, hg_backward_x_piece(a, b, F, L, jac, grad_out, grad_x));
}

/* status [pieces]: one per piece. */
void hg_blend_forward(int pieces, int64_t start, int64_t stop, const float *x, const float *d, FIELD_ARGS,
                      float *feats, float *wsum, float *dblend, int *status) {
    PARALLEL_PIECES(pieces, start, stop,
                    hg_blend_forward_piece(a, b, x, d, FIELD_VALUES, feats, wsum, dblend, status + k));
}

/* evaluated, status [pieces]: one per piece. */
void fused_visibility(int pieces, int64_t r0, int64_t r1, const float *origins, const float *dirs,
                      const float *ray_scale, const int64_t *first, const int64_t *count, const float *t_starts,
                      const float *t_ends, FIELD_ARGS, const float *mlp, int n_neurons, int n_hidden, float bias,
                      float height, double eps, float alpha_thre, uint8_t *keep, int64_t *evaluated, int *status) {
    PARALLEL_PIECES(pieces, r0, r1,
                    fused_visibility_piece(a, b, origins, dirs, ray_scale, first, count, t_starts, t_ends,
                                           FIELD_VALUES, mlp, n_neurons, n_hidden, bias, height, eps, alpha_thre,
                                           keep, evaluated + k, status + k));
}
