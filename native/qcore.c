/* qcore.c: qnode's streaming coincidence core.
 *
 * All engines keep their state across calls, so any split of a stream into chunks (including
 * empty and one-record chunks) gives exactly the result of the unsplit stream. The semantics are
 * defined by native/reference.py (the numpy oracle); see the docstrings in native/core.py.
 */
#include "qcore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The pair engine's gap kernel has an AVX2 version, compiled for x86-64 with a target attribute
 * and chosen at run time (so the default build flags stay portable). -DQN_NO_AVX2 leaves it out. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(QN_NO_AVX2)
#define QN_HAVE_AVX2 1
#include <immintrin.h>
/* The LDPC decoder also has an AVX-512F kernel, chosen at run time; -DQN_NO_AVX512 leaves it
 * out (and -DQN_NO_AVX2 leaves out both). */
#if !defined(QN_NO_AVX512)
#define QN_HAVE_AVX512 1
#endif
#endif

#define QN_TIME_TAG 0
#define QN_ERROR 1
#define QN_OVERFLOW_BEGIN 2
#define QN_OVERFLOW_END 3
#define QN_MISSED_EVENTS 4
#define QN_MAX_LUT (1 << 20)

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* Keep rare paths out of line so the hot loop keeps its registers. */
#define COLD __attribute__((noinline, cold))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define COLD
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
COLD static void stats_record(qn_stats *s, const qn_tag *t) {
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

/* Pair engine. A pair is counted once, when its later tag (in stream order) arrives: that tag
 * looks back for partner tags with raw time in [t + rlo, t + rhi]. The exact count is pair_scan:
 * back through the chunk itself, then through `carry`, the tags of earlier chunks that a future
 * window can reach. Two kernels decide which tags need a scan, chosen per chunk
 * (pair_gap_suits):
 *  - the gap kernel (the usual case: windows that reach back over fewer than half a record on
 *    average): a tag scans only when the record just before it lies within `lookback`. With AVX2 it reads four
 *    records per step and counts singles without a per-tag lookup.
 *  - the newest-time kernel (wide windows, e.g. g2 histograms or accidentals at high rates): a
 *    tag compares with its partner channels' newest times and scans on a possible hit. */

typedef struct {
    int64_t rlo;
    int64_t rhi;
    const int64_t *partner_newest; /* the partner channel's newest tag time */
    int32_t partner;               /* configured index of the partner channel */
    int32_t partner_channel;       /* its channel number */
    int64_t *count;          /* the spec's counter (engine-owned) */
    int64_t *hist;           /* the spec's histogram (engine-owned) + 1 spare slot, or NULL */
    int64_t n_bins;          /* hist[n_bins] is the spare slot: non-matches land there */
    int64_t sign;            /* dt = sign * (t_partner - t) + dd */
    int64_t dd;
    int64_t lo;
    int64_t bin_width;
} pair_entry;

/* A channel's entries that share one partner: one look at the partner's newest time (against
 * the group's lowest rlo) decides whether any of them needs a scan. */
typedef struct {
    int64_t rlo;
    const int64_t *partner_newest;
    const pair_entry *begin, *end;
} pair_group;

/* Everything the newest-time kernel touches for one channel, in its first 64 bytes; then the
 * range of all the channel's entries (its groups' entries are contiguous), for the gap kernel. */
typedef struct {
    int64_t newest;                       /* time of this channel's newest tag, or INT64_MIN */
    int64_t singles;                      /* since the last process call */
    pair_group first;                     /* first partner group (a never-hit dummy if none) */
    const pair_group *more_begin, *more_end; /* further partner groups */
    const pair_entry *ent_begin, *ent_end;   /* all entries of this channel */
} pair_chan;

static const int64_t never_newest = INT64_MIN;

/* A channel with exactly one entry and no histogram (every channel of plain 2-fold counting on
 * disjoint pairs), by channel number - lut.base: the gap kernel's candidates find all they need
 * here in one load, instead of through pair_chan and pair_entry. count == NULL: not such a
 * channel. */
typedef struct {
    int64_t rlo, rhi;
    uint64_t want;      /* the head of a plain time tag on the partner channel */
    int64_t *count;
    int64_t partner;    /* configured index of the partner channel (for the carry) */
} pair_solo;

struct qn_pairs {
    int32_t n_channels;
    int32_t n_specs;
    int64_t n_bins;
    chan_lut lut;
    int32_t *channels;
    uint8_t *keep;     /* channel index -> some entry looks at its tags */
    pair_chan *chans;
    pair_chan other;     /* stands in for every unconfigured channel: its singles are `other_tags` */
    pair_chan **chan_of; /* channel number - lut.base -> its pair_chan, or &other */
    pair_solo *solo;     /* channel number - lut.base -> its single entry, if it has one */
    int32_t multi_group; /* some channel has more than one partner group */
    int32_t newest_stale; /* the gap kernel ran since `newest` was last kept up to date */
    int32_t use_avx2;     /* the CPU runs the AVX2 gap kernel */
    pair_entry *entries;
    pair_group *groups;
    int64_t *spec_bins;      /* per spec: histogram bins (0 = count only) */
    int64_t lookback;  /* a future window never reaches below (newest record) - lookback */
    int64_t *carry_t;  /* kept tags of earlier chunks, time-ordered */
    int32_t *carry_c;  /* their channel indices */
    int64_t carry_n, carry_cap;
    int64_t *counts;   /* per spec, since the last process call */
    int64_t *hist;     /* all specs' bins, each followed by a spare slot, since the last call */
    qn_stats stats;
};

void qn_pairs_free(qn_pairs *p) {
    if (!p) return;
    free(p->channels);
    free(p->keep);
    free(p->chans);
    free(p->entries);
    free(p->groups);
    free(p->spec_bins);
    free(p->chan_of);
    free(p->solo);
    free(p->carry_t);
    free(p->carry_c);
    free(p->counts);
    free(p->hist);
    free(p->lut.index);
    free(p);
}

int qn_pairs_new(qn_pairs **out, int32_t n_channels, const int32_t *channels, const int64_t *delays,
                 int32_t n_specs, const qn_pair_spec *specs) {
    *out = NULL;
    if (n_channels < 1 || n_specs < 1) return QN_EARG;
    int64_t n_bins = 0;
    for (int32_t s = 0; s < n_specs; s++) {
        const qn_pair_spec *sp = &specs[s];
        if (sp->a < 0 || sp->a >= n_channels || sp->b < 0 || sp->b >= n_channels || sp->a == sp->b)
            return QN_EARG;
        if (sp->hi < sp->lo) return QN_EARG;
        if (sp->n_bins > 0 && (sp->bin_width < 1 || sp->hi != sp->lo + sp->n_bins * sp->bin_width - 1))
            return QN_EARG;
        if (sp->n_bins > 0) n_bins += sp->n_bins + 1;
    }
    qn_pairs *p = calloc(1, sizeof(*p));
    if (!p) return QN_ENOMEM;
    p->n_channels = n_channels;
    p->n_specs = n_specs;
    p->n_bins = n_bins;
    int rc = lut_init(&p->lut, n_channels, channels);
    if (rc != QN_OK) goto fail;
    rc = QN_ENOMEM;
    p->channels = malloc(sizeof(int32_t) * (size_t)n_channels);
    p->keep = calloc((size_t)n_channels, 1);
    p->chans = calloc((size_t)n_channels, sizeof(pair_chan));
    p->entries = calloc((size_t)n_specs * 2, sizeof(pair_entry));
    p->groups = calloc((size_t)n_specs * 2, sizeof(pair_group));
    p->spec_bins = calloc((size_t)n_specs, sizeof(int64_t));
    p->chan_of = calloc((size_t)p->lut.size, sizeof(pair_chan *));
    p->solo = calloc((size_t)p->lut.size, sizeof(pair_solo));
    p->counts = calloc((size_t)n_specs, sizeof(int64_t));
    p->hist = calloc((size_t)(n_bins > 0 ? n_bins : 1), sizeof(int64_t));
    if (!p->channels || !p->keep || !p->chans || !p->entries || !p->groups || !p->spec_bins ||
        !p->chan_of || !p->solo ||
        !p->counts || !p->hist)
        goto fail;
    p->other.newest = INT64_MIN;
    p->other.first.partner_newest = &never_newest;
    p->other.more_begin = p->other.more_end = NULL;
    p->other.ent_begin = p->other.ent_end = NULL;
    for (uint32_t k = 0; k < p->lut.size; k++) p->chan_of[k] = &p->other;
    for (int32_t s = 0; s < n_specs; s++) p->spec_bins[s] = specs[s].n_bins > 0 ? specs[s].n_bins : 0;
    for (int32_t c = 0; c < n_channels; c++) {
        p->channels[c] = channels[c];
        p->chans[c].newest = INT64_MIN;
        p->chan_of[channels[c] - p->lut.base] = &p->chans[c];
    }

    /* Each spec yields one entry on channel b (partner a) and one on channel a (partner b). A
     * channel's entries are laid out grouped by partner. */
    int32_t k = 0, g = 0;
    p->lookback = 0;
    for (int32_t c = 0; c < n_channels; c++) {
        const int32_t chan_first_group = g;
        for (int32_t partner = 0; partner < n_channels; partner++) {
            const int32_t group_begin = k;
            int64_t off = 0;
            for (int32_t s = 0; s < n_specs; s++) {
                const qn_pair_spec *sp = &specs[s];
                const int64_t dd = delays[sp->b] - delays[sp->a];
                int64_t *hist = sp->n_bins > 0 ? p->hist + off : NULL;
                if (sp->n_bins > 0) off += sp->n_bins + 1;
                pair_entry e = {0};
                if (sp->b == c && sp->a == partner) { /* dt = (t - t_a) + dd */
                    e.rlo = dd - sp->hi; e.rhi = dd - sp->lo; e.sign = -1;
                } else if (sp->a == c && sp->b == partner) { /* dt = (t_b - t) + dd */
                    e.rlo = sp->lo - dd; e.rhi = sp->hi - dd; e.sign = 1;
                } else {
                    continue;
                }
                e.partner = partner;
                e.partner_channel = channels[partner];
                e.partner_newest = &p->chans[partner].newest;
                e.count = &p->counts[s];
                e.hist = hist;
                e.n_bins = sp->n_bins;
                e.dd = dd;
                e.lo = sp->lo;
                e.bin_width = sp->bin_width;
                p->entries[k++] = e;
                p->keep[partner] = 1;
                if (-e.rlo > p->lookback) p->lookback = -e.rlo;
            }
            if (k == group_begin) continue;
            pair_group *grp = &p->groups[g++];
            grp->begin = p->entries + group_begin;
            grp->end = p->entries + k;
            grp->partner_newest = &p->chans[partner].newest;
            grp->rlo = INT64_MAX;
            for (const pair_entry *e = grp->begin; e < grp->end; e++)
                if (e->rlo < grp->rlo) grp->rlo = e->rlo;
        }
        pair_chan *ch = &p->chans[c];
        if (g > chan_first_group) {
            ch->first = p->groups[chan_first_group];
            ch->more_begin = p->groups + chan_first_group + 1;
        } else {
            ch->first.rlo = 0;
            ch->first.partner_newest = &never_newest;
            ch->first.begin = ch->first.end = NULL;
            ch->more_begin = p->groups + g;
        }
        ch->more_end = p->groups + g;
        if (ch->more_end != ch->more_begin) p->multi_group = 1;
        ch->ent_begin = ch->first.begin;
        ch->ent_end = ch->more_end != ch->more_begin ? ch->more_end[-1].end : ch->first.end;
    }
    for (int32_t c = 0; c < n_channels; c++) {
        const pair_entry *e = p->chans[c].ent_begin;
        if (p->chans[c].ent_end - e != 1 || e->hist) continue;
        pair_solo *so = &p->solo[channels[c] - p->lut.base];
        so->rlo = e->rlo;
        so->rhi = e->rhi;
        so->want = (uint64_t)(uint32_t)e->partner_channel << 32;
        so->count = e->count;
        so->partner = e->partner;
    }
#ifdef QN_HAVE_AVX2
    p->use_avx2 = n_channels <= 4 && __builtin_cpu_supports("avx2");
#endif
    stats_init(&p->stats);
    *out = p;
    return QN_OK;
fail:
    qn_pairs_free(p);
    return rc;
}

/* Histogram one pair: bin = (dt - lo) / bin_width, dt - lo >= 0 inside the window. (A plain
 * division measured faster here than a float reciprocal with exact correction.) */
static inline void pair_bin(const pair_entry *e, int64_t v, int64_t t) {
    const int64_t x = e->sign * (v - t) + e->dd - e->lo;
    e->hist[x / e->bin_width]++;
}

/* The rare path: partner tags before record i of this chunk, then in the carry. Counting is
 * branch-free (channels interleave at random, so a branch on the channel would mispredict);
 * histogramming branches, as a shared dummy bin would serialise on its increments. */
static void pair_scan(const qn_pairs *p, const pair_entry *e, const qn_tag *tags, int64_t i,
                      int64_t t) {
    const int64_t lo = t + e->rlo, hi = t + e->rhi;
    const uint64_t want = (uint64_t)(uint32_t)e->partner_channel << 32; /* a plain tag on it */
    const uint64_t mask = 0xFFFFFFFF000000FFull; /* channel and type (reserved/missed ignored) */
    int64_t hits = 0, j;
    for (j = i - 1; j >= 0; j--) {
        const int64_t v = tags[j].time;
        if (v < lo) break;
        uint64_t head;
        memcpy(&head, &tags[j], sizeof head);
        const int64_t match = (v <= hi) & ((head & mask) == want);
        if (e->hist && match) pair_bin(e, v, t);
        hits += match;
    }
    if (j < 0) {
        for (j = p->carry_n - 1; j >= 0; j--) {
            const int64_t v = p->carry_t[j];
            if (v < lo) break;
            const int64_t match = (v <= hi) & (p->carry_c[j] == e->partner);
            if (e->hist && match) pair_bin(e, v, t);
            hits += match;
        }
    }
    *e->count += hits;
}

/* pair_scan without a histogram, for raw partner times in [lo, hi], inlined into the gap kernel
 * (most of its candidates are real coincidences: this is its busiest path after the first
 * pass). */
COLD static int64_t pair_count_carry(const qn_pairs *p, int64_t lo, int64_t hi, int64_t partner) {
    int64_t hits = 0;
    for (int64_t j = p->carry_n - 1; j >= 0 && p->carry_t[j] >= lo; j--)
        hits += (p->carry_t[j] <= hi) & (p->carry_c[j] == partner);
    return hits;
}

static inline void pair_count(const qn_pairs *p, const qn_tag *tags, int64_t i, int64_t lo,
                              int64_t hi, uint64_t want, int64_t partner, int64_t *count) {
    const uint64_t mask = 0xFFFFFFFF000000FFull; /* channel and type, as in pair_scan */
    int64_t hits = 0, j;
    for (j = i - 1; j >= 0; j--) {
        const int64_t v = tags[j].time;
        if (v < lo) break;
        uint64_t head;
        memcpy(&head, &tags[j], sizeof head);
        hits += (v <= hi) & ((head & mask) == want);
    }
    if (UNLIKELY(j < 0)) hits += pair_count_carry(p, lo, hi, partner);
    *count += hits;
}

COLD static void pair_scan_group(const qn_pairs *p, const pair_group *grp, const qn_tag *tags,
                                 int64_t i, int64_t t) {
    for (const pair_entry *e = grp->begin; e < grp->end; e++)
        if (*e->partner_newest >= t + e->rlo) pair_scan(p, e, tags, i, t);
}

COLD static void pair_more_groups(const qn_pairs *p, const pair_chan *ch, const qn_tag *tags,
                                  int64_t i, int64_t t) {
    for (const pair_group *grp = ch->more_begin; grp < ch->more_end; grp++)
        if (*grp->partner_newest >= t + grp->rlo) pair_scan_group(p, grp, tags, i, t);
}

/* Keep the tags that a future window can reach: time >= (newest record) - lookback. */
static int pair_update_carry(qn_pairs *p, const qn_tag *tags, int64_t n) {
    if (n == 0) return QN_OK;
    const int64_t horizon = p->stats.last_time - p->lookback;
    int64_t first = n; /* first record of the chunk at or after the horizon */
    while (first > 0 && tags[first - 1].time >= horizon) first--;
    int64_t keep_old = 0; /* carry entries still needed */
    if (first == 0) {
        int64_t j = p->carry_n;
        while (j > 0 && p->carry_t[j - 1] >= horizon) j--;
        keep_old = p->carry_n - j;
        memmove(p->carry_t, p->carry_t + j, sizeof(int64_t) * (size_t)keep_old);
        memmove(p->carry_c, p->carry_c + j, sizeof(int32_t) * (size_t)keep_old);
    }
    const int64_t need = keep_old + (n - first);
    if (need > p->carry_cap) {
        int64_t cap = p->carry_cap ? p->carry_cap : 256;
        while (cap < need) cap *= 2;
        int64_t *nt = realloc(p->carry_t, sizeof(int64_t) * (size_t)cap);
        if (!nt) return QN_ENOMEM;
        p->carry_t = nt;
        int32_t *nc = realloc(p->carry_c, sizeof(int32_t) * (size_t)cap);
        if (!nc) return QN_ENOMEM;
        p->carry_c = nc;
        p->carry_cap = cap;
    }
    int64_t m = keep_old;
    for (int64_t j = first; j < n; j++) {
        if (tags[j].type != QN_TIME_TAG) continue;
        const int32_t c = lut_get(&p->lut, tags[j].channel);
        if (c < 0 || !p->keep[c]) continue;
        p->carry_t[m] = tags[j].time;
        p->carry_c[m] = c;
        m++;
    }
    p->carry_n = m;
    return QN_OK;
}

/* Newest-time kernel, for records [0, n): each tag compares with its partner channels' newest
 * times and scans only on a possible hit. Returns how many records it consumed (< n on an
 * ordering error). `multi_group` is a compile-time constant in each caller below. */
static inline int64_t pair_kernel(qn_pairs *p, const qn_tag *restrict tags, int64_t n,
                                  const int multi_group) {
    qn_stats *st = &p->stats;
    int64_t last = st->last_time;
    pair_chan *const *const chan_of = p->chan_of;
    pair_chan *const other = &p->other;
    const int64_t lut_base = p->lut.base;
    const uint32_t lut_size = p->lut.size;
    const qn_tag *rec = tags, *const end = tags + n;
    for (; rec < end; rec++) {
        const int64_t t = rec->time;
        if (UNLIKELY(t < last)) break;
        last = t;
        /* type, reserved and missed in one test: all zero for a plain time tag */
        uint64_t head;
        memcpy(&head, rec, sizeof head);
        if (UNLIKELY((uint32_t)head != 0) && rec->type != QN_TIME_TAG) {
            stats_record(st, rec);
            continue;
        }
        const uint32_t off = (uint32_t)((int64_t)rec->channel - lut_base);
        pair_chan *ch = LIKELY(off < lut_size) ? chan_of[off] : other;
        ch->singles++;
        if (UNLIKELY(*ch->first.partner_newest >= t + ch->first.rlo))
            pair_scan_group(p, &ch->first, tags, rec - tags, t);
        if (multi_group && UNLIKELY(ch->more_begin != ch->more_end))
            pair_more_groups(p, ch, tags, rec - tags, t);
        ch->newest = t;
    }
    st->last_time = last;
    return rec - tags;
}

static int64_t pair_kernel_single(qn_pairs *p, const qn_tag *restrict tags, int64_t n) {
    return pair_kernel(p, tags, n, 0);
}

static int64_t pair_kernel_multi(qn_pairs *p, const qn_tag *restrict tags, int64_t n) {
    return pair_kernel(p, tags, n, 1);
}

/* Gap kernel. Every partner time v of a tag at t lies in [t - lookback, t] (partners counted by
 * this tag come earlier in the stream, and stream order is time order). So a tag can only
 * complete a pair when the record just before it, of any type or channel, lies within
 * `lookback` of it: a test on two consecutive times, with no per-channel state. At 4 x 10 Mcps
 * and a 1 ns window about 7 % of tags pass it, most of them real coincidences. Those candidates
 * then scan back exactly (pair_scan over all the channel's entries); a false candidate costs
 * time, never correctness. This kernel does not keep `newest` up to date (newest_stale). */
static inline void pair_candidate(const qn_pairs *p, const qn_tag *tags, int64_t i) {
    const int64_t t = tags[i].time;
    const uint32_t off = (uint32_t)((int64_t)tags[i].channel - p->lut.base);
    if (off >= p->lut.size) return; /* an unconfigured channel: no entries */
    const pair_solo *so = &p->solo[off];
    if (LIKELY(so->count != NULL)) {
        pair_count(p, tags, i, t + so->rlo, t + so->rhi, so->want, so->partner, so->count);
        return;
    }
    const pair_chan *ch = p->chan_of[off];
    for (const pair_entry *e = ch->ent_begin; e < ch->ent_end; e++) {
        if (e->hist) pair_scan(p, e, tags, i, t);
        else pair_count(p, tags, i, t + e->rlo, t + e->rhi,
                        (uint64_t)(uint32_t)e->partner_channel << 32, e->partner, e->count);
    }
}

/* The gap kernel one record at a time, for records [begin, end). Returns where it stopped
 * (< end on an ordering error). */
static int64_t pair_gap_scalar(qn_pairs *p, const qn_tag *restrict tags, int64_t begin,
                               int64_t end) {
    qn_stats *st = &p->stats;
    int64_t last = st->last_time;
    const uint64_t lookback = (uint64_t)p->lookback;
    int64_t i;
    for (i = begin; i < end; i++) {
        const qn_tag *rec = &tags[i];
        const int64_t t = rec->time;
        if (UNLIKELY(t < last)) break;
        const uint64_t gap = (uint64_t)t - (uint64_t)last; /* exact: t >= last */
        last = t;
        uint64_t head;
        memcpy(&head, rec, sizeof head);
        if (UNLIKELY((uint32_t)head != 0) && rec->type != QN_TIME_TAG) {
            stats_record(st, rec);
            continue;
        }
        const uint32_t off = (uint32_t)((int64_t)rec->channel - p->lut.base);
        pair_chan *ch = LIKELY(off < p->lut.size) ? p->chan_of[off] : &p->other;
        ch->singles++;
        if (UNLIKELY(gap <= lookback)) pair_candidate(p, tags, i);
    }
    st->last_time = last;
    return i;
}

#ifdef QN_HAVE_AVX2
/* Records per block of the vector gap kernel: the candidate bits of a block fit one word. (A
 * multiple of 4, at most 64; tests build with small blocks to reach this path on short streams.) */
#ifndef GAP_BLOCK
#define GAP_BLOCK 64
#endif

/* The gap kernel with AVX2 (selected at run time), for up to 4 configured channels. A block of
 * GAP_BLOCK records is first read 4 records at a time: the candidate test, each configured
 * channel's singles (compares of the record heads, so no lookup per tag), and two flags: an
 * ordering error, a record that is not a plain time tag. A flagged block is redone by
 * pair_gap_scalar, which handles both exactly; otherwise its singles are kept and its candidates
 * (bits of one word) scanned. Scans read only records before the candidate and the carry, so
 * doing them after the block's first pass changes nothing. Tags on unconfigured channels are the
 * block's records less the configured singles. `nch` is a compile-time constant per caller. */
__attribute__((target("avx2")))
static inline int64_t pair_gap_avx2(qn_pairs *p, const qn_tag *restrict tags, int64_t n,
                                    const int nch) {
    const __m256i gap_limit = _mm256_set1_epi64x(p->lookback + 1); /* candidate: gap < limit */
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF); /* type, reserved, missed */
    __m256i pattern[4], total[4];
    for (int c = 0; c < nch; c++) {
        /* a plain time tag on channel c: head = channel << 32 */
        pattern[c] = _mm256_set1_epi64x((int64_t)((uint64_t)(uint32_t)p->channels[c] << 32));
        total[c] = _mm256_setzero_si256();
    }
    int64_t last = p->stats.last_time, fast = 0, i = 0;
    int stopped = 0;
    /* Lane 0 holds the time of the record before the next four. */
    __m256i prev = _mm256_set1_epi64x(last);
    for (; n - i >= GAP_BLOCK; i += GAP_BLOCK) {
        const qn_tag *r = tags + i;
        __m256i bad = _mm256_setzero_si256(), heads = _mm256_setzero_si256(), cnt[4];
        for (int c = 0; c < nch; c++) cnt[c] = _mm256_setzero_si256();
        uint64_t cand = 0;
        for (int k = 0; k < GAP_BLOCK; k += 4) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(r + k));     /* h0 t0 h1 t1 */
            const __m256i b = _mm256_loadu_si256((const __m256i *)(r + k + 2)); /* h2 t2 h3 t3 */
            /* Lanes hold records 0, 2, 1, 3 (unpack works within 128-bit halves); only the
             * candidate bits need the true order, and they are fixed per block below. */
            const __m256i tt = _mm256_unpackhi_epi64(a, b);          /* t0 t2 t1 t3 */
            const __m256i hh = _mm256_unpacklo_epi64(a, b);          /* h0 h2 h1 h3 */
            const __m256i rot = _mm256_permute4x64_epi64(tt, _MM_SHUFFLE(1, 0, 2, 3)); /* t3 t1 t0 t2 */
            const __m256i before = _mm256_blend_epi32(rot, prev, 0x03); /* t-1 t1 t0 t2 */
            prev = rot;
            bad = _mm256_or_si256(bad, _mm256_cmpgt_epi64(before, tt));
            heads = _mm256_or_si256(heads, hh);
            /* gap < limit, signed: a gap of 2^63 or more wraps negative and only makes a false
             * candidate */
            const __m256i near = _mm256_cmpgt_epi64(gap_limit, _mm256_sub_epi64(tt, before));
            cand |= (uint64_t)(uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(near)) << k;
            for (int c = 0; c < nch; c++)
                cnt[c] = _mm256_sub_epi64(cnt[c], _mm256_cmpeq_epi64(hh, pattern[c]));
        }
        if (UNLIKELY(!_mm256_testz_si256(bad, bad) || !_mm256_testz_si256(heads, low32))) {
            p->stats.last_time = last;
            const int64_t done = pair_gap_scalar(p, tags, i, i + GAP_BLOCK);
            last = p->stats.last_time;
            prev = _mm256_set1_epi64x(last);
            if (done < i + GAP_BLOCK) {
                i = done;
                stopped = 1;
                break;
            }
            continue;
        }
        for (int c = 0; c < nch; c++) total[c] = _mm256_add_epi64(total[c], cnt[c]);
        fast += GAP_BLOCK;
        last = r[GAP_BLOCK - 1].time;
        /* each nibble's bits 1 and 2 belong to records 2 and 1: swap them */
        cand = (cand & 0x9999999999999999ull) | ((cand & 0x2222222222222222ull) << 1) |
               ((cand & 0x4444444444444444ull) >> 1);
        for (; cand; cand &= cand - 1) pair_candidate(p, tags, i + __builtin_ctzll(cand));
    }
    p->stats.last_time = last;
    if (!stopped && i < n) i = pair_gap_scalar(p, tags, i, n);
    int64_t configured = 0;
    for (int c = 0; c < nch; c++) {
        int64_t lane[4];
        _mm256_storeu_si256((__m256i *)lane, total[c]);
        const int64_t s = lane[0] + lane[1] + lane[2] + lane[3];
        p->chans[c].singles += s;
        configured += s;
    }
    p->other.singles += fast - configured;
    return i;
}

__attribute__((target("avx2")))
static int64_t pair_gap_avx2_1(qn_pairs *p, const qn_tag *tags, int64_t n) {
    return pair_gap_avx2(p, tags, n, 1);
}
__attribute__((target("avx2")))
static int64_t pair_gap_avx2_2(qn_pairs *p, const qn_tag *tags, int64_t n) {
    return pair_gap_avx2(p, tags, n, 2);
}
__attribute__((target("avx2")))
static int64_t pair_gap_avx2_3(qn_pairs *p, const qn_tag *tags, int64_t n) {
    return pair_gap_avx2(p, tags, n, 3);
}
__attribute__((target("avx2")))
static int64_t pair_gap_avx2_4(qn_pairs *p, const qn_tag *tags, int64_t n) {
    return pair_gap_avx2(p, tags, n, 4);
}
#endif

/* Which kernel suits this chunk. The gap kernel's candidates are the tags whose preceding record
 * lies within `lookback`, a fraction of about 1 - exp(-lookback * rate) for a stream of
 * independent tags; the newest-time kernel only looks at partner channels, so it wins when the
 * window reaches back over many records (wide histograms, accidental windows at high rates).
 * Measured at 4 x 10 Mcps: the gap kernel is faster up to lookback * rate of about 0.6 for two
 * pairs, slower at 0.8 with accidentals (two entries per channel scan separately).
 * QN_PAIR_KERNEL (for tests, with QNODE_CFLAGS): 0 chooses per chunk; 1 always the newest-time
 * kernel; 2 always the gap kernel; 3 by the parity of the chunk's length (exercises switching). */
#ifndef QN_PAIR_KERNEL
#define QN_PAIR_KERNEL 0
#endif
#define GAP_MAX_RECORDS_IN_REACH 0.5 /* lookback * rate (records per ps) below which gap runs */

static int pair_gap_suits(const qn_pairs *p, const qn_tag *tags, int64_t n) {
    if (p->lookback > ((int64_t)1 << 62)) return 0; /* the vector test needs lookback + 1 */
    if (QN_PAIR_KERNEL) return QN_PAIR_KERNEL == 3 ? (int)(n & 1) : QN_PAIR_KERNEL == 2;
    if (n < 2) return 0;
    const double span = (double)tags[n - 1].time - (double)tags[0].time;
    return span > 0 && (double)p->lookback * (double)(n - 1) < GAP_MAX_RECORDS_IN_REACH * span;
}

int qn_pairs_process(qn_pairs *p, const qn_tag *restrict tags, int64_t n, int64_t *counts,
                     int64_t *hist, int64_t *singles, int64_t *bad_index) {
    qn_stats *st = &p->stats;
    int64_t done;
    if (pair_gap_suits(p, tags, n)) {
        p->newest_stale = 1;
#ifdef QN_HAVE_AVX2
        switch (p->use_avx2 ? p->n_channels : 0) {
        case 1: done = pair_gap_avx2_1(p, tags, n); break;
        case 2: done = pair_gap_avx2_2(p, tags, n); break;
        case 3: done = pair_gap_avx2_3(p, tags, n); break;
        case 4: done = pair_gap_avx2_4(p, tags, n); break;
        default: done = pair_gap_scalar(p, tags, 0, n); break;
        }
#else
        done = pair_gap_scalar(p, tags, 0, n);
#endif
    } else {
        /* `newest` is only a filter, and any value at or above a channel's true newest time is
         * safe (it can only cause extra scans): after the gap kernel, the last record's time. */
        if (p->newest_stale)
            for (int32_t c = 0; c < p->n_channels; c++) p->chans[c].newest = st->last_time;
        p->newest_stale = 0;
        done = p->multi_group ? pair_kernel_multi(p, tags, n) : pair_kernel_single(p, tags, n);
    }
    int rc = done < n ? QN_EORDER : QN_OK;
    for (int32_t c = 0; c < p->n_channels; c++) {
        singles[c] = p->chans[c].singles;
        st->tags += p->chans[c].singles;
        p->chans[c].singles = 0;
    }
    st->other_tags += p->other.singles;
    p->other.singles = 0;
    st->records += done;
    if (pair_update_carry(p, tags, done) != QN_OK && rc == QN_OK) rc = QN_ENOMEM;
    memcpy(counts, p->counts, sizeof(int64_t) * (size_t)p->n_specs);
    memset(p->counts, 0, sizeof(int64_t) * (size_t)p->n_specs);
    /* Histograms leave in spec order, without their spare slots. */
    const int64_t *src = p->hist;
    for (int32_t s = 0; s < p->n_specs; s++) {
        if (!p->spec_bins[s]) continue;
        memcpy(hist, src, sizeof(int64_t) * (size_t)p->spec_bins[s]);
        hist += p->spec_bins[s];
        src += p->spec_bins[s] + 1;
    }
    if (p->n_bins > 0) memset(p->hist, 0, sizeof(int64_t) * (size_t)p->n_bins);
    if (bad_index) *bad_index = done;
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
    /* Release up to the newest record (the chunk may end with records that released nothing):
     * then every tag still to be fed has delayed time >= last, and a cluster that ended before
     * `last` is complete. */
    if (rc == QN_OK && !p->all_equal) rc = nfold_release(p, last, 0, &o);
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

/* merge2 for two channels' times, writing TagBlock records; ties go to channel a. */
static void merge2_tags(const int64_t *at, int64_t na, int32_t cha, const int64_t *bt, int64_t nb,
                        int32_t chb, qn_tag *out) {
    int64_t i = 0, j = 0, o = 0;
    const uint64_t head_a = (uint64_t)(uint32_t)cha << 32, head_b = (uint64_t)(uint32_t)chb << 32;
    while (i < na && j < nb) {
        const int64_t ta = at[i], tb = bt[j];
        const int64_t take_a = ta <= tb;
        const int64_t m = -take_a;
        const uint64_t head = (head_a & (uint64_t)m) | (head_b & ~(uint64_t)m);
        memcpy(&out[o], &head, sizeof head); /* type, reserved, missed = 0; channel */
        out[o].time = (ta & m) | (tb & ~m);
        i += take_a;
        j += 1 - take_a;
        o++;
    }
    for (; i < na; i++, o++) { memcpy(&out[o], &head_a, sizeof head_a); out[o].time = at[i]; }
    for (; j < nb; j++, o++) { memcpy(&out[o], &head_b, sizeof head_b); out[o].time = bt[j]; }
}

static int check_runs(int32_t k, const int64_t **times, const int64_t *lengths, int64_t *bad) {
    if (k < 0 || k > 64) return QN_EARG;
    for (int32_t c = 0; c < k; c++)
        for (int64_t j = 1; j < lengths[c]; j++)
            if (times[c][j] < times[c][j - 1]) { *bad = c; return QN_EORDER; }
    return QN_OK;
}

/* Branch-free two-way merge of TagBlock runs by time; ties go to run a (stable). */
static void merge2_records(const qn_tag *a, int64_t na, const qn_tag *b, int64_t nb, qn_tag *out) {
    int64_t i = 0, j = 0, o = 0;
    while (i < na && j < nb) {
        const int64_t take_a = a[i].time <= b[j].time;
        const qn_tag *src = take_a ? &a[i] : &b[j];
        out[o++] = *src;
        i += take_a;
        j += 1 - take_a;
    }
    if (i < na) memcpy(&out[o], &a[i], sizeof(qn_tag) * (size_t)(na - i));
    if (j < nb) memcpy(&out[o], &b[j], sizeof(qn_tag) * (size_t)(nb - j));
}

/* k-way merge of per-channel sorted time arrays into one TagBlock; equal times are ordered by
 * channel number (runs are merged in channel order, ties keep run order). */
int qn_merge(int32_t k, const int64_t **times, const int64_t *lengths, const int32_t *channels,
             qn_tag *out, int64_t *bad_index) {
    int rc = check_runs(k, times, lengths, bad_index);
    if (rc != QN_OK) return rc;
    int32_t order[64];
    int64_t total = 0;
    for (int32_t c = 0; c < k; c++) order[c] = c;
    for (int32_t c = 1; c < k; c++) /* insertion sort of the runs by channel number */
        for (int32_t d = c; d > 0 && channels[order[d]] < channels[order[d - 1]]; d--) {
            int32_t tmp = order[d]; order[d] = order[d - 1]; order[d - 1] = tmp;
        }
    for (int32_t c = 0; c < k; c++) total += lengths[c];
    if (k == 2) { /* the usual case (two detectors behind one analyzer): straight into the tags */
        merge2_tags(times[order[0]], lengths[order[0]], channels[order[0]], times[order[1]],
                    lengths[order[1]], channels[order[1]], out);
        return QN_OK;
    }
    /* Rounds of two-way merges of neighbouring runs (kept in channel order, so ties keep channel
     * order): the first round merges channel pairs into records, later rounds merge records,
     * alternating between `out` and one scratch buffer so that the last round lands in `out`. */
    int32_t flips = 0; /* record-merge rounds after the first pass */
    for (int32_t runs = (k + 1) / 2; runs > 1; runs = (runs + 1) / 2) flips++;
    qn_tag *scratch = malloc(sizeof(qn_tag) * (size_t)(total > 0 ? total : 1));
    if (!scratch) return QN_ENOMEM;
    qn_tag *dst = flips % 2 ? scratch : out, *other = flips % 2 ? out : scratch;
    const qn_tag *run_at[64];
    int64_t run_n[64];
    int32_t runs = 0;
    qn_tag *w = dst;
    for (int32_t c = 0; c < k; c += 2, runs++) {
        const int32_t r = order[c];
        if (c + 1 < k) {
            const int32_t r2 = order[c + 1];
            merge2_tags(times[r], lengths[r], channels[r], times[r2], lengths[r2], channels[r2], w);
            run_n[runs] = lengths[r] + lengths[r2];
        } else {
            const uint64_t head = (uint64_t)(uint32_t)channels[r] << 32;
            for (int64_t j = 0; j < lengths[r]; j++) {
                memcpy(&w[j], &head, sizeof head);
                w[j].time = times[r][j];
            }
            run_n[runs] = lengths[r];
        }
        run_at[runs] = w;
        w += run_n[runs];
    }
    while (runs > 1) {
        qn_tag *tmp = dst; dst = other; other = tmp;
        w = dst;
        int32_t m = 0;
        for (int32_t r = 0; r < runs; r += 2, m++) {
            if (r + 1 < runs) {
                merge2_records(run_at[r], run_n[r], run_at[r + 1], run_n[r + 1], w);
                run_n[m] = run_n[r] + run_n[r + 1];
            } else {
                memcpy(w, run_at[r], sizeof(qn_tag) * (size_t)run_n[r]);
                run_n[m] = run_n[r];
            }
            run_at[m] = w;
            w += run_n[m];
        }
        runs = m;
    }
    free(scratch);
    return QN_OK;
}

/* ---------------------------------------------------------------- simulation random numbers */

/* xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2021): the
 * state is 4 words held by the caller (seeded from numpy's SeedSequence; never all zero). */
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(uint64_t *s) {
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in (0, 1): 53 random bits, never 0 (so log() is safe). */
static inline double rng_uniform(uint64_t *s) {
    return ((double)(rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Ziggurat tables (Marsaglia & Tsang, "The Ziggurat Method for Generating Random Variables",
 * J. Stat. Softw. 5(8), 2000): 128 layers for the normal, 256 for the exponential. Built once. */
static uint32_t zig_kn[128], zig_ke[256];
static double zig_wn[128], zig_fn[128], zig_we[256], zig_fe[256];

/* Build the ziggurat tables; the Python wrapper calls it once, at import. */
void qn_init(void) {
    const double m1 = 2147483648.0, m2 = 4294967296.0;
    double dn = 3.442619855899, tn = dn, vn = 9.91256303526217e-3;
    double q = vn / exp(-0.5 * dn * dn);
    zig_kn[0] = (uint32_t)((dn / q) * m1);
    zig_kn[1] = 0;
    zig_wn[0] = q / m1;
    zig_wn[127] = dn / m1;
    zig_fn[0] = 1.0;
    zig_fn[127] = exp(-0.5 * dn * dn);
    for (int i = 126; i >= 1; i--) {
        dn = sqrt(-2.0 * log(vn / dn + exp(-0.5 * dn * dn)));
        zig_kn[i + 1] = (uint32_t)((dn / tn) * m1);
        tn = dn;
        zig_fn[i] = exp(-0.5 * dn * dn);
        zig_wn[i] = dn / m1;
    }
    double de = 7.697117470131487, te = de, ve = 3.949659822581572e-3;
    q = ve / exp(-de);
    zig_ke[0] = (uint32_t)((de / q) * m2);
    zig_ke[1] = 0;
    zig_we[0] = q / m2;
    zig_we[255] = de / m2;
    zig_fe[0] = 1.0;
    zig_fe[255] = exp(-de);
    for (int i = 254; i >= 1; i--) {
        de = -log(ve / de + exp(-de));
        zig_ke[i + 1] = (uint32_t)((de / te) * m2);
        te = de;
        zig_fe[i] = exp(-de);
        zig_we[i] = de / m2;
    }
}

/* Standard normal. The layer index comes from the low bits, the value from the high 32, so
 * the two are independent (the original SHR3 version shares bits between them). */
static double rng_normal(uint64_t *s) {
    for (;;) {
        const uint64_t r = rng_next(s);
        const int32_t hz = (int32_t)(r >> 32);
        const int iz = (int)(r & 127);
        const uint32_t ahz = hz < 0 ? (uint32_t)(-(int64_t)hz) : (uint32_t)hz;
        const double x = hz * zig_wn[iz];
        if (LIKELY(ahz < zig_kn[iz])) return x;
        if (iz == 0) { /* the tail beyond r = 3.442620 */
            double xt, y;
            do {
                xt = -log(rng_uniform(s)) * 0.2904764; /* 1 / r */
                y = -log(rng_uniform(s));
            } while (y + y < xt * xt);
            return hz > 0 ? 3.442620 + xt : -3.442620 - xt;
        }
        if (zig_fn[iz] + rng_uniform(s) * (zig_fn[iz - 1] - zig_fn[iz]) < exp(-0.5 * x * x)) return x;
    }
}

/* Standard exponential. */
static double rng_exponential(uint64_t *s) {
    for (;;) {
        const uint64_t r = rng_next(s);
        const uint32_t jz = (uint32_t)(r >> 32);
        const int iz = (int)(r & 255);
        const double x = jz * zig_we[iz];
        if (LIKELY(jz < zig_ke[iz])) return x;
        if (iz == 0) return 7.69711747013104972 - log(rng_uniform(s));
        if (zig_fe[iz] + rng_uniform(s) * (zig_fe[iz - 1] - zig_fe[iz]) < exp(-x)) return x;
    }
}

/* Fill out[n] with kind 0 uniform (0,1), 1 standard normal, 2 standard exponential. */
void qn_rng_fill(uint64_t *state, int32_t kind, double *out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = kind == 1 ? rng_normal(state) : kind == 2 ? rng_exponential(state) : rng_uniform(state);
}

/* n sorted i.i.d. uniform integers in [lo, hi) without a sort: uniform order statistics are the
 * normalised partial sums of n + 1 exponentials. The partial sums pass through `out` as doubles. */
void qn_rng_sorted_uniform(uint64_t *state, int64_t n, int64_t lo, int64_t hi, int64_t *out) {
    double c = 0.0;
    for (int64_t i = 0; i < n; i++) {
        c += rng_exponential(state);
        memcpy(&out[i], &c, sizeof c);
    }
    const double total = c + rng_exponential(state);
    const double scale = (double)(hi - lo) / total;
    for (int64_t i = 0; i < n; i++) {
        double ci;
        memcpy(&ci, &out[i], sizeof ci);
        int64_t v = lo + (int64_t)(ci * scale);
        out[i] = v < hi ? v : hi - 1; /* rounding can reach hi only when ci == total */
    }
}

/* Simulation support (hal_sim): give each pair a class and route its photons.
 * Pair i gets the first class c with u < cdf[c] (the last class if none), u uniform from the
 * generator `state`. For each
 * side s, route[c * n_sides + s] names the output the photon reaches, or is -1. Classes below
 * n_both_classes reach both sides: those pairs get ids first_id, first_id + 1, ... in order; other
 * photons get id -1. Outputs must hold n entries each. Returns the number of ids given. */
int64_t qn_route_pairs(const int64_t *times, uint64_t *state, int64_t n, int32_t n_classes,
                       const double *cdf, const int32_t *route, int32_t n_sides,
                       int32_t n_both_classes, int64_t first_id, int64_t **out_times,
                       int64_t **out_ids, int64_t *out_counts) {
    /* Branch-free: classes and routes are random, so branches would mispredict. A photon that
     * reaches no output is written to a discard slot whose count never advances. */
    if (n_classes < 1 || n_classes > 64 || n_sides < 1 || n_sides > 8) return -1;
    int32_t n_out = 0;
    for (int32_t k = 0; k < n_classes * n_sides; k++)
        if (route[k] + 1 > n_out) n_out = route[k] + 1;
    if (n_out > 64) return -1;
    int64_t discard_t[1], discard_id[1];
    int64_t *ot[65], *oi[65], counts[65];
    for (int32_t o = 0; o < n_out; o++) { ot[o] = out_times[o]; oi[o] = out_ids[o]; counts[o] = out_counts[o]; }
    ot[n_out] = discard_t; oi[n_out] = discard_id; counts[n_out] = 0;
    int32_t slot[64 * 8]; /* route with -1 replaced by the discard slot */
    for (int32_t k = 0; k < n_classes * n_sides; k++) slot[k] = route[k] < 0 ? n_out : route[k];
    int64_t id = first_id;
    for (int64_t i = 0; i < n; i++) {
        const double u = rng_uniform(state);
        int32_t c = 0;
        for (int32_t k = 0; k < n_classes - 1; k++) c += u >= cdf[k];
        const int64_t both = c < n_both_classes;
        const int64_t pair_id = both ? id : -1;
        id += both;
        for (int32_t side = 0; side < n_sides; side++) {
            const int32_t o = slot[c * n_sides + side];
            const int64_t k = counts[o];
            ot[o][k] = times[i];
            oi[o][k] = pair_id;
            counts[o] = k + (o != n_out);
        }
    }
    for (int32_t o = 0; o < n_out; o++) out_counts[o] = counts[o];
    return id - first_id;
}

/* Simulation support (hal_sim): finalise one detector's tags up to a horizon, in one buffer.
 * out = pending (sorted) ++ new (sorted emission times + delay_ps + rint(clip(sigma_ps * N(0,1)))
 * with the normal from the generator `state`), sorted by
 * an insertion pass (the jitter leaves it nearly sorted); dark counts (sorted) are merged in from
 * the back; records before horizon_ps pass the non-paralysable dead time (chained through
 * *last_click) and are compacted to the front. Returns how many were registered; *cut is where
 * the still-pending records start (they run to the end of the n_pending + n_new + n_dark). */
static void sort_nearly_sorted_pairs(int64_t *times, int64_t *payload, int64_t n);

int64_t qn_detector_finalize(const int64_t *pending_t, const int64_t *pending_id, int64_t n_pending,
                             const int64_t *new_t, const int64_t *new_id, uint64_t *state,
                             double sigma_ps, int64_t n_new, int64_t delay_ps, double clip_ps,
                             const int64_t *dark_t, int64_t dark_id, int64_t n_dark,
                             int64_t horizon_ps, int64_t dead_ps, int64_t *last_click,
                             int64_t *out_t, int64_t *out_id, int64_t *cut) {
    memcpy(out_t, pending_t, sizeof(int64_t) * (size_t)n_pending);
    memcpy(out_id, pending_id, sizeof(int64_t) * (size_t)n_pending);
    for (int64_t i = 0; i < n_new; i++) {
        double j = sigma_ps > 0.0 ? sigma_ps * rng_normal(state) : 0.0;
        j = j < -clip_ps ? -clip_ps : (j > clip_ps ? clip_ps : j);
        out_t[n_pending + i] = new_t[i] + delay_ps + (int64_t)lrint(j);
        out_id[n_pending + i] = new_id[i];
    }
    int64_t n = n_pending + n_new;
    sort_nearly_sorted_pairs(out_t, out_id, n);
    /* merge the darks from the back: the buffer holds n + n_dark */
    int64_t i = n - 1, j = n_dark - 1, k = n + n_dark - 1;
    while (j >= 0) {
        if (i >= 0 && out_t[i] > dark_t[j]) { out_t[k] = out_t[i]; out_id[k] = out_id[i]; i--; }
        else { out_t[k] = dark_t[j]; out_id[k] = dark_id; j--; }
        k--;
    }
    n += n_dark;
    int64_t lo = 0, hi = n; /* first record at or after the horizon */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (out_t[mid] < horizon_ps) lo = mid + 1; else hi = mid;
    }
    *cut = lo;
    int64_t last = *last_click, m = 0;
    for (int64_t r = 0; r < lo; r++) {
        const int64_t t = out_t[r];
        const int64_t ok = (t - last) >= dead_ps;
        out_t[m] = t;          /* branch-free compaction: overwritten unless kept */
        out_id[m] = out_id[r];
        m += ok;
        last = ok ? t : last;
    }
    *last_click = last;
    return m;
}

/* Stable insertion sort of (times, payload) by time: linear for nearly sorted input (sorted
 * times plus a small jitter). */
static void sort_nearly_sorted_pairs(int64_t *times, int64_t *payload, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        const int64_t t = times[i];
        if (LIKELY(t >= times[i - 1])) continue;
        const int64_t pl = payload[i];
        int64_t j = i;
        while (j > 0 && times[j - 1] > t) {
            times[j] = times[j - 1];
            payload[j] = payload[j - 1];
            j--;
        }
        times[j] = t;
        payload[j] = pl;
    }
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
    /* A plain division: measured 2.8x faster here than a float reciprocal with exact correction. */
    for (int64_t i = 0; i < n; i++) {
        const int64_t d = times[i] - t0;
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
    uint64_t s = 0; /* unsigned: wraps like numpy's int64 sum instead of overflowing */
    for (int64_t i = 0; i < n; i++) s += (uint64_t)tags[i].time;
    return (int64_t)s;
}

/* ---------------------------------------------------------------- Rice-coded time streams */

#define QN_TIME_LIMIT ((int64_t)1 << 62) /* times are in [0, 2**62) */
#define RICE_QMAX 32                     /* q >= RICE_QMAX: escape (32 zeros, then 64 raw bits) */
#define RICE_KMAX 48

/* Worst case: every gap escaped (32 + 64 bits = 12 bytes), plus 8 bytes of store slack. */
int64_t qn_rice_bound(int64_t n) {
    if (n < 0) n = 0;
    return 12 * (n > 0 ? n - 1 : 0) + 16;
}

static inline void store64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); /* gcc merges into one store */
}

static inline uint64_t load64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Bit writer: acc holds nbits < 8 pending bits after every flush; out has 8 bytes of slack. */
typedef struct {
    uint8_t *out;
    int64_t pos;
    uint64_t acc;
    int nbits;
} bitw;

static inline void bw_flush(bitw *w) {
    store64le(w->out + w->pos, w->acc);
    w->pos += w->nbits >> 3;
    w->acc = (w->nbits >> 3) >= 8 ? 0 : w->acc >> (w->nbits & ~7);
    w->nbits &= 7;
}

/* v < 2**n, n <= 56; flushes afterwards. */
static inline void bw_put(bitw *w, uint64_t v, int n) {
    w->acc |= v << w->nbits;
    w->nbits += n;
    bw_flush(w);
}

int qn_rice_encode(const int64_t *times, int64_t n, int32_t k, uint8_t *out, int64_t capacity,
                   int64_t *out_len, int64_t *bad) {
    *out_len = 0;
    *bad = -1;
    if (n < 0 || k < 0 || k > RICE_KMAX || capacity < qn_rice_bound(n)) return QN_EARG;
    for (int64_t i = 0; i < n; i++) {
        if (times[i] < 0 || times[i] >= QN_TIME_LIMIT) { *bad = i; return QN_EARG; }
        if (i && times[i] < times[i - 1]) { *bad = i; return QN_EORDER; }
    }
    bitw w = {out, 0, 0, 0};
    const uint64_t mask = ((uint64_t)1 << k) - 1;
    for (int64_t i = 1; i < n; i++) {
        const uint64_t g = (uint64_t)(times[i] - times[i - 1]);
        const uint64_t q = g >> k;
        if (LIKELY(q < RICE_QMAX && q + 1 + (uint64_t)k <= 56)) { /* q zeros, 1, k bits */
            bw_put(&w, ((((g & mask) << 1) | 1u) << q), (int)q + 1 + k);
        } else if (q < RICE_QMAX) {
            w.nbits += (int)q;                             /* q <= 31: nbits stays <= 38 */
            bw_put(&w, 1u, 1);
            bw_put(&w, g & mask, k);
        } else {
            w.nbits += RICE_QMAX;
            bw_flush(&w);
            bw_put(&w, g & 0xFFFFFFFFu, 32);
            bw_put(&w, g >> 32, 32);
        }
    }
    if (w.nbits) store64le(out + w.pos, w.acc), w.pos++; /* the padded last byte */
    *out_len = w.pos;
    return QN_OK;
}

/* The 64 bits from byte `byte` on, zeros beyond len: never reads outside buf[0, len). */
static inline uint64_t br_peek(const uint8_t *buf, int64_t len, uint64_t byte) {
    if (LIKELY(byte + 8 <= (uint64_t)len)) return load64le(buf + byte);
    uint64_t v = 0;
    for (uint64_t i = 0; i < 8 && byte + i < (uint64_t)len; i++) v |= (uint64_t)buf[byte + i] << (8 * i);
    return v;
}

/* At least 57 bits from bit position pos on (bits beyond the buffer read as zero). */
static inline uint64_t br_bits(const uint8_t *buf, int64_t len, uint64_t pos) {
    return br_peek(buf, len, pos >> 3) >> (pos & 7);
}

int qn_rice_decode(const uint8_t *buf, int64_t len, int64_t n, int64_t t0, int32_t k,
                   int64_t *out, int64_t *bad) {
    *bad = -1;
    if (n < 0 || len < 0 || k < 0 || k > RICE_KMAX || t0 < 0 || t0 >= QN_TIME_LIMIT) return QN_EARG;
    if (n == 0) return len == 0 ? QN_OK : (*bad = 0, QN_EFORMAT);
    /* Every gap takes at least k + 1 bits: a shorter buffer cannot hold them (also bounds pos). */
    if (len > (INT64_MAX >> 4) || (uint64_t)(n - 1) > ((uint64_t)len * 8) / (uint64_t)(k + 1)) {
        *bad = 0;
        return QN_EFORMAT;
    }
    const uint64_t limit = (uint64_t)len * 8, mask = ((uint64_t)1 << k) - 1;
    uint64_t pos = 0;
    int64_t t = t0;
    out[0] = t0;
    for (int64_t i = 1; i < n; i++) {
        uint64_t w = br_bits(buf, len, pos), g;
        const int q = w ? __builtin_ctzll(w) : 64;
        if (LIKELY(q < RICE_QMAX && q + 1 + k <= 57)) {
            g = ((uint64_t)q << k) | ((w >> (q + 1)) & mask);
            pos += (uint64_t)(q + 1 + k);
        } else if (q < RICE_QMAX) {
            pos += (uint64_t)q + 1;
            g = ((uint64_t)q << k) | (br_bits(buf, len, pos) & mask);
            pos += (uint64_t)k;
        } else {
            pos += RICE_QMAX;
            g = br_bits(buf, len, pos) & 0xFFFFFFFFu;
            g |= (br_bits(buf, len, pos + 32) & 0xFFFFFFFFu) << 32;
            pos += 64;
            if (UNLIKELY((g >> k) < RICE_QMAX)) { *bad = (int64_t)pos; return QN_EFORMAT; }
        }
        /* pos grows by at most 96 bits a gap; it cannot wrap. Past the end: short stream. */
        if (UNLIKELY(pos > limit || g >= (uint64_t)(QN_TIME_LIMIT - t))) {
            *bad = (int64_t)pos;
            return QN_EFORMAT;
        }
        t += (int64_t)g;
        out[i] = t;
    }
    /* exactly the bytes the gaps need, and zero padding */
    if ((pos + 7) >> 3 != (uint64_t)len || ((pos & 7) && (buf[len - 1] >> (pos & 7)))) {
        *bad = (int64_t)pos;
        return QN_EFORMAT;
    }
    return QN_OK;
}

/* ---------------------------------------------------------------- cross-node pairs */

#define XP_MAX_REACH ((int64_t)1 << 40) /* |window|, |shift|, histogram edges: ~1.1 s */
#define XP_MAX_RATE 2e-4                 /* 200 ppm: the mapping stays monotonic (see below) */

struct qn_xpairs {
    int64_t w, shift, hlo, bw, nbins;
    int32_t with_acc;
    int64_t reach_hi, reach_lo; /* pairs have reach_lo <= dt <= reach_hi over all windows */
    /* own tags not settled yet: own_t[0, own_n), own_c; own_first = index of own_t[0] */
    int64_t *own_t;
    int32_t *own_c;
    int64_t own_n, own_cap, own_first;
    /* peer tags still needed: raw (peer clock) and mapped; peer_first = index of peer_raw[0] */
    int64_t *peer_raw, *peer_map;
    int64_t peer_n, peer_cap, peer_first;
    /* absolute peer indices: the next candidate of the pairing, accidental and histogram scans */
    int64_t pc, pa, ph;
    int64_t own_seen, peer_seen, own_done;
    int64_t own_last, peer_last; /* newest time seen (or declared end), INT64_MIN: none */
    int32_t have_own, have_peer;
};

void qn_xpairs_free(qn_xpairs *p) {
    if (!p) return;
    free(p->own_t);
    free(p->own_c);
    free(p->peer_raw);
    free(p->peer_map);
    free(p);
}

int qn_xpairs_new(qn_xpairs **out, int64_t window, int32_t with_acc, int64_t acc_shift,
                  int64_t hist_lo, int64_t bin_width, int64_t n_bins) {
    *out = NULL;
    if (window < 0 || window > XP_MAX_REACH) return QN_EARG;
    if (with_acc && (acc_shift > XP_MAX_REACH || acc_shift < -XP_MAX_REACH)) return QN_EARG;
    if (n_bins < 0 || n_bins > (1 << 24)) return QN_EARG;
    if (n_bins && (bin_width < 1 || bin_width > XP_MAX_REACH || hist_lo < -XP_MAX_REACH ||
                   hist_lo > XP_MAX_REACH || hist_lo + n_bins * bin_width > 2 * XP_MAX_REACH))
        return QN_EARG;
    qn_xpairs *p = calloc(1, sizeof *p);
    if (!p) return QN_ENOMEM;
    p->w = window;
    p->with_acc = with_acc != 0;
    p->shift = p->with_acc ? acc_shift : 0;
    p->nbins = n_bins;
    p->bw = n_bins ? bin_width : 1;
    p->hlo = n_bins ? hist_lo : 0;
    p->reach_hi = window;
    p->reach_lo = -window;
    if (p->with_acc) {
        if (p->shift + window > p->reach_hi) p->reach_hi = p->shift + window;
        if (p->shift - window < p->reach_lo) p->reach_lo = p->shift - window;
    }
    if (n_bins) {
        if (p->hlo + n_bins * p->bw - 1 > p->reach_hi) p->reach_hi = p->hlo + n_bins * p->bw - 1;
        if (p->hlo < p->reach_lo) p->reach_lo = p->hlo;
    }
    p->own_last = p->peer_last = INT64_MIN;
    *out = p;
    return QN_OK;
}

/* np.rint: round half to even (the default rounding mode); exact for |x| < 2**51 by the
 * 1.5 * 2**52 trick, which keeps the hot loop free of a libm call. */
static inline double xp_rint(double x) {
    if (LIKELY(fabs(x) < 0x1p51)) {
        /* not folded to x: without -ffast-math the compiler keeps IEEE semantics */
        return (x + 0x1.8p52) - 0x1.8p52;
    }
    return nearbyint(x);
}

/* qnode.native.align._to_a, operation for operation (so it rounds the same in every case):
 * u = t_b - (base + ref); corr = rint((dev + rate * double(u)) / (1 + rate)); t_a = u - corr + ref.
 * The ranges checked in xp_clock_ok keep every step inside int64. With |rate| <= 2e-4 the map is
 * non-decreasing except where float rounding of huge u or dev could put a tag 1 ps before its
 * predecessor; the caller then gives it its predecessor's mapped time (so does the reference). */
static inline int64_t xp_map(const qn_clock *c, int64_t base_ref, double den, int64_t b) {
    const int64_t u = b - base_ref;
    const double x = (c->dev + c->rate * (double)u) / den;
    return u - (int64_t)xp_rint(x) + c->ref;
}

static int xp_clock_ok(const qn_clock *c) {
    const int64_t lim60 = (int64_t)1 << 60;
    return c->base >= -lim60 && c->base <= lim60 && c->ref >= -lim60 && c->ref < QN_TIME_LIMIT &&
           isfinite(c->dev) && fabs(c->dev) <= 0x1p53 && isfinite(c->rate) &&
           fabs(c->rate) <= XP_MAX_RATE;
}

static int64_t xp_new_cap(int64_t cap, int64_t need) {
    int64_t c = cap ? cap : 1024;
    while (c < need) c *= 2;
    return c;
}

/* Buffers grow here, before the scans (never inside them). */
static int xp_reserve_own(qn_xpairs *p, int64_t need) {
    if (need <= p->own_cap) return QN_OK;
    const int64_t c = xp_new_cap(p->own_cap, need);
    int64_t *t = realloc(p->own_t, (size_t)c * sizeof *t);
    if (!t) return QN_ENOMEM;
    p->own_t = t;
    int32_t *ch = realloc(p->own_c, (size_t)c * sizeof *ch);
    if (!ch) return QN_ENOMEM;
    p->own_c = ch;
    p->own_cap = c;
    return QN_OK;
}

static int xp_reserve_peer(qn_xpairs *p, int64_t need) {
    if (need <= p->peer_cap) return QN_OK;
    const int64_t c = xp_new_cap(p->peer_cap, need);
    int64_t *r = realloc(p->peer_raw, (size_t)c * sizeof *r);
    if (!r) return QN_ENOMEM;
    p->peer_raw = r;
    int64_t *m = realloc(p->peer_map, (size_t)c * sizeof *m);
    if (!m) return QN_ENOMEM;
    p->peer_map = m;
    p->peer_cap = c;
    return QN_OK;
}

static int xp_check(const int64_t *t, int64_t n, int64_t last, int have, int64_t *bad) {
    int64_t prev = have ? last : 0;
    for (int64_t i = 0; i < n; i++) {
        if (UNLIKELY(t[i] < 0 || t[i] >= QN_TIME_LIMIT)) { bad[1] = i; return QN_EARG; }
        if (UNLIKELY(t[i] < prev)) { bad[1] = i; return QN_EORDER; }
        prev = t[i];
    }
    return QN_OK;
}

int64_t qn_xpairs_capacity(const qn_xpairs *p, int64_t n_own, int64_t n_peer) {
    const int64_t a = p->own_n + n_own, b = p->peer_n + n_peer; /* one-to-one: at most min */
    return a < b ? a : b;
}

void qn_xpairs_counters(const qn_xpairs *p, int64_t *c) {
    c[0] = p->own_seen;
    c[1] = p->peer_seen;
    c[2] = p->own_done;
    c[3] = p->own_n;
    c[4] = p->peer_n;
    c[5] = p->peer_first;
}

int qn_xpairs_process(qn_xpairs *p, const int64_t *own_t, const int32_t *own_c, int64_t n_own,
                      int64_t own_end, const int64_t *peer_t, int64_t n_peer, int64_t peer_end,
                      const qn_clock *clock, qn_xpair *pairs, int64_t capacity, int64_t *n_pairs,
                      int64_t *accidentals, int64_t *hist, int64_t *bad) {
    *n_pairs = 0;
    *accidentals = 0;
    bad[0] = bad[1] = -1;
    if (n_own < 0 || n_peer < 0 || !xp_clock_ok(clock)) return QN_EARG;
    if (own_end != INT64_MIN && (own_end < 0 || own_end > QN_TIME_LIMIT)) return QN_EARG;
    if (peer_end != INT64_MIN && (peer_end < 0 || peer_end > QN_TIME_LIMIT)) return QN_EARG;
    /* validate everything before consuming anything */
    int rc;
    bad[0] = 0;
    if ((rc = xp_check(own_t, n_own, p->own_last, p->have_own, bad)) != QN_OK) return rc;
    bad[0] = 1;
    if ((rc = xp_check(peer_t, n_peer, p->peer_last, p->have_peer, bad)) != QN_OK) return rc;
    bad[0] = -1;
    if (capacity < qn_xpairs_capacity(p, n_own, n_peer)) return QN_ECAPACITY;
    if ((rc = xp_reserve_own(p, p->own_n + n_own)) != QN_OK) return rc;
    if ((rc = xp_reserve_peer(p, p->peer_n + n_peer)) != QN_OK) return rc;
    /* append */
    if (n_own) {
        memcpy(p->own_t + p->own_n, own_t, (size_t)n_own * sizeof(int64_t));
        if (own_c) memcpy(p->own_c + p->own_n, own_c, (size_t)n_own * sizeof(int32_t));
        else memset(p->own_c + p->own_n, 0, (size_t)n_own * sizeof(int32_t));
        p->own_n += n_own;
        p->own_seen += n_own;
        p->own_last = own_t[n_own - 1];
        p->have_own = 1;
    }
    if (own_end != INT64_MIN && (!p->have_own || own_end > p->own_last)) {
        p->own_last = own_end;
        p->have_own = 1;
    }
    if (n_peer) {
        memcpy(p->peer_raw + p->peer_n, peer_t, (size_t)n_peer * sizeof(int64_t));
        p->peer_n += n_peer;
        p->peer_seen += n_peer;
        p->peer_last = peer_t[n_peer - 1];
        p->have_peer = 1;
    }
    if (peer_end != INT64_MIN && (!p->have_peer || peer_end > p->peer_last)) {
        p->peer_last = peer_end;
        p->have_peer = 1;
    }
    /* map every buffered peer tag through this call's model */
    const int64_t base_ref = clock->base + clock->ref;
    const double den = 1.0 + clock->rate;
    int64_t *restrict m = p->peer_map;
    const int64_t *restrict raw = p->peer_raw;
    const int64_t np_ = p->peer_n;
    int64_t prev_m = INT64_MIN;
    for (int64_t j = 0; j < np_; j++) {
        int64_t v = xp_map(clock, base_ref, den, raw[j]);
        if (UNLIKELY(v < prev_m)) v = prev_m; /* see xp_map: kept non-decreasing */
        m[j] = prev_m = v;
    }
    /* own tags settle when a + reach_hi < the mapped newest peer time (every later peer tag maps
     * at or after it); peer_end = QN_TIME_LIMIT settles all */
    int64_t settle = 0;
    if (p->have_peer) {
        const int64_t known = p->peer_last >= QN_TIME_LIMIT ? INT64_MAX
                              : xp_map(clock, base_ref, den, p->peer_last);
        const int64_t lim = known == INT64_MAX ? INT64_MAX : known - p->reach_hi;
        int64_t lo = 0, hi = p->own_n; /* first own index with time >= lim */
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (p->own_t[mid] < lim) lo = mid + 1;
            else hi = mid;
        }
        settle = lo;
    }
    /* the scans, on indices relative to the buffer */
    const int64_t first = p->peer_first;
    int64_t pc = p->pc - first, pa = p->pa - first, ph = p->ph - first;
    const int64_t w = p->w, sh_lo = p->shift - w, sh_hi = p->shift + w;
    const int64_t hlo = p->hlo, bw = p->bw, hspan = p->nbins * p->bw;
    const int64_t *restrict at = p->own_t;
    const int32_t *restrict ac = p->own_c;
    int64_t np_out = 0, acc = 0;
    for (int64_t i = 0; i < settle; i++) {
        const int64_t a = at[i];
        /* pairing: the earliest unused peer tag with |dt| <= w */
        while (pc < np_ && m[pc] < a - w) pc++;
        if (pc < np_ && m[pc] <= a + w) {
            qn_xpair *o = &pairs[np_out++];
            o->own = p->own_first + i;
            o->peer = first + pc;
            o->dt = m[pc] - a;
            o->channel = ac[i];
            o->reserved = 0;
            pc++;
        }
        if (p->with_acc) {
            while (pa < np_ && m[pa] < a + sh_lo) pa++;
            if (pa < np_ && m[pa] <= a + sh_hi) { acc++; pa++; }
        }
        if (hspan) {
            while (ph < np_ && m[ph] < a + hlo) ph++;
            for (int64_t j = ph; j < np_; j++) {
                const int64_t d = m[j] - a - hlo;
                if (d >= hspan) break;
                hist[d / bw]++;
            }
        }
    }
    /* drop the settled own tags */
    if (settle) {
        memmove(p->own_t, p->own_t + settle, (size_t)(p->own_n - settle) * sizeof(int64_t));
        memmove(p->own_c, p->own_c + settle, (size_t)(p->own_n - settle) * sizeof(int32_t));
        p->own_n -= settle;
        p->own_first += settle;
        p->own_done += settle;
    }
    /* advance the scans to the next own tag (or the own stream's newest time): exactly what its
     * turn would do, so the peer tags behind all of them can go */
    if (p->own_n || p->have_own) {
        const int64_t a = p->own_n ? p->own_t[0] : p->own_last;
        while (pc < np_ && m[pc] < a - w) pc++;
        if (p->with_acc) while (pa < np_ && m[pa] < a + sh_lo) pa++;
        if (hspan) while (ph < np_ && m[ph] < a + hlo) ph++;
    }
    int64_t drop = pc;
    if (p->with_acc && pa < drop) drop = pa;
    if (hspan && ph < drop) drop = ph;
    if (drop > 0) {
        memmove(p->peer_raw, p->peer_raw + drop, (size_t)(np_ - drop) * sizeof(int64_t));
        p->peer_n -= drop;
        p->peer_first += drop;
    }
    p->pc = first + pc;
    p->pa = first + pa;
    p->ph = first + ph;
    *n_pairs = np_out;
    *accidentals = acc;
    return QN_OK;
}

/* ---------------------------------------------------------------- base85 (RFC 1924 alphabet) */

static const char B85_ALPHABET[86] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

int qn_b85_encode(const uint8_t *in, int64_t n, uint8_t *out, int64_t cap, int64_t *out_len) {
    *out_len = 0;
    if (n < 0 || cap < 5 * ((n + 3) / 4)) return QN_EARG;
    int64_t o = 0;
    for (int64_t i = 0; i < n; i += 4) {
        const int64_t r = n - i < 4 ? n - i : 4;
        uint32_t v = 0;
        for (int64_t j = 0; j < 4; j++) v = (v << 8) | (j < r ? in[i + j] : 0u);
        uint8_t d[5];
        for (int j = 4; j >= 0; j--) {
            d[j] = (uint8_t)B85_ALPHABET[v % 85];
            v /= 85;
        }
        const int64_t keep = r < 4 ? r + 1 : 5;
        for (int64_t j = 0; j < keep; j++) out[o++] = d[j];
    }
    *out_len = o;
    return QN_OK;
}

int qn_b85_decode(const uint8_t *in, int64_t n, uint8_t *out, int64_t cap, int64_t *out_len,
                  int64_t *bad) {
    static int8_t lut[256];
    static int lut_ready = 0;
    *out_len = 0;
    *bad = -1;
    if (n < 0 || cap < n) return QN_EARG;
    if (!lut_ready) { /* idempotent: racing threads write the same values */
        for (int i = 0; i < 256; i++) lut[i] = -1;
        for (int i = 0; i < 85; i++) lut[(uint8_t)B85_ALPHABET[i]] = (int8_t)i;
        lut_ready = 1;
    }
    if (n % 5 == 1) { *bad = n - 1; return QN_EFORMAT; }
    int64_t o = 0;
    for (int64_t i = 0; i < n; i += 5) {
        const int64_t c = n - i < 5 ? n - i : 5;
        uint64_t v = 0;
        for (int64_t j = 0; j < 5; j++) {
            int d = 84; /* padding: '~' */
            if (j < c) {
                d = lut[in[i + j]];
                if (UNLIKELY(d < 0)) { *bad = i + j; return QN_EFORMAT; }
            }
            v = v * 85 + (uint64_t)d;
        }
        if (UNLIKELY(v > 0xFFFFFFFFu)) { *bad = i; return QN_EFORMAT; }
        const int64_t keep = c < 5 ? c - 1 : 4;
        for (int64_t j = 0; j < keep; j++) out[o++] = (uint8_t)(v >> (24 - 8 * j));
    }
    *out_len = o;
    return QN_OK;
}

/* ---------------------------------------------------------------- LDPC syndrome decoder */
/* Belief propagation in the log domain with the layered (row-serial) schedule (Hocevar, IEEE
 * SiPS 2004) and the sum-product check rule in its phi form (Gallager 1963; MacKay and Neal
 * 1996; Kschischang, Frey, Loeliger 2001): for check j with syndrome bit s_j and extrinsic inputs
 * t_k = L[v_k] - R[j,k],
 *     R[j,k] = (-1)^(s_j + #{i != k : t_i < 0}) * phi(sum_{i != k} phi(|t_i|)),
 *     phi(x) = -ln tanh(x/2) = ln((e^x + 1)/(e^x - 1)),  phi(phi(x)) = x,
 * then L[v_k] = t_k + R[j,k] at once (the next row sees the update). LLR convention: positive
 * means "bit = 0 more likely" (ln(P(0)/P(1))). phi is evaluated on |x| clamped to
 * [LD_XMIN, LD_XMAX] either exactly (double, libm) or from a table of 64 chords per octave
 * indexed by the float's exponent and top six mantissa bits (max error ~3e-5 absolute near 0,
 * ~1e-5 relative elsewhere). The sum excluding the input with the largest phi (the weakest
 * input) is accumulated directly (per lane: rest += min(max, f), max = max(max, f)), so the
 * message to that edge does not lose precision by cancellation in S - phi_max; ties need no care
 * (S - phi_k is then that same sum). Channel LLRs are clipped to +-LD_LMAX; the posteriors are
 * not clipped (a saturated posterior corrupts the extrinsic t = L - R of the layered schedule and
 * cost frames that flooding decodes), but stay finite: |R| <= phi(LD_XMIN) ~ 17.3, so
 * |L| <= LD_LMAX + 17.3 * (column weight).
 * Kernels: scalar (any CPU), AVX2+FMA (8 edges per step, table phi by gathers), AVX-512F (16
 * edges per step, phi by a per-octave polynomial from in-register permutes: on Zen 5 the
 * table gathers were more than half of the AVX2 kernel's time), chosen at run time, and the
 * exact one (libm phi, scalar; for validation). */
#define LD_OCT_LO (-24)                 /* table covers x in [2^-24, 2^6) */
#define LD_OCT_HI 6
#define LD_PER_OCT_BITS 6               /* 64 chords per octave */
#define LD_TAB ((LD_OCT_HI - LD_OCT_LO) << LD_PER_OCT_BITS)
#define LD_TAB_BASE ((uint32_t)(127 + LD_OCT_LO) << LD_PER_OCT_BITS)
#define LD_XMIN 0x1p-24f
#define LD_XMAX 63.99f
#define LD_LMAX 50.0f
#define LD_MAX_DIM 0x7fffffff
#define LD_KERNEL_AUTO 0
#define LD_KERNEL_SCALAR 1
#define LD_KERNEL_EXACT 2
#define LD_KERNEL_AVX2 3
#define LD_KERNEL_AVX512 4
#define LD_POLY 5                       /* degree of the per-octave phi polynomial */
#define LD_GROUP 2                      /* rows the AVX-512 kernel runs side by side */

struct qn_ldpc {
    int64_t m, n, nnz;
    int32_t max_row;
    int32_t kernel;   /* LD_KERNEL_*, AUTO resolved at construction to the widest the CPU runs */
    int64_t scratch;  /* max_row rounded up to 8, plus 8 */
    int64_t *rp;      /* m + 1 row offsets */
    int32_t *near;    /* m: the last row before j that shares a column with row j, or -1 */
    int32_t *col;     /* nnz (+ 8 zero padding) column indices */
    float c0[LD_TAB]; /* chord i: phi(x) ~ c0[i] + c1[i] x */
    float c1[LD_TAB];
    /* per octave o (x in [2^(o + LD_OCT_LO), 2^(o + LD_OCT_LO + 1)), mantissa m in [1, 2)):
     * phi(x) ~ sum_k pc[k][o] (m - 1.5)^k, interpolated at LD_POLY + 1 Chebyshev nodes; 32
     * octaves so that one table is two 16-float registers (AVX-512 two-source permutes) */
    float pc[LD_POLY + 1][32];
};

/* A decode call's state, in the caller's workspace (so one decoder serves several threads). */
typedef struct {
    float *r;         /* nnz + 8 check-to-variable messages */
    float *l;         /* n posterior LLRs */
    float *t;         /* scratch: extrinsic inputs of the current row */
    float *f;         /* scratch: phi(|t|) */
    float *rows;      /* LD_GROUP pairs (t, f) of scratches, for rows run side by side (AVX-512);
                       * the first pair is t and f */
} ld_work;

static double ld_phi_exact(double x) { return log1p(2.0 / expm1(x)); }

static inline float ld_clamp(float x) {
    x = x < LD_XMIN ? LD_XMIN : x;
    return x > LD_XMAX ? LD_XMAX : x;
}

/* phi from the chord table; x already clamped to [LD_XMIN, LD_XMAX]. */
static inline float ld_phi_tab(const qn_ldpc *d, float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    const uint32_t i = (b >> (23 - LD_PER_OCT_BITS)) - LD_TAB_BASE;
    return d->c0[i] + d->c1[i] * x;
}

static inline float ld_phi(const qn_ldpc *d, float x, int exact) {
    return exact ? (float)ld_phi_exact((double)x) : ld_phi_tab(d, x);
}

/* Can this CPU run the kernel (LD_KERNEL_AVX2 / LD_KERNEL_AVX512), and was it compiled in? */
static int ld_cpu_has(int32_t kernel) {
#ifdef QN_HAVE_AVX2
    if (kernel == LD_KERNEL_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); /* 0 or 1 */
#endif
#ifdef QN_HAVE_AVX512
    if (kernel == LD_KERNEL_AVX512) return __builtin_cpu_supports("avx512f") != 0;
#endif
    (void)kernel;
    return 0;
}

/* pc[.][o]: the polynomial in t = m - 1.5 through phi at LD_POLY + 1 Chebyshev nodes of
 * t in [-0.5, 0.5] (near-minimax; Vandermonde solved by Gaussian elimination in double).
 * Octaves past the table's range repeat the last one (x is clamped below 2^LD_OCT_HI). */
static void ld_fit_octave(qn_ldpc *d, int o) {
    enum { K = LD_POLY + 1 };
    const int oo = o < LD_OCT_HI - LD_OCT_LO ? o : LD_OCT_HI - LD_OCT_LO - 1;
    double a[K][K + 1];
    for (int i = 0; i < K; i++) {
        const double t = 0.5 * cos(3.14159265358979323846 * (2.0 * i + 1.0) / (2.0 * K));
        double tk = 1.0;
        for (int k = 0; k < K; k++, tk *= t) a[i][k] = tk;
        a[i][K] = ld_phi_exact(ldexp(1.5 + t, oo + LD_OCT_LO));
    }
    for (int c = 0; c < K; c++) {
        int piv = c;
        for (int r = c + 1; r < K; r++)
            if (fabs(a[r][c]) > fabs(a[piv][c])) piv = r;
        for (int k = 0; k <= K; k++) {
            const double tmp = a[c][k];
            a[c][k] = a[piv][k];
            a[piv][k] = tmp;
        }
        for (int r = 0; r < K; r++) {
            if (r == c) continue;
            const double f = a[r][c] / a[c][c];
            for (int k = c; k <= K; k++) a[r][k] -= f * a[c][k];
        }
    }
    for (int k = 0; k < K; k++) d->pc[k][o] = (float)(a[k][K] / a[k][k]);
}

int qn_ldpc_supports(int32_t kernel) {
    if (kernel >= LD_KERNEL_AUTO && kernel <= LD_KERNEL_EXACT) return 1;
#ifndef QN_HAVE_AVX2
    if (kernel == LD_KERNEL_AVX2) return -1;
#endif
#ifndef QN_HAVE_AVX512
    if (kernel == LD_KERNEL_AVX512) return -1;
#endif
    return kernel == LD_KERNEL_AVX2 || kernel == LD_KERNEL_AVX512 ? ld_cpu_has(kernel) : -1;
}

void qn_ldpc_free(qn_ldpc *d) {
    if (!d) return;
    free(d->rp);
    free(d->col);
    free(d->near);
    free(d);
}

int qn_ldpc_new(qn_ldpc **out, int64_t m, int64_t n, const int64_t *indptr,
                const int32_t *indices, int32_t kernel) {
    *out = NULL;
    if (m < 1 || n < 1 || m > LD_MAX_DIM || n > LD_MAX_DIM || !indptr) return QN_EARG;
    if (kernel < LD_KERNEL_AUTO || kernel > LD_KERNEL_AVX512) return QN_EARG;
    if (kernel >= LD_KERNEL_AVX2 && !ld_cpu_has(kernel)) return QN_EUNSUPPORTED;
    const int64_t nnz = indptr[m];
    if (indptr[0] != 0 || nnz < 0 || nnz > LD_MAX_DIM || (nnz > 0 && !indices)) return QN_EARG;
    int64_t max_row = 0;
    for (int64_t j = 0; j < m; j++) {
        const int64_t deg = indptr[j + 1] - indptr[j];
        if (deg < 0 || indptr[j + 1] > nnz) return QN_EARG;
        if (deg > max_row) max_row = deg;
    }
    for (int64_t e = 0; e < nnz; e++)
        if (indices[e] < 0 || indices[e] >= n) return QN_EARG;
    qn_ldpc *d = calloc(1, sizeof *d);
    if (!d) return QN_ENOMEM;
    d->m = m;
    d->n = n;
    d->nnz = nnz;
    d->max_row = (int32_t)max_row;
    d->kernel = kernel;
    if (kernel == LD_KERNEL_AUTO)
        d->kernel = ld_cpu_has(LD_KERNEL_AVX512) ? LD_KERNEL_AVX512
                    : ld_cpu_has(LD_KERNEL_AVX2) ? LD_KERNEL_AVX2 : LD_KERNEL_SCALAR;
    d->scratch = (max_row + 7) / 8 * 8 + 8;
    d->rp = malloc(sizeof(int64_t) * (size_t)(m + 1));
    d->col = malloc(sizeof(int32_t) * (size_t)(nnz + 8));  /* + 8: masked vector tails */
    d->near = malloc(sizeof(int32_t) * (size_t)m);
    int32_t *seen = malloc(sizeof(int32_t) * (size_t)n); /* duplicate check: last row per column */
    if (!d->rp || !d->col || !d->near || !seen) {
        free(seen);
        qn_ldpc_free(d);
        return QN_ENOMEM;
    }
    memcpy(d->rp, indptr, sizeof(int64_t) * (size_t)(m + 1));
    if (nnz) memcpy(d->col, indices, sizeof(int32_t) * (size_t)nnz);
    memset(d->col + nnz, 0, sizeof(int32_t) * 8);
    for (int64_t v = 0; v < n; v++) seen[v] = -1;
    for (int64_t j = 0; j < m; j++) {
        d->near[j] = -1;
        for (int64_t e = indptr[j]; e < indptr[j + 1]; e++) {
            if (seen[indices[e]] == (int32_t)j) { /* a repeated entry in one row */
                free(seen);
                qn_ldpc_free(d);
                return QN_EARG;
            }
            if (seen[indices[e]] > d->near[j]) d->near[j] = seen[indices[e]];
            seen[indices[e]] = (int32_t)j;
        }
    }
    free(seen);
    /* chord i spans [x_i, x_{i+1}), x_i the float with bits (i + base) << (23 - bits) */
    for (int32_t i = 0; i < LD_TAB; i++) {
        const int e = LD_OCT_LO + (i >> LD_PER_OCT_BITS);
        const double x0 = ldexp(1.0 + (double)(i & ((1 << LD_PER_OCT_BITS) - 1)) /
                                          (double)(1 << LD_PER_OCT_BITS), e);
        const double x1 = x0 + ldexp(1.0, e - LD_PER_OCT_BITS);
        const double y0 = ld_phi_exact(x0), y1 = ld_phi_exact(x1);
        const double c1 = (y1 - y0) / (x1 - x0);
        d->c0[i] = (float)(y0 - c1 * x0);
        d->c1[i] = (float)c1;
    }
    for (int o = 0; o < 32; o++) ld_fit_octave(d, o);
    *out = d;
    return QN_OK;
}

void qn_ldpc_shape(const qn_ldpc *d, int64_t *out) {
    out[0] = d->m;
    out[1] = d->n;
    out[2] = d->nnz;
    out[3] = d->max_row;
    out[4] = d->kernel;
}

/* r (nnz + 8), l (n), the channel LLRs of the last call (n), 2 LD_GROUP row scratches */
int64_t qn_ldpc_work_size(const qn_ldpc *d) {
    return d->nnz + 8 + 2 * d->n + 2 * LD_GROUP * d->scratch;
}

/* Does the hard decision (L < 0 -> 1) satisfy every check? */
static int ld_syndrome_ok(const qn_ldpc *d, const float *l, const uint8_t *s) {
    for (int64_t j = 0; j < d->m; j++) {
        uint32_t par = s[j];
        for (int64_t e = d->rp[j]; e < d->rp[j + 1]; e++) par ^= (uint32_t)(l[d->col[e]] < 0.0f);
        if (par) return 0;
    }
    return 1;
}

/* One layered iteration over all rows (scalar); returns the number of rows whose check was
 * satisfied by the hard decisions right after the row's own update. */
static inline int64_t ld_iterate(const qn_ldpc *restrict d, const ld_work *w, const uint8_t *restrict s, int exact) {
    const int64_t *restrict rp = d->rp;
    const int32_t *restrict col = d->col;
    float *restrict r = w->r;
    float *restrict l = w->l;
    float *restrict tt = w->t;
    float *restrict ff = w->f;
    int64_t sat = 0;
    for (int64_t j = 0; j < d->m; j++) {
        const int64_t b = rp[j];
        const int64_t deg = rp[j + 1] - b;
        const int32_t *restrict cj = col + b;
        float *restrict rj = r + b;
        uint32_t par = s[j];
        float rest = 0.0f, fmax = 0.0f;
        for (int64_t k = 0; k < deg; k++) {
            const float t = l[cj[k]] - rj[k];
            const float f = ld_phi(d, ld_clamp(fabsf(t)), exact);
            tt[k] = t;
            ff[k] = f;
            par ^= (uint32_t)(t < 0.0f);
            rest += f < fmax ? f : fmax;
            fmax = f > fmax ? f : fmax;
        }
        const float total = rest + fmax;
        uint32_t hard = s[j];
        for (int64_t k = 0; k < deg; k++) {
            const float arg = ff[k] == fmax ? rest : total - ff[k];
            const float mag = ld_phi(d, ld_clamp(arg), exact);
            const float t = tt[k];
            const float msg = (par ^ (uint32_t)(t < 0.0f)) ? -mag : mag;
            const float post = t + msg;
            rj[k] = msg;
            l[cj[k]] = post;
            hard ^= (uint32_t)(post < 0.0f);
        }
        sat += hard == 0;
    }
    return sat;
}

static int64_t ld_iterate_tab(const qn_ldpc *d, const ld_work *w, const uint8_t *s) {
    return ld_iterate(d, w, s, 0);
}
static int64_t ld_iterate_exact(const qn_ldpc *d, const ld_work *w, const uint8_t *s) {
    return ld_iterate(d, w, s, 1);
}

#ifdef QN_HAVE_AVX2
#define LD_AVX __attribute__((target("avx2,fma")))

LD_AVX static inline __m256 ld_phi8(const qn_ldpc *d, __m256 x) {
    const __m256i i = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(x),
                                                         23 - LD_PER_OCT_BITS),
                                       _mm256_set1_epi32((int)LD_TAB_BASE));
    return _mm256_fmadd_ps(_mm256_i32gather_ps(d->c1, i, 4), x,
                           _mm256_i32gather_ps(d->c0, i, 4));
}

LD_AVX static inline __m256 ld_clamp8(__m256 x) {
    return _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LD_XMIN)), _mm256_set1_ps(LD_XMAX));
}

LD_AVX static inline float ld_hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

LD_AVX static inline __m256 ld_hmax8(__m256 v) {
    v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0x4e));
    return _mm256_max_ps(v, _mm256_permute_ps(v, 0xb1));
}

LD_AVX static int64_t ld_iterate_avx2(const qn_ldpc *restrict d, const ld_work *w, const uint8_t *restrict s) {
    const int64_t *restrict rp = d->rp;
    const int32_t *restrict col = d->col;
    float *restrict r = w->r;
    float *restrict l = w->l;
    float *restrict tt = w->t;
    float *restrict ff = w->f;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int64_t sat = 0;
    for (int64_t j = 0; j < d->m; j++) {
        const int64_t b = rp[j];
        const int64_t deg = rp[j + 1] - b;
        const int32_t *restrict cj = col + b;
        float *restrict rj = r + b;
        uint32_t par = s[j];
        __m256 rest = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
        for (int64_t k = 0; k < deg; k += 8) {
            const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(deg - k)), lane);
            const __m256i ci = _mm256_maskload_epi32(cj + k, live);
            const __m256 lg = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), l, ci,
                                                       _mm256_castsi256_ps(live), 4);
            const __m256 t = _mm256_sub_ps(lg, _mm256_maskload_ps(rj + k, live));
            __m256 f = ld_phi8(d, ld_clamp8(_mm256_andnot_ps(sign, t)));
            f = _mm256_and_ps(f, _mm256_castsi256_ps(live));
            _mm256_storeu_ps(tt + k, t);
            _mm256_storeu_ps(ff + k, f);
            par ^= (uint32_t)__builtin_popcount((unsigned)_mm256_movemask_ps(t));
            rest = _mm256_add_ps(rest, _mm256_min_ps(mx, f));
            mx = _mm256_max_ps(mx, f);
        }
        /* the row maximum, and the sum of everything but one instance of it */
        const __m256 fmax = ld_hmax8(mx);
        const unsigned at = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(mx, fmax, _CMP_EQ_OQ));
        const __m256i first = _mm256_set1_epi32(__builtin_ctz(at | 0x100u));
        const __m256 others = _mm256_andnot_ps(
            _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, first)), mx);
        const float rest1 = ld_hsum8(_mm256_add_ps(rest, others));
        const __m256 vrest = _mm256_set1_ps(rest1);
        const __m256 total = _mm256_add_ps(vrest, fmax);
        const __m256 vpar = (par & 1u) ? sign : _mm256_setzero_ps();
        uint32_t hard = s[j];
        for (int64_t k = 0; k < deg; k += 8) {
            const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(deg - k)), lane);
            const __m256 f = _mm256_loadu_ps(ff + k);
            const __m256 t = _mm256_loadu_ps(tt + k);
            const __m256 arg = _mm256_blendv_ps(_mm256_sub_ps(total, f), vrest,
                                                _mm256_cmp_ps(f, fmax, _CMP_EQ_OQ));
            const __m256 mag = ld_phi8(d, ld_clamp8(arg));
            const __m256 msg = _mm256_xor_ps(mag, _mm256_and_ps(sign, _mm256_xor_ps(t, vpar)));
            const __m256 post = _mm256_add_ps(t, msg);
            _mm256_maskstore_ps(rj + k, live, msg);
            const unsigned neg = (unsigned)_mm256_movemask_ps(
                _mm256_and_ps(post, _mm256_castsi256_ps(live)));
            hard ^= (uint32_t)__builtin_popcount(neg);
            float pv[8];
            _mm256_storeu_ps(pv, post);
            const int64_t nl = deg - k < 8 ? deg - k : 8;
            for (int64_t q = 0; q < nl; q++) l[cj[k + q]] = pv[q];
        }
        sat += (hard & 1u) == 0;
    }
    return sat;
}
#endif

#ifdef QN_HAVE_AVX512
#define LD_AVX512 __attribute__((target("avx512f")))

/* The per-octave polynomials' coefficient tables, each two registers of 16 octaves. */
typedef struct {
    __m512 lo[LD_POLY + 1], hi[LD_POLY + 1];
} ld_poly512;

LD_AVX512 static inline void ld_poly_load(const qn_ldpc *d, ld_poly512 *p) {
    for (int k = 0; k <= LD_POLY; k++) {
        p->lo[k] = _mm512_loadu_ps(d->pc[k]);
        p->hi[k] = _mm512_loadu_ps(d->pc[k] + 16);
    }
}

/* phi of 16 clamped x: octave index and mantissa from the float's bits, Horner in m - 1.5
 * (absolute error <= 2.1e-5 against libm, tests/native/test_ldpc_decoder.py) */
LD_AVX512 static inline __m512 ld_phi16(const ld_poly512 *p, __m512 x) {
    const __m512i b = _mm512_castps_si512(x);
    const __m512i o = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(127 + LD_OCT_LO));
    const __m512 m = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_and_si512(b, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f800000)));
    const __m512 t = _mm512_sub_ps(m, _mm512_set1_ps(1.5f));
    __m512 y = _mm512_permutex2var_ps(p->lo[LD_POLY], o, p->hi[LD_POLY]);
    for (int k = LD_POLY - 1; k >= 0; k--)
        y = _mm512_fmadd_ps(y, t, _mm512_permutex2var_ps(p->lo[k], o, p->hi[k]));
    /* past x ~ 12 phi < 1e-5 lies within the fit's error (<= 2.1e-5), which may dip below 0 */
    return _mm512_max_ps(y, _mm512_setzero_ps());
}

/* phi of buf[0..15] in place (qn_ldpc_phi) */
LD_AVX512 static void ld_phi16_one(const qn_ldpc *d, float *buf) {
    ld_poly512 p;
    ld_poly_load(d, &p);
    _mm512_storeu_ps(buf, ld_phi16(&p, _mm512_loadu_ps(buf)));
}

LD_AVX512 static inline __m512 ld_clamp16(__m512 x) {
    return _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LD_XMIN)), _mm512_set1_ps(LD_XMAX));
}

/* One row's state between the passes of the AVX-512 kernel. */
typedef struct {
    const int32_t *cj;
    float *rj, *tt, *ff;
    int64_t deg;
    uint32_t par;
    __m512 rest, mx;
} ld_row16;

LD_AVX512 static inline __mmask16 ld_live16(int64_t left) {
    return (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1u);
}

/* Pass 1: extrinsic inputs t = L - R, f = phi(|t|), their parity, sum and maximum. */
LD_AVX512 static inline void ld_row16_in(ld_row16 *q, const ld_poly512 *poly, const float *l) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    q->rest = _mm512_setzero_ps();
    q->mx = _mm512_setzero_ps();
    for (int64_t k = 0; k < q->deg; k += 16) {
        const __mmask16 live = ld_live16(q->deg - k);
        const __m512i ci = _mm512_maskz_loadu_epi32(live, q->cj + k);
        const __m512 lg = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, ci, l, 4);
        const __m512 t = _mm512_sub_ps(lg, _mm512_maskz_loadu_ps(live, q->rj + k));
        const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(t)));
        const __m512 f = _mm512_maskz_mov_ps(live, ld_phi16(poly, ld_clamp16(a)));
        _mm512_storeu_ps(q->tt + k, t);
        _mm512_storeu_ps(q->ff + k, f);
        q->par ^= (uint32_t)__builtin_popcount(
            (unsigned)_mm512_mask_cmp_ps_mask(live, t, _mm512_setzero_ps(), _CMP_LT_OQ));
        q->rest = _mm512_add_ps(q->rest, _mm512_min_ps(q->mx, f));
        q->mx = _mm512_max_ps(q->mx, f);
    }
}

/* Pass 2: messages R = +-phi(sum of the others' f), posteriors L = t + R; returns the parity of
 * the row's new hard decisions with its syndrome bit (0: the check holds). */
LD_AVX512 static inline uint32_t ld_row16_out(const ld_row16 *q, const ld_poly512 *poly, float *l,
                                              uint32_t syndrome_bit) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    /* the row maximum, and the sum of everything but one instance of it */
    const float fm = _mm512_reduce_max_ps(q->mx);
    const __m512 fmax = _mm512_set1_ps(fm);
    const unsigned at = (unsigned)_mm512_cmp_ps_mask(q->mx, fmax, _CMP_EQ_OQ);
    const __mmask16 others = (__mmask16)~(at & -at);
    const float rest1 = _mm512_reduce_add_ps(q->rest) + _mm512_mask_reduce_add_ps(others, q->mx);
    const __m512 vrest = _mm512_set1_ps(rest1);
    const __m512 total = _mm512_set1_ps(rest1 + fm);
    const __m512i vpar = (q->par & 1u) ? sign : _mm512_setzero_si512();
    uint32_t hard = syndrome_bit;
    for (int64_t k = 0; k < q->deg; k += 16) {
        const __mmask16 live = ld_live16(q->deg - k);
        const __m512 f = _mm512_loadu_ps(q->ff + k);
        const __m512 t = _mm512_loadu_ps(q->tt + k);
        const __mmask16 is_max = _mm512_cmp_ps_mask(f, fmax, _CMP_EQ_OQ);
        const __m512 arg = _mm512_mask_mov_ps(_mm512_sub_ps(total, f), is_max, vrest);
        const __m512 mag = ld_phi16(poly, ld_clamp16(arg));
        const __m512i flip = _mm512_and_si512(sign, _mm512_xor_si512(_mm512_castps_si512(t), vpar));
        const __m512 msg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag), flip));
        const __m512 post = _mm512_add_ps(t, msg);
        _mm512_mask_storeu_ps(q->rj + k, live, msg);
        hard ^= (uint32_t)__builtin_popcount(
            (unsigned)_mm512_mask_cmp_ps_mask(live, post, _mm512_setzero_ps(), _CMP_LT_OQ));
        /* scalar stores: cheaper than a scatter here (measured on Zen 5) */
        float pv[16];
        _mm512_storeu_ps(pv, post);
        const int64_t nl = q->deg - k < 16 ? q->deg - k : 16;
        for (int64_t e = 0; e < nl; e++) l[q->cj[k + e]] = pv[e];
    }
    return hard & 1u;
}

/* As ld_iterate_avx2 with 16 edges a step and phi without table loads. Up to LD_GROUP
 * consecutive rows that share no column are run side by side (no row's pass 2 feeds another's
 * pass 1), which gives the same result as running them one after the other and hides the
 * latency of each row's chain of reductions. */
LD_AVX512 static int64_t ld_iterate_avx512(const qn_ldpc *restrict d, const ld_work *w, const uint8_t *restrict s) {
    ld_poly512 poly;
    ld_poly_load(d, &poly);
    int64_t sat = 0;
    ld_row16 rows[LD_GROUP];
    for (int g = 0; g < LD_GROUP; g++) {
        rows[g].tt = w->rows + 2 * g * d->scratch;
        rows[g].ff = rows[g].tt + d->scratch;
    }
    for (int64_t j = 0; j < d->m;) {
        int64_t g = 1;
        while (g < LD_GROUP && j + g < d->m && d->near[j + g] < j) g++;
        for (int64_t i = 0; i < g; i++) {
            ld_row16 *q = rows + i;
            q->cj = d->col + d->rp[j + i];
            q->rj = w->r + d->rp[j + i];
            q->deg = d->rp[j + i + 1] - d->rp[j + i];
            q->par = s[j + i];
            ld_row16_in(q, &poly, w->l);
        }
        for (int64_t i = 0; i < g; i++) sat += ld_row16_out(rows + i, &poly, w->l, s[j + i]) == 0;
        j += g;
    }
    return sat;
}
#endif

void qn_ldpc_phi(const qn_ldpc *d, const float *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float c = ld_clamp(x[i]);
        float y;
        switch (d->kernel) {
#ifdef QN_HAVE_AVX512
        case LD_KERNEL_AVX512: {
            float buf[16] = {0};
            buf[0] = c;
            ld_phi16_one(d, buf);
            y = buf[0];
            break;
        }
#endif
        case LD_KERNEL_EXACT:
            y = ld_phi(d, c, 1);
            break;
        default: /* scalar and AVX2 share the chord table */
            y = ld_phi(d, c, 0);
        }
        out[i] = y;
    }
}

int qn_ldpc_decode(const qn_ldpc *d, float *work, int64_t work_size, const uint8_t *syndrome,
                   const double *llr, int32_t max_iter, int32_t patience, int32_t resume,
                   uint8_t *error, int32_t *converged, int32_t *iterations) {
    *converged = 0;
    *iterations = 0;
    if (max_iter < 0 || patience < 0 || work_size < qn_ldpc_work_size(d)) return QN_EARG;
    float *channel = work + d->nnz + 8 + d->n;
    float *rows = channel + d->n;
    const ld_work w = {work, work + d->nnz + 8, rows, rows + d->scratch, rows};
    for (int64_t j = 0; j < d->m; j++)
        if (syndrome[j] > 1) return QN_EARG;
    for (int64_t v = 0; v < d->n; v++)
        if (isnan(llr[v])) return QN_EARG;
    for (int64_t v = 0; v < d->n; v++) {
        const double x = llr[v];
        const float c = (float)(x > LD_LMAX ? LD_LMAX : x < -LD_LMAX ? -LD_LMAX : x);
        /* resume: the posterior keeps the check messages and takes the channel's change */
        w.l[v] = resume ? w.l[v] + (c - channel[v]) : c;
        channel[v] = c;
    }
    if (!resume) memset(w.r, 0, sizeof(float) * (size_t)(d->nnz + 8));
    int ok = ld_syndrome_ok(d, w.l, syndrome);
    int32_t it = 0, since_best = 0;
    int64_t best_unsat = d->m + 1;
    while (!ok && it < max_iter && (patience == 0 || since_best < patience)) {
        int64_t sat;
#ifdef QN_HAVE_AVX512
        if (d->kernel == LD_KERNEL_AVX512)
            sat = ld_iterate_avx512(d, &w, syndrome);
        else
#endif
#ifdef QN_HAVE_AVX2
        if (d->kernel == LD_KERNEL_AVX2)
            sat = ld_iterate_avx2(d, &w, syndrome);
        else
#endif
            sat = d->kernel == LD_KERNEL_EXACT ? ld_iterate_exact(d, &w, syndrome)
                                               : ld_iterate_tab(d, &w, syndrome);
        it++;
        if (sat == d->m) ok = ld_syndrome_ok(d, w.l, syndrome);
        if (d->m - sat < best_unsat) {
            best_unsat = d->m - sat;
            since_best = 0;
        } else {
            since_best++;
        }
    }
    for (int64_t v = 0; v < d->n; v++) error[v] = (uint8_t)(w.l[v] < 0.0f);
    *converged = ok;
    *iterations = it;
    return QN_OK;
}
