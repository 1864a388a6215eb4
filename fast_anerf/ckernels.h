/* Shared by the project's C kernels: ckernels.py force-includes this file (-include) when it builds them.
 *
 * Threads: each kernel's body (``NAME_piece``) works on a range [start, stop) of independent items (points, rays,
 * levels); the exported ``NAME(pieces, start, stop, ...)`` splits the range into ``pieces`` near-equal pieces and
 * runs them on OpenMP threads. Built with -fopenmp, the library links libgomp.so.1, which the dynamic loader
 * resolves to the copy torch already loaded (Linux wheels of torch ship libgomp), so the kernels run on torch's
 * own intra-op threads (with another OpenMP runtime in torch, e.g. libomp on macOS, two pools share the cores).
 * Handing the pieces to Python threads instead (the design before) cost 2-3 ms per call on a 2-core CPU: the
 * hand-off, and torch's OpenMP workers still spinning after its last op, fighting our threads for the cores (the
 * table gradient of a 29k-point batch: 5.9-7.0 ms from Python threads, 3.5 ms on the OpenMP threads). Without OpenMP
 * (a compiler that lacks it) the pragma is ignored and the pieces run one after another on the caller's thread.
 *
 * Floating-point control: each piece runs under the caller's MXCSR (flush-to-zero / denormals-are-zero), then
 * restores the worker's own. The trainer flushes denormals on its thread (torch.set_flush_denormal); a worker
 * that did not would round some sums differently, and runs would stop being repeatable.
 */
#include <stdint.h>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
static inline unsigned fpu_control_get(void) { return _mm_getcsr(); }
static inline void fpu_control_set(unsigned value) { _mm_setcsr(value); }
#else /* elsewhere torch.set_flush_denormal does nothing either */
static inline unsigned fpu_control_get(void) { return 0u; }
static inline void fpu_control_set(unsigned value) { (void)value; }
#endif

/* 1 when built with OpenMP (the exported kernels then run their pieces in parallel), else 0. */
int kernels_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Runs CALL for each piece k of ``pieces`` near-equal pieces [a, b) of [start, stop) (empty pieces skipped); CALL
 * sees k, a and b. In parallel on OpenMP threads, one piece per thread, each under the caller's MXCSR. */
#define PARALLEL_PIECES(pieces, start, stop, CALL)                                                               \
    do {                                                                                                         \
        const unsigned caller_fpu_ = fpu_control_get();                                                          \
        const int n_pieces_ = (pieces) > 0 ? (pieces) : 1;                                                       \
        const int64_t start_ = (start), total_ = (stop) - (start);                                               \
        _Pragma("omp parallel for num_threads(n_pieces_) schedule(static, 1)")                                   \
        for (int k = 0; k < n_pieces_; ++k) {                                                                    \
            const int64_t a = start_ + total_ * k / n_pieces_, b = start_ + total_ * (k + 1) / n_pieces_;       \
            const unsigned own_fpu_ = fpu_control_get();                                                         \
            fpu_control_set(caller_fpu_);                                                                        \
            if (b > a) CALL;                                                                                     \
            fpu_control_set(own_fpu_);                                                                           \
        }                                                                                                        \
    } while (0)
