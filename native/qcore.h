/* qcore.h: qnode's coincidence core.
 *
 * Everything between the CDEF markers is also fed to cffi's cdef(), so it holds only typedefs and
 * prototypes (no preprocessor lines). Times are int64 picoseconds throughout.
 */
#ifndef QNODE_QCORE_H
#define QNODE_QCORE_H
#include <stdint.h>

/* CDEF-BEGIN */
typedef struct {
    uint8_t type;      /* 0 = time tag, 1 error, 2 overflow begin, 3 overflow end, 4 missed events */
    uint8_t reserved;
    uint16_t missed;   /* events lost on this channel (MISSED_EVENTS records) */
    int32_t channel;
    int64_t time;      /* ps */
} qn_tag;

/* Bookkeeping every streaming engine keeps about its input. */
typedef struct {
    int64_t records;        /* records seen, of any type */
    int64_t tags;           /* TIME_TAG records on configured channels */
    int64_t other_tags;     /* TIME_TAG records on channels the engine was not configured for */
    int64_t missed_events;  /* sum of `missed` over MISSED_EVENTS records */
    int64_t overflows;      /* OVERFLOW_BEGIN records */
    int64_t errors;         /* ERROR records */
    int64_t dead_time_ps;   /* total length of closed OVERFLOW_BEGIN..OVERFLOW_END intervals */
    int64_t overflow_since; /* time of the open OVERFLOW_BEGIN, or -1 when none is open */
    int64_t last_time;      /* time of the last record, ps */
} qn_stats;

/* One pair specification for the pair engine. With dt = (t_b + delay_b) - (t_a + delay_a), the
 * engine counts every pair (tag on channel index a, tag on channel index b) with lo <= dt <= hi.
 * If n_bins > 0 it also histograms bin = (dt - lo) / bin_width; then hi must equal
 * lo + n_bins * bin_width - 1. a != b. */
typedef struct {
    int32_t a;
    int32_t b;
    int64_t lo;
    int64_t hi;
    int64_t bin_width;
    int64_t n_bins;
} qn_pair_spec;

typedef struct qn_pairs qn_pairs;
typedef struct qn_nfold qn_nfold;

typedef struct {
    int64_t time;   /* cluster time = delayed time of the cluster's first tag, ps */
    uint64_t mask;  /* bit i set when configured channel i has a tag in the cluster */
} qn_cluster;

/* Return codes (negative = error). */
enum {
    QN_OK = 0,
    QN_ENOMEM = -1,
    QN_EORDER = -2,     /* a record's time is earlier than the previous record's */
    QN_EARG = -3,
    QN_ECAPACITY = -4,  /* an output buffer is too small */
    QN_EFORMAT = -5,    /* a coded stream is malformed (Rice decoder) */
    QN_EUNSUPPORTED = -6 /* the CPU (or this build) lacks the instruction set asked for */
};

int qn_pairs_new(qn_pairs **out, int32_t n_channels, const int32_t *channels, const int64_t *delays,
                 int32_t n_specs, const qn_pair_spec *specs);
int qn_pairs_process(qn_pairs *p, const qn_tag *tags, int64_t n, int64_t *counts, int64_t *hist,
                     int64_t *singles, int64_t *bad_index);
void qn_pairs_stats(const qn_pairs *p, qn_stats *out);
void qn_pairs_free(qn_pairs *p);

int qn_nfold_new(qn_nfold **out, int32_t n_channels, const int32_t *channels, const int64_t *delays,
                 int64_t window, int32_t min_fold, int32_t with_histogram);
int qn_nfold_process(qn_nfold *p, const qn_tag *tags, int64_t n, int64_t *hist, int64_t *singles,
                     qn_cluster *events, int64_t capacity, int64_t *n_events, int64_t *bad_index);
int qn_nfold_flush(qn_nfold *p, int64_t *hist, qn_cluster *events, int64_t capacity,
                   int64_t *n_events);
int64_t qn_nfold_pending(const qn_nfold *p);
void qn_nfold_stats(const qn_nfold *p, qn_stats *out);
void qn_nfold_free(qn_nfold *p);

int qn_merge(int32_t k, const int64_t **times, const int64_t *lengths, const int32_t *channels,
             qn_tag *out, int64_t *bad_index);
void qn_init(void);
void qn_rng_fill(uint64_t *state, int32_t kind, double *out, int64_t n);
void qn_rng_sorted_uniform(uint64_t *state, int64_t n, int64_t lo, int64_t hi, int64_t *out);
int64_t qn_route_pairs(const int64_t *times, uint64_t *state, int64_t n, int32_t n_classes,
                       const double *cdf, const int32_t *route, int32_t n_sides,
                       int32_t n_both_classes, int64_t first_id, int64_t **out_times,
                       int64_t **out_ids, int64_t *out_counts);
int64_t qn_detector_finalize(const int64_t *pending_t, const int64_t *pending_id, int64_t n_pending,
                             const int64_t *new_t, const int64_t *new_id, uint64_t *state,
                             double sigma_ps, int64_t n_new, int64_t delay_ps, double clip_ps,
                             const int64_t *dark_t, int64_t dark_id, int64_t n_dark,
                             int64_t horizon_ps, int64_t dead_ps, int64_t *last_click,
                             int64_t *out_t, int64_t *out_id, int64_t *cut);
int64_t qn_dead_time(const int64_t *times, int64_t n, int64_t dead_ps, int64_t *last_click,
                     uint8_t *keep);
int qn_bin_mod(const int64_t *times, int64_t n, int64_t t0, int64_t bin_ps, int64_t n_bins,
               int64_t *hist);
int64_t qn_pair_deltas(const int64_t *a, int64_t na, const int64_t *b, int64_t nb, int64_t lo,
                       int64_t hi, int64_t *out, int64_t capacity);
int64_t qn_sum_times(const qn_tag *tags, int64_t n);
/* Rice-coded time stream (the timing-only wire, daemon/bus/timewire.py). A sorted array of n times
 * t[0..n) in [0, 2**62) is coded as its n - 1 gaps g = t[i] - t[i-1], least significant bit first:
 * q = g >> k zero bits, a one bit, then the k low bits of g; a gap with q >= 32 is escaped as 32
 * zero bits followed by g in 64 bits. The last byte is padded with zero bits. 0 <= k <= 48.
 * Encode: capacity >= qn_rice_bound(n); *out_len = bytes written; QN_EORDER (*bad = index) for a
 * time before its predecessor, QN_EARG for a time outside [0, 2**62) (*bad = index) or a bad k.
 * Decode: out has n entries; QN_EFORMAT (*bad = bit position) when the stream does not hold
 * exactly n - 1 gaps (short, extra bytes, non-zero padding), a time leaves [0, 2**62), or an
 * escape codes a gap that needed none. Never reads outside buf[0, len). */
int64_t qn_rice_bound(int64_t n);
int qn_rice_encode(const int64_t *times, int64_t n, int32_t k, uint8_t *out, int64_t capacity,
                   int64_t *out_len, int64_t *bad);
int qn_rice_decode(const uint8_t *buf, int64_t len, int64_t n, int64_t t0, int32_t k,
                   int64_t *out, int64_t *bad);
/* Base85 with the RFC 1924 alphabet, byte for byte as Python's base64.b85encode (a final partial
 * group of r bytes takes r + 1 characters). Encode: cap >= 5 * ceil(n / 4). Decode: cap >= n;
 * QN_EFORMAT (*bad = character index) for a character outside the alphabet, a group above
 * 2**32 - 1, or a final group of one character (which b85encode never writes). */
int qn_b85_encode(const uint8_t *in, int64_t n, uint8_t *out, int64_t cap, int64_t *out_len);
int qn_b85_decode(const uint8_t *in, int64_t n, uint8_t *out, int64_t cap, int64_t *out_len,
                  int64_t *bad);

/* Cross-node pairs (qnode.native.CrossPairs). Clock model of the peer (node b) against this node
 * (node a), as qnode.native.align.ClockModel: t_b = t_a + base + dev + rate * (t_a - ref); a
 * peer time maps to t_a = u - rint((dev + rate*u) / (1 + rate)) + ref, u = t_b - base - ref. */
typedef struct {
    int64_t base;  /* ps */
    int64_t ref;   /* ps, own clock */
    double dev;    /* ps */
    double rate;   /* dimensionless: drift_ppm * 1e-6 */
} qn_clock;

typedef struct {
    int64_t own;      /* index of the own tag in the own stream since the start (0, 1, ...) */
    int64_t peer;     /* index of the peer tag in the peer stream since the start */
    int64_t dt;       /* peer time mapped to the own clock minus own time, ps */
    int32_t channel;  /* the own tag's channel */
    int32_t reserved;
} qn_xpair;

typedef struct qn_xpairs qn_xpairs;

/* window: pairs have |dt| <= window. with_acc: also count accidentals, pairs under the same rule
 * with |dt - acc_shift| <= window. n_bins > 0: histogram every (own, peer) pair (all of them, not
 * only the matched ones) with hist_lo <= dt < hist_lo + n_bins*bin_width in bins of bin_width. */
int qn_xpairs_new(qn_xpairs **out, int64_t window, int32_t with_acc, int64_t acc_shift,
                  int64_t hist_lo, int64_t bin_width, int64_t n_bins);
/* Append own tags (times sorted, channels) and peer tags (peer clock, sorted), then settle every
 * own tag whose outcome no later peer tag can change. own_end / peer_end: the stream has no more
 * tags before this time (INT64_MIN: no claim); later tags before it are an order error.
 * Outputs: pairs (capacity >= settled own tags; qn_xpairs_capacity), *n_pairs, *accidentals,
 * hist (n_bins entries, added to). bad[0] = 0 (own) or 1 (peer), bad[1] = index, on QN_EORDER
 * (a time before its predecessor or before a declared end) or QN_EARG (time outside [0, 2**62),
 * clock out of range). On error nothing is consumed. */
int qn_xpairs_process(qn_xpairs *p, const int64_t *own_t, const int32_t *own_c, int64_t n_own,
                      int64_t own_end, const int64_t *peer_t, int64_t n_peer, int64_t peer_end,
                      const qn_clock *clock, qn_xpair *pairs, int64_t capacity, int64_t *n_pairs,
                      int64_t *accidentals, int64_t *hist, int64_t *bad);
/* Upper bound of the pairs the next process call with n_own, n_peer new tags can return. */
int64_t qn_xpairs_capacity(const qn_xpairs *p, int64_t n_own, int64_t n_peer);
/* counters[0..5]: own tags seen, peer tags seen, own tags settled, own tags pending, peer tags
 * buffered, index of the first buffered peer tag. */
void qn_xpairs_counters(const qn_xpairs *p, int64_t *counters);
void qn_xpairs_free(qn_xpairs *p);
/* LDPC syndrome decoder (qnode.native.LdpcDecoder): layered sum-product belief propagation for
 * H e = s over GF(2). H is m x n in CSR form: indptr (m + 1 entries, indptr[0] = 0,
 * non-decreasing), indices (indptr[m] column indices in [0, n), no repeat within a row). kernel:
 * 0 the fastest this CPU runs (AVX-512, else AVX2, else scalar), 1 scalar (phi from the chord
 * table), 2 exact (phi by libm; for validation, slower), 3 AVX2 (8 edges a step, table phi by
 * gathers), 4 AVX-512 (16 edges a step, phi by a per-octave polynomial whose coefficients come
 * from in-register permutes). QN_EARG on a malformed matrix, QN_EUNSUPPORTED for a kernel this
 * CPU or build cannot run. */
typedef struct qn_ldpc qn_ldpc;
int qn_ldpc_new(qn_ldpc **out, int64_t m, int64_t n, const int64_t *indptr,
                const int32_t *indices, int32_t kernel);
/* out[0..4]: m, n, edges, largest row weight, kernel in use (1 scalar, 2 exact, 3 AVX2,
 * 4 AVX-512). */
void qn_ldpc_shape(const qn_ldpc *d, int64_t *out);
/* phi(x) = -ln tanh(x / 2) for n values as the decoder's kernel computes it (x clamped to the
 * kernel's range first): for tests of each kernel's phi against libm. */
void qn_ldpc_phi(const qn_ldpc *d, const float *x, float *out, int64_t n);
/* 1 when this CPU and build run the kernel (codes as for qn_ldpc_new), 0 when the build has it
 * but the CPU lacks its instructions, -1 when the build left it out (-DQN_NO_AVX2/512). */
int qn_ldpc_supports(int32_t kernel);
/* Floats of workspace a decode call needs (the decoder itself is read-only after construction,
 * so threads may share it, each with its own workspace). */
int64_t qn_ldpc_work_size(const qn_ldpc *d);
/* work: work_size >= qn_ldpc_work_size floats; syndrome: m bytes 0/1; llr: n channel
 * log-likelihood ratios ln(P(e_v = 0)/P(e_v = 1)) (+-inf allowed, clipped to +-50; NaN is
 * QN_EARG); error: n bytes out (the hard decision, also when not
 * converged); *converged = 1 when H error = syndrome; *iterations run (0 when the channel's hard
 * decision already satisfies it). Stops at the first iteration whose hard decision satisfies
 * the syndrome, after max_iter >= 0 iterations, or (patience > 0) when the count of
 * unsatisfied checks has not reached a new low for patience iterations in a row: a frame
 * stuck at that point seldom converges later (patience 0: no such stop). resume != 0 continues
 * from the messages a previous call left in work (same decoder, same syndrome): the posteriors
 * take only the change of the channel LLRs, e.g. bits revealed since. */
int qn_ldpc_decode(const qn_ldpc *d, float *work, int64_t work_size, const uint8_t *syndrome,
                   const double *llr, int32_t max_iter, int32_t patience, int32_t resume,
                   uint8_t *error, int32_t *converged, int32_t *iterations);
void qn_ldpc_free(qn_ldpc *d);
/* CDEF-END */

#endif
