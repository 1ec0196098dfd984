/* qcore.c: qnode's streaming coincidence core.
 *
 * All engines keep their state across calls, so any split of a stream into chunks (including
 * empty and one-record chunks) gives exactly the result of the unsplit stream. The semantics are
 * defined by native/reference.py (the numpy oracle); see the docstrings in native/core.py.
 */
#include "qcore.h"

#include <stdlib.h>
#include <string.h>

#define QN_TIME_TAG 0
#define QN_ERROR 1
#define QN_OVERFLOW_BEGIN 2
#define QN_OVERFLOW_END 3
#define QN_MISSED_EVENTS 4
#define QN_MAX_LUT (1 << 20)

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* ---------------------------------------------------------------- shared pieces */

/* Channel number -> configured index, by direct lookup over [base, base + size). */
typedef struct {
    int32_t base;
    uint32_t size;
    int32_t *index;
} chan_lut;

static int lut_init(chan_lut *lut, int32_t n, const int32_t *channels) {
    int32_t lo = channels[0], hi = channels[0];
    for (int32_t i = 1; i < n; i++) {
        if (channels[i] < lo) lo = channels[i];
        if (channels[i] > hi) hi = channels[i];
    }
    int64_t size = (int64_t)hi - (int64_t)lo + 1;
    if (size > QN_MAX_LUT) return QN_EARG;
    lut->base = lo;
    lut->size = (uint32_t)size;
    lut->index = malloc(sizeof(int32_t) * (size_t)size);
    if (!lut->index) return QN_ENOMEM;
    for (int64_t i = 0; i < size; i++) lut->index[i] = -1;
    for (int32_t i = 0; i < n; i++) {
        if (lut->index[channels[i] - lo] != -1) return QN_EARG; /* duplicate channel */
        lut->index[channels[i] - lo] = i;
    }
    return QN_OK;
}

static inline int32_t lut_get(const chan_lut *lut, int32_t channel) {
    uint32_t off = (uint32_t)((int64_t)channel - lut->base);
    return off < lut->size ? lut->index[off] : -1;
}

/* Book-keeping for a non-TIME_TAG record. */
static void stats_record(qn_stats *s, const qn_tag *t) {
    switch (t->type) {
    case QN_OVERFLOW_BEGIN:
        s->overflows++;
        if (s->overflow_since < 0) s->overflow_since = t->time;
        break;
    case QN_OVERFLOW_END:
        if (s->overflow_since >= 0) {
            s->dead_time_ps += t->time - s->overflow_since;
            s->overflow_since = -1;
        }
        break;
    case QN_MISSED_EVENTS:
        s->missed_events += t->missed;
        break;
    default:
        s->errors++;
        break;
    }
}

static void stats_init(qn_stats *s) {
    memset(s, 0, sizeof(*s));
    s->overflow_since = -1;
    s->last_time = INT64_MIN;
}

/* A ring of recent raw times on one channel: newest at `head`, up to `count` valid entries.
 * Entries are dropped only once no future tag can pair with them (older than now - lookback);
 * otherwise the ring grows. */
typedef struct {
    int64_t *buf;
    int64_t mask;
    int64_t head;
    int64_t count;
    int64_t lookback;
} ring;

static int ring_init(ring *r, int64_t cap) {
    r->buf = malloc(sizeof(int64_t) * (size_t)cap);
    if (!r->buf) return QN_ENOMEM;
    r->mask = cap - 1;
    r->head = cap - 1;
    r->count = 0;
    return QN_OK;
}

static int ring_grow(ring *r) {
    int64_t cap = r->mask + 1;
    int64_t *nb = malloc(sizeof(int64_t) * (size_t)(2 * cap));
    if (!nb) return QN_ENOMEM;
    for (int64_t k = 0; k < r->count; k++)
        nb[k] = r->buf[(r->head - r->count + 1 + k) & r->mask];
    free(r->buf);
    r->buf = nb;
    r->mask = 2 * cap - 1;
    r->head = r->count - 1;
    return QN_OK;
}

static inline int ring_push(ring *r, int64_t t) {
    if (UNLIKELY(r->count == r->mask + 1)) {
        int64_t oldest = r->buf[(r->head + 1) & r->mask];
        if (oldest >= t - r->lookback) {
            if (ring_grow(r) != QN_OK) return QN_ENOMEM;
        } else {
            r->count--;
        }
    }
    r->head = (r->head + 1) & r->mask;
    r->buf[r->head] = t;
    r->count++;
    return QN_OK;
}

/* A FIFO of delayed times, oldest at `start`. */
typedef struct {
    int64_t *buf;
    int64_t mask;
    int64_t start;
    int64_t count;
} fifo;

static int fifo_init(fifo *q, int64_t cap) {
    q->buf = malloc(sizeof(int64_t) * (size_t)cap);
    if (!q->buf) return QN_ENOMEM;
    q->mask = cap - 1;
    q->start = 0;
    q->count = 0;
    return QN_OK;
}

static inline int fifo_push(fifo *q, int64_t t) {
    if (UNLIKELY(q->count == q->mask + 1)) {
        int64_t cap = q->mask + 1;
        int64_t *nb = malloc(sizeof(int64_t) * (size_t)(2 * cap));
        if (!nb) return QN_ENOMEM;
        for (int64_t k = 0; k < q->count; k++) nb[k] = q->buf[(q->start + k) & q->mask];
        free(q->buf);
        q->buf = nb;
        q->mask = 2 * cap - 1;
        q->start = 0;
    }
    q->buf[(q->start + q->count) & q->mask] = t;
    q->count++;
    return QN_OK;
}

/* ---------------------------------------------------------------- pair engine */

/* What a tag arriving on one channel must look up: partner tags with raw time in
 * [t + rlo, t + rhi]; dt = sign * (t_partner - t) + dd. */
typedef struct {
    int32_t partner;
    int32_t spec;
    int64_t rlo;
    int64_t rhi;
    int64_t sign;
    int64_t dd;
    int64_t lo;
    int64_t bin_width;
    int64_t hist_offset; /* -1: count only */
} pair_entry;

struct qn_pairs {
    int32_t n_channels;
    int32_t n_specs;
    chan_lut lut;
    ring *rings;
    int32_t *entry_start; /* entries of channel i: entries[entry_start[i] .. entry_start[i+1]) */
    uint8_t *keep;        /* channel i is somebody's partner: store its tags */
    pair_entry *entries;
    qn_stats stats;
};

void qn_pairs_free(qn_pairs *p) {
    if (!p) return;
    if (p->rings)
        for (int32_t i = 0; i < p->n_channels; i++) free(p->rings[i].buf);
    free(p->rings);
    free(p->entry_start);
    free(p->keep);
    free(p->entries);
    free(p->lut.index);
    free(p);
}

int qn_pairs_new(qn_pairs **out, int32_t n_channels, const int32_t *channels, const int64_t *delays,
                 int32_t n_specs, const qn_pair_spec *specs) {
    *out = NULL;
    if (n_channels < 1 || n_specs < 1) return QN_EARG;
    for (int32_t s = 0; s < n_specs; s++) {
        const qn_pair_spec *sp = &specs[s];
        if (sp->a < 0 || sp->a >= n_channels || sp->b < 0 || sp->b >= n_channels || sp->a == sp->b)
            return QN_EARG;
        if (sp->hi < sp->lo) return QN_EARG;
        if (sp->n_bins > 0 && (sp->bin_width < 1 || sp->hi != sp->lo + sp->n_bins * sp->bin_width - 1))
            return QN_EARG;
    }
    qn_pairs *p = calloc(1, sizeof(*p));
    if (!p) return QN_ENOMEM;
    p->n_channels = n_channels;
    p->n_specs = n_specs;
    int rc = lut_init(&p->lut, n_channels, channels);
    if (rc != QN_OK) goto fail;
    rc = QN_ENOMEM;
    p->rings = calloc((size_t)n_channels, sizeof(ring));
    p->entry_start = calloc((size_t)n_channels + 1, sizeof(int32_t));
    p->keep = calloc((size_t)n_channels, 1);
    p->entries = calloc((size_t)n_specs * 2, sizeof(pair_entry));
    if (!p->rings || !p->entry_start || !p->keep || !p->entries) goto fail;

    /* Each spec yields one entry on channel b (partner a) and one on channel a (partner b). */
    int32_t k = 0;
    int64_t *min_rlo = malloc(sizeof(int64_t) * (size_t)n_channels);
    if (!min_rlo) goto fail;
    for (int32_t i = 0; i < n_channels; i++) min_rlo[i] = INT64_MAX;
    for (int32_t c = 0; c < n_channels; c++) {
        p->entry_start[c] = k;
        int64_t off = 0;
        for (int32_t s = 0; s < n_specs; s++) {
            const qn_pair_spec *sp = &specs[s];
            int64_t dd = delays[sp->b] - delays[sp->a];
            int64_t this_off = sp->n_bins > 0 ? off : -1;
            if (sp->n_bins > 0) off += sp->n_bins;
            pair_entry e = {0};
            if (sp->b == c) { /* dt = (t - t_a) + dd  =>  t_a in [t + dd - hi, t + dd - lo] */
                e.partner = sp->a; e.rlo = dd - sp->hi; e.rhi = dd - sp->lo; e.sign = -1;
            } else if (sp->a == c) { /* dt = (t_b - t) + dd  =>  t_b in [t - dd + lo, t - dd + hi] */
                e.partner = sp->b; e.rlo = sp->lo - dd; e.rhi = sp->hi - dd; e.sign = 1;
            } else {
                continue;
            }
            e.spec = s; e.dd = dd; e.lo = sp->lo; e.bin_width = sp->bin_width;
            e.hist_offset = this_off;
            p->entries[k++] = e;
            p->keep[e.partner] = 1;
            if (e.rlo < min_rlo[e.partner]) min_rlo[e.partner] = e.rlo;
        }
    }
    p->entry_start[n_channels] = k;
    for (int32_t c = 0; c < n_channels; c++) {
        if (ring_init(&p->rings[c], 1024) != QN_OK) { free(min_rlo); goto fail; }
        int64_t lb = min_rlo[c] == INT64_MAX ? 0 : -min_rlo[c];
        p->rings[c].lookback = lb > 0 ? lb : 0;
    }
    free(min_rlo);
    stats_init(&p->stats);
    *out = p;
    return QN_OK;
fail:
    qn_pairs_free(p);
    return rc;
}

int qn_pairs_process(qn_pairs *p, const qn_tag *tags, int64_t n, int64_t *counts, int64_t *hist,
                     int64_t *singles, int64_t *bad_index) {
    qn_stats *st = &p->stats;
    int64_t last = st->last_time;
    int64_t other = 0, ntags = 0;
    const int32_t *estart = p->entry_start;
    const pair_entry *entries = p->entries;
    ring *rings = p->rings;
    int rc = QN_OK;
    int64_t i;
    for (i = 0; i < n; i++) {
        const int64_t t = tags[i].time;
        if (UNLIKELY(t < last)) { rc = QN_EORDER; break; }
        last = t;
        if (UNLIKELY(tags[i].type != QN_TIME_TAG)) { stats_record(st, &tags[i]); continue; }
        const int32_t c = lut_get(&p->lut, tags[i].channel);
        if (UNLIKELY(c < 0)) { other++; continue; }
        singles[c]++;
        ntags++;
        for (int32_t j = estart[c]; j < estart[c + 1]; j++) {
            const pair_entry *e = &entries[j];
            const ring *r = &rings[e->partner];
            const int64_t lo = t + e->rlo, hi = t + e->rhi;
            int64_t idx = r->head;
            const int64_t *buf = r->buf;
            const int64_t mask = r->mask;
            if (e->hist_offset < 0) {
                int64_t hits = 0;
                for (int64_t left = r->count; left > 0; left--) {
                    const int64_t v = buf[idx];
                    if (v < lo) break;
                    hits += (v <= hi);
                    idx = (idx - 1) & mask;
                }
                counts[e->spec] += hits;
            } else {
                int64_t *h = hist + e->hist_offset;
                for (int64_t left = r->count; left > 0; left--) {
                    const int64_t v = buf[idx];
                    if (v < lo) break;
                    if (v <= hi) {
                        const int64_t dt = e->sign * (v - t) + e->dd;
                        h[(dt - e->lo) / e->bin_width]++;
                        counts[e->spec]++;
                    }
                    idx = (idx - 1) & mask;
                }
            }
        }
        if (p->keep[c] && UNLIKELY(ring_push(&rings[c], t) != QN_OK)) { rc = QN_ENOMEM; i++; break; }
    }
    st->records += i;
    st->tags += ntags;
    st->other_tags += other;
    st->last_time = last;
    if (bad_index) *bad_index = i;
    return rc;
}

void qn_pairs_stats(const qn_pairs *p, qn_stats *out) { *out = p->stats; }

/* ---------------------------------------------------------------- N-fold clusters */

struct qn_nfold {
    int32_t n_channels;
    chan_lut lut;
    int64_t *shift;      /* delay - min(delay) >= 0 */
    int64_t min_delay;
    int64_t window;
    int32_t min_fold;
    int32_t with_histogram;
    int32_t all_equal;   /* all delays equal: stream order is delayed-time order */
    fifo *pending;       /* per channel, delayed (shifted) times not yet released */
    int64_t n_pending;
    int32_t open;
    int64_t t_open;      /* shifted time of the open cluster's first tag */
    uint64_t mask;
    qn_stats stats;
};

void qn_nfold_free(qn_nfold *p) {
    if (!p) return;
    if (p->pending)
        for (int32_t i = 0; i < p->n_channels; i++) free(p->pending[i].buf);
    free(p->pending);
    free(p->shift);
    free(p->lut.index);
    free(p);
}

int qn_nfold_new(qn_nfold **out, int32_t n_channels, const int32_t *channels, const int64_t *delays,
                 int64_t window, int32_t min_fold, int32_t with_histogram) {
    *out = NULL;
    if (n_channels < 1 || n_channels > 64 || window < 0 || min_fold < 1 || min_fold > n_channels)
        return QN_EARG;
    if (with_histogram && n_channels > 20) return QN_EARG;
    qn_nfold *p = calloc(1, sizeof(*p));
    if (!p) return QN_ENOMEM;
    p->n_channels = n_channels;
    p->window = window;
    p->min_fold = min_fold;
    p->with_histogram = with_histogram;
    int rc = lut_init(&p->lut, n_channels, channels);
    if (rc != QN_OK) goto fail;
    rc = QN_ENOMEM;
    p->shift = malloc(sizeof(int64_t) * (size_t)n_channels);
    p->pending = calloc((size_t)n_channels, sizeof(fifo));
    if (!p->shift || !p->pending) goto fail;
    p->min_delay = delays[0];
    for (int32_t i = 1; i < n_channels; i++)
        if (delays[i] < p->min_delay) p->min_delay = delays[i];
    p->all_equal = 1;
    for (int32_t i = 0; i < n_channels; i++) {
        p->shift[i] = delays[i] - p->min_delay;
        if (p->shift[i] != 0) p->all_equal = 0;
        if (fifo_init(&p->pending[i], 256) != QN_OK) goto fail;
    }
    stats_init(&p->stats);
    *out = p;
    return QN_OK;
fail:
    qn_nfold_free(p);
    return rc;
}

typedef struct {
    int64_t *hist;
    qn_cluster *events;
    int64_t capacity;
    int64_t n_events;
} nfold_out;

static inline int nfold_emit(qn_nfold *p, nfold_out *o) {
    if (p->with_histogram) o->hist[p->mask]++;
    if (__builtin_popcountll(p->mask) >= p->min_fold) {
        if (UNLIKELY(o->n_events >= o->capacity)) return QN_ECAPACITY;
        o->events[o->n_events].time = p->t_open + p->min_delay;
        o->events[o->n_events].mask = p->mask;
        o->n_events++;
    }
    p->open = 0;
    return QN_OK;
}

/* Feed one tag in delayed-time order to the cluster state machine. */
static inline int nfold_feed(qn_nfold *p, int64_t t, int32_t c, nfold_out *o) {
    if (p->open && t <= p->t_open + p->window) {
        p->mask |= (uint64_t)1 << c;
        return QN_OK;
    }
    if (p->open) {
        int rc = nfold_emit(p, o);
        if (rc != QN_OK) return rc;
    }
    p->open = 1;
    p->t_open = t;
    p->mask = (uint64_t)1 << c;
    return QN_OK;
}

/* Release pending tags in delayed-time order while no later record can precede them. */
static int nfold_release(qn_nfold *p, int64_t now, int all, nfold_out *o) {
    while (p->n_pending > 0) {
        int32_t best = -1;
        int64_t best_t = INT64_MAX;
        for (int32_t c = 0; c < p->n_channels; c++) {
            const fifo *q = &p->pending[c];
            if (q->count && q->buf[q->start] < best_t) { best_t = q->buf[q->start]; best = c; }
        }
        if (!all && best_t > now) break;
        fifo *q = &p->pending[best];
        q->start = (q->start + 1) & q->mask;
        q->count--;
        p->n_pending--;
        int rc = nfold_feed(p, best_t, best, o);
        if (rc != QN_OK) return rc;
    }
    return QN_OK;
}

int qn_nfold_process(qn_nfold *p, const qn_tag *tags, int64_t n, int64_t *hist, int64_t *singles,
                     qn_cluster *events, int64_t capacity, int64_t *n_events, int64_t *bad_index) {
    qn_stats *st = &p->stats;
    nfold_out o = {hist, events, capacity, 0};
    int64_t last = st->last_time;
    int64_t other = 0, ntags = 0;
    int rc = QN_OK;
    int64_t i;
    for (i = 0; i < n; i++) {
        const int64_t t = tags[i].time;
        if (UNLIKELY(t < last)) { rc = QN_EORDER; break; }
        last = t;
        if (UNLIKELY(tags[i].type != QN_TIME_TAG)) { stats_record(st, &tags[i]); continue; }
        const int32_t c = lut_get(&p->lut, tags[i].channel);
        if (UNLIKELY(c < 0)) { other++; continue; }
        singles[c]++;
        ntags++;
        if (p->all_equal) {
            rc = nfold_feed(p, t, c, &o);
        } else {
            rc = fifo_push(&p->pending[c], t + p->shift[c]);
            if (rc == QN_OK) {
                p->n_pending++;
                rc = nfold_release(p, t, 0, &o);
            }
        }
        if (UNLIKELY(rc != QN_OK)) { i++; break; }
    }
    st->records += i;
    st->tags += ntags;
    st->other_tags += other;
    st->last_time = last;
    /* Every tag still to be fed has delayed time >= last (pending ones are > last after the
     * release loop), so a cluster that ended before `last` is complete. */
    if (rc == QN_OK && p->open && p->t_open + p->window < last) rc = nfold_emit(p, &o);
    *n_events = o.n_events;
    if (bad_index) *bad_index = i;
    return rc;
}

int qn_nfold_flush(qn_nfold *p, int64_t *hist, qn_cluster *events, int64_t capacity,
                   int64_t *n_events) {
    nfold_out o = {hist, events, capacity, 0};
    int rc = nfold_release(p, 0, 1, &o);
    if (rc == QN_OK && p->open) rc = nfold_emit(p, &o);
    *n_events = o.n_events;
    return rc;
}

int64_t qn_nfold_pending(const qn_nfold *p) { return p->n_pending; }

void qn_nfold_stats(const qn_nfold *p, qn_stats *out) { *out = p->stats; }

/* ---------------------------------------------------------------- stream utilities */

/* k-way merge of per-channel sorted time arrays into one TagBlock; equal times are ordered by
 * channel number. */
int qn_merge(int32_t k, const int64_t **times, const int64_t *lengths, const int32_t *channels,
             qn_tag *out, int64_t *bad_index) {
    int64_t *pos = calloc((size_t)(k > 0 ? k : 1), sizeof(int64_t));
    if (!pos) return QN_ENOMEM;
    for (int32_t c = 0; c < k; c++)
        for (int64_t j = 1; j < lengths[c]; j++)
            if (times[c][j] < times[c][j - 1]) { *bad_index = c; free(pos); return QN_EORDER; }
    int64_t n = 0;
    for (;;) {
        int32_t best = -1;
        int64_t bt = 0;
        int32_t bch = 0;
        for (int32_t c = 0; c < k; c++) {
            if (pos[c] >= lengths[c]) continue;
            int64_t t = times[c][pos[c]];
            if (best < 0 || t < bt || (t == bt && channels[c] < bch)) { best = c; bt = t; bch = channels[c]; }
        }
        if (best < 0) break;
        /* Copy the run of `best` that stays ahead of every other head. */
        int64_t limit = INT64_MAX;
        int32_t limit_ch = 0;
        for (int32_t c = 0; c < k; c++) {
            if (c == best || pos[c] >= lengths[c]) continue;
            int64_t t = times[c][pos[c]];
            if (t < limit || (t == limit && channels[c] < limit_ch)) { limit = t; limit_ch = channels[c]; }
        }
        const int64_t *src = times[best];
        int64_t j = pos[best], end = lengths[best];
        for (; j < end; j++) {
            int64_t t = src[j];
            if (t > limit || (t == limit && bch > limit_ch)) break;
            qn_tag *o = &out[n++];
            o->type = QN_TIME_TAG; o->reserved = 0; o->missed = 0; o->channel = bch; o->time = t;
        }
        pos[best] = j;
    }
    free(pos);
    return QN_OK;
}

/* Non-paralysable dead time: a detector that clicks at t is blind during [t, t + dead_ps). */
int64_t qn_dead_time(const int64_t *times, int64_t n, int64_t dead_ps, int64_t *last_click,
                     uint8_t *keep) {
    int64_t last = *last_click, kept = 0;
    for (int64_t i = 0; i < n; i++) {
        int ok = (times[i] - last) >= dead_ps;
        keep[i] = (uint8_t)ok;
        if (ok) { last = times[i]; kept++; }
    }
    *last_click = last;
    return kept;
}

/* hist[floor((t - t0) / bin_ps) mod n_bins] += 1, n_bins a power of two. */
int qn_bin_mod(const int64_t *times, int64_t n, int64_t t0, int64_t bin_ps, int64_t n_bins,
               int64_t *hist) {
    if (bin_ps < 1 || n_bins < 1 || (n_bins & (n_bins - 1))) return QN_EARG;
    const int64_t mask = n_bins - 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t d = times[i] - t0;
        int64_t q = d / bin_ps;
        if ((d % bin_ps) < 0) q--;
        hist[q & mask]++;
    }
    return QN_OK;
}

/* All differences b[j] - a[i] in [lo, hi], for sorted a and b. Writes at most `capacity` of them
 * (ordered by i, then j) and returns how many there are. */
int64_t qn_pair_deltas(const int64_t *a, int64_t na, const int64_t *b, int64_t nb, int64_t lo,
                       int64_t hi, int64_t *out, int64_t capacity) {
    int64_t total = 0, j0 = 0;
    for (int64_t i = 0; i < na; i++) {
        const int64_t lo_t = a[i] + lo, hi_t = a[i] + hi;
        while (j0 < nb && b[j0] < lo_t) j0++;
        for (int64_t j = j0; j < nb && b[j] <= hi_t; j++) {
            if (total < capacity) out[total] = b[j] - a[i];
            total++;
        }
    }
    return total;
}

/* The bandwidth baseline: a streaming sum over the time field. */
int64_t qn_sum_times(const qn_tag *tags, int64_t n) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += tags[i].time;
    return s;
}
