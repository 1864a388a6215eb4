/* Occupancy marching on the CPU: which fixed-step candidates of each ray lie in an occupied cell of a posed bone
 * box containing them (march.py loads this file; march.py's _occupied_torch is the plain-PyTorch twin).
 *
 * The twin gathers every (ray, bone) box hit, expands it to its range of candidates and tests them with ~40
 * tensor ops over [candidates x boxes] temporaries (~6 ms per 2048-ray training batch on this 2-core CPU); here
 * one loop visits each hit's candidates once. Same float32 arithmetic, op by op and in the same order (C99
 * without fused multiply-adds), so both keep exactly the same candidates:
 *   k range of a hit: k_lo = clamp(ceil((t_in - a) / dt - 0.5) - 1, 0, K-1), k_hi = clamp(floor((t_out - a) / dt
 *   - 0.5) + 1, -1, K-1); candidate k's midpoint mid = a + (k + 0.5) * dt, kept for this box when t_in <= mid <=
 *   t_out and mid < far; its bone-local point p = o + mid * d; cell floor((p - box_min) / box_size * R) clamped
 *   to [0, R-1] per axis; occupied if binaries[bone][cell].
 *
 * Arrays (contiguous): t_in, t_out [n_rays, J] float32, hit [n_rays, J] uint8, origins, directions [n_rays, J, 3]
 * float32 (the rays in every bone frame), anchor, dt, far [n_rays] float32, binaries [J, R^3] uint8, box_min,
 * box_size [J, 3] float32. Output keep [n_rays, K] uint8, zeroed by the caller; rays [start, stop) are written
 * (rows are disjoint: the exported kernels at the end split rays over threads).
 */
#include <math.h>
#include <stdint.h>

static void march_occupied_piece(int64_t start, int64_t stop, int J, int64_t K, const float *t_in,
                                 const float *t_out, const uint8_t *hit, const float *origins, const float *directions,
                                 const float *anchor, const float *dt, const float *far, const uint8_t *binaries,
                                 int R, const float *box_min, const float *box_size, uint8_t *keep) {
    const float res = (float)R;
    const int64_t cells = (int64_t)R * R * R;
    for (int64_t r = start; r < stop; ++r) {
        const float a = anchor[r], step = dt[r], f = far[r];
        uint8_t *row = keep + r * K;
        for (int j = 0; j < J; ++j) {
            const int64_t h = r * J + j;
            if (!hit[h]) continue;
            const float lo = t_in[h], hi = t_out[h];
            float k_lo = ceilf((lo - a) / step - 0.5f) - 1.0f;
            float k_hi = floorf((hi - a) / step - 0.5f) + 1.0f;
            k_lo = k_lo < 0.0f ? 0.0f : (k_lo > (float)(K - 1) ? (float)(K - 1) : k_lo);
            k_hi = k_hi < -1.0f ? -1.0f : (k_hi > (float)(K - 1) ? (float)(K - 1) : k_hi);
            const float *o = origins + 3 * h, *d = directions + 3 * h;
            const float *bmin = box_min + 3 * j, *bsize = box_size + 3 * j;
            const uint8_t *occ = binaries + j * cells;
            for (int64_t k = (int64_t)k_lo; k <= (int64_t)k_hi; ++k) {
                if (row[k]) continue; /* already kept through another bone */
                const float mid = a + ((float)k + 0.5f) * step;
                if (!(mid >= lo && mid <= hi && mid < f)) continue;
                int64_t cell = 0;
                for (int e = 0; e < 3; ++e) {
                    const float p = o[e] + mid * d[e];
                    float c = floorf((p - bmin[e]) / bsize[e] * res);
                    c = c < 0.0f ? 0.0f : (c > res - 1.0f ? res - 1.0f : c);
                    cell = cell * R + (int64_t)c;
                }
                row[k] = occ[cell];
            }
        }
    }
}

/* bone_boxes.ray_box_intervals for rays [start, stop) (its C twin, same float32 operations): per ray and bone j,
 * slabs t0 = (box_min - o) * inv, t1 = (box_max - o) * inv with inv = 1 / d (d replaced by 1e-12 where
 * |d| < 1e-12), t_in = max over axes of min(t0, t1), clamped to >= 0, t_out = min over axes of max(t0, t1),
 * hit = t_out > t_in. origins, directions [n_rays, J, 3]; box_min, box_max [J, 3]; t_in, t_out [n_rays, J]
 * float32 and hit [n_rays, J] uint8 written here. (Finite inputs: NaN propagates differently than in torch.) */
static void ray_box_intervals_piece(int64_t start, int64_t stop, int J, const float *origins,
                                    const float *directions, const float *box_min, const float *box_max, float *t_in,
                                    float *t_out, uint8_t *hit) {
    for (int64_t r = start; r < stop; ++r)
        for (int j = 0; j < J; ++j) {
            const int64_t h = r * J + j;
            float lo = -INFINITY, hi = INFINITY;
            for (int e = 0; e < 3; ++e) {
                const float d = directions[3 * h + e];
                const float inv = 1.0f / (fabsf(d) < 1e-12f ? 1e-12f : d);
                const float t0 = (box_min[3 * j + e] - origins[3 * h + e]) * inv;
                const float t1 = (box_max[3 * j + e] - origins[3 * h + e]) * inv;
                const float near = t0 < t1 ? t0 : t1, far = t0 < t1 ? t1 : t0;
                lo = near > lo ? near : lo;
                hi = far < hi ? far : hi;
            }
            lo = lo < 0.0f ? 0.0f : lo;
            t_in[h] = lo;
            t_out[h] = hi;
            hit[h] = hi > lo;
        }
}

/* The exported kernels: rays [start, stop) split into ``pieces`` run on OpenMP threads (ckernels.h). */
void march_occupied(int pieces, int64_t start, int64_t stop, int J, int64_t K, const float *t_in, const float *t_out,
                    const uint8_t *hit, const float *origins, const float *directions, const float *anchor,
                    const float *dt, const float *far, const uint8_t *binaries, int R, const float *box_min,
                    const float *box_size, uint8_t *keep) {
    PARALLEL_PIECES(pieces, start, stop,
                    march_occupied_piece(a, b, J, K, t_in, t_out, hit, origins, directions, anchor, dt, far,
                                         binaries, R, box_min, box_size, keep));
}

void ray_box_intervals(int pieces, int64_t start, int64_t stop, int J, const float *origins, const float *directions,
                       const float *box_min, const float *box_max, float *t_in, float *t_out, uint8_t *hit) {
    PARALLEL_PIECES(pieces, start, stop,
                    ray_box_intervals_piece(a, b, J, origins, directions, box_min, box_max, t_in, t_out, hit));
}
