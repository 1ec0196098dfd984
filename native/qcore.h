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
    QN_ECAPACITY = -4   /* an output buffer is too small */
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
/* CDEF-END */

#endif
