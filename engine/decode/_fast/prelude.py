"""The fixed part of every generated decoder: C helpers the emitted code calls.

Kept as a Python string (not a ``.c`` file) so that it ships wherever the package does, and so
its text is part of the source hash that keys the on-disk cache.
"""

from __future__ import annotations

# Error codes: keep in sync with ``ERRORS`` below.
ERRORS: dict[int, str] = {
    1: "truncated (the datum ends in the middle of a value)",
    2: "malformed varint (more than 10 bytes)",
    3: "invalid union branch index (only 0 or 1 exist)",
    4: "negative length",
    5: "invalid boolean byte (not 0 or 1)",
    6: "invalid UTF-8 in a string",
    7: "int value out of the 32-bit range",
    8: "array block count larger than the bytes left",
    9: "trailing bytes after the datum",
    10: "out of memory",
    11: "too much data for one Arrow column (2 GiB of string bytes or 2**31 list items)",
}

PRELUDE = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

enum { E_TRUNC = 1, E_VARINT, E_UNION, E_NEGLEN, E_BOOL, E_UTF8, E_INTRANGE, E_COUNT,
       E_TRAILING, E_NOMEM, E_TOOBIG };

/* Decode one unsigned LEB128 varint; NULL when truncated or longer than 10 bytes. */
static inline const uint8_t *rd_varint(const uint8_t *p, const uint8_t *end, uint64_t *out) {
    uint64_t b = 0, r = 0;
    int sh = 0;
    if (LIKELY(end - p >= 10)) {  /* common case: no bounds check per byte */
        for (int k = 0; k < 10; k++, sh += 7) {
            b = p[k];
            r |= (b & 0x7f) << sh;
            if (!(b & 0x80)) { *out = r; return p + k + 1; }
        }
        return NULL;
    }
    for (int k = 0; p + k < end && k < 10; k++, sh += 7) {
        b = p[k];
        r |= (b & 0x7f) << sh;
        if (!(b & 0x80)) { *out = r; return p + k + 1; }
    }
    return NULL;
}

/* Why rd_varint failed: ran off the end, or ten continuation bytes. */
static int varint_error(const uint8_t *p, const uint8_t *end) {
    return (end - p) < 10 ? E_TRUNC : E_VARINT;
}

/* Skip one varint without decoding it; NULL on error. */
static inline const uint8_t *skip_varint(const uint8_t *p, const uint8_t *end) {
    const uint8_t *stop = (end - p) < 10 ? end : p + 10;
    for (; p < stop; p++)
        if (!(*p & 0x80)) return p + 1;
    return NULL;
}

/* Well-formed UTF-8 exactly as Python's strict decoder sees it (no surrogates, no overlongs). */
static int utf8_ok(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) { i += 8; continue; }
        }
        uint8_t b = s[i];
        if (b < 0x80) { i++; continue; }
        if (b >= 0xC2 && b <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            if (i + 2 >= n) return 0;
            uint8_t b1 = s[i + 1], b2 = s[i + 2];
            if ((b1 & 0xC0) != 0x80 || (b2 & 0xC0) != 0x80) return 0;
            if ((b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 > 0x9F)) return 0;
            i += 3;
        } else if (b >= 0xF0 && b <= 0xF4) {
            if (i + 3 >= n) return 0;
            uint8_t b1 = s[i + 1], b2 = s[i + 2], b3 = s[i + 3];
            if ((b1 & 0xC0) != 0x80 || (b2 & 0xC0) != 0x80 || (b3 & 0xC0) != 0x80) return 0;
            if ((b == 0xF0 && b1 < 0x90) || (b == 0xF4 && b1 > 0x8F)) return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Copy a large value (a cutout) with non-temporal stores: a visit's cutouts are far bigger
   than the caches, and streaming them skips the read-for-ownership of every destination line. */
static void copy_value(uint8_t *dst, const uint8_t *src, size_t n) {
#ifdef __SSE2__
    if (n >= 8192) {
        size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
        memcpy(dst, src, head);
        dst += head; src += head; n -= head;
        for (; n >= 64; n -= 64, dst += 64, src += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)src);
            __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
            _mm_stream_si128((__m128i *)dst, a);
            _mm_stream_si128((__m128i *)(dst + 16), b);
            _mm_stream_si128((__m128i *)(dst + 32), c);
            _mm_stream_si128((__m128i *)(dst + 48), d);
        }
    }
#endif
    memcpy(dst, src, n);
}

static void copy_done(void) {
#ifdef __SSE2__
    _mm_sfence();  /* streamed stores are visible before the batch is handed out */
#endif
}

/* Buffers of 4 MiB and more are mapped directly, in 2 MiB huge pages where the kernel allows
   (transparent huge pages in madvise mode): the first visit after start-up takes ~500x fewer
   page faults. Smaller ones come from malloc. The capacity tells which is which. */
#define BIG_ALLOC ((int64_t)4 << 20)
#define HUGE_PAGE ((int64_t)2 << 20)

static uint8_t *buf_realloc(uint8_t *old, int64_t old_cap, int64_t *new_cap) {
    int64_t want = *new_cap;
    if (want < BIG_ALLOC) {
        uint8_t *q = realloc(old, (size_t)want);
        return q;
    }
    want = (want + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *q;
    if (old && old_cap >= BIG_ALLOC) {
        q = mremap(old, (size_t)old_cap, (size_t)want, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) return NULL;
    } else {
        q = mmap(NULL, (size_t)want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return NULL;
        if (old) { memcpy(q, old, (size_t)old_cap); free(old); }
    }
#ifdef MADV_HUGEPAGE
    madvise(q, (size_t)want, MADV_HUGEPAGE);
#endif
    *new_cap = want;
    return q;
}

static void buf_free(uint8_t *p, int64_t cap) {
    if (!p) return;
    if (cap >= BIG_ALLOC) munmap(p, (size_t)cap);
    else free(p);
}

/* ---- macros used by emitted code; ON_ERR is redefined per function kind ---- */
/* Error paths are out of line: they keep the hot code small (and gcc's compile time short). */
typedef struct Ctx Ctx;
static __attribute__((noinline, cold)) void fail_at(Ctx *c, int code, int fid, const uint8_t *p);
#define ERR(code, fid) do { fail_at(c, (code), (fid), p); ON_ERR; } while (0)
#define CHECK(n, fid) do { if (UNLIKELY(end - p < (int64_t)(n))) ERR(E_TRUNC, fid); } while (0)

/* Multi-byte varints: out of line; NULL (error recorded) when truncated or too long. */
static __attribute__((noinline)) const uint8_t *rd_varint_long(Ctx *c, const uint8_t *p,
        const uint8_t *end, uint64_t *out, int fid) {
    const uint8_t *q = rd_varint(p, end, out);
    if (UNLIKELY(!q)) fail_at(c, varint_error(p, end), fid, p);
    return q;
}
#define RD_LONG(v, fid) do { uint64_t r_; \
    if (LIKELY(p < end && !(*p & 0x80))) r_ = *p++; \
    else { p = rd_varint_long(c, p, end, &r_, fid); if (UNLIKELY(!p)) ON_ERR; } \
    (v) = (int64_t)((r_ >> 1) ^ (~(r_ & 1) + 1)); } while (0)
#define RD_INT(v, fid) do { int64_t w_; RD_LONG(w_, fid); \
    if (UNLIKELY(w_ < INT32_MIN || w_ > INT32_MAX)) ERR(E_INTRANGE, fid); (v) = (int32_t)w_; } while (0)
#define SKIP_VARINT(fid) do { const uint8_t *q_ = skip_varint(p, end); \
    if (UNLIKELY(!q_)) ERR(varint_error(p, end), fid); p = q_; } while (0)
/* A union index is one byte (0x00 or 0x02) in every real writer; other encodings go the slow way. */
#define RD_UNION(v, fid) do { CHECK(1, fid); uint8_t u_ = *p; \
    if (LIKELY(u_ == 0 || u_ == 2)) { (v) = u_ >> 1; p++; } \
    else { int64_t l_; RD_LONG(l_, fid); if (UNLIKELY(l_ < 0 || l_ > 1)) ERR(E_UNION, fid); (v) = (int)l_; } \
    } while (0)
#define RD_BOOL(v, fid) do { CHECK(1, fid); (v) = *p++; if (UNLIKELY((v) > 1)) ERR(E_BOOL, fid); } while (0)
#define RD_LEN(n, fid) do { RD_LONG(n, fid); if (UNLIKELY((n) < 0)) ERR(E_NEGLEN, fid); \
    CHECK(n, fid); } while (0)
#define SKIP_BYTES(fid) do { int64_t n_; RD_LEN(n_, fid); p += n_; } while (0)
#define SKIP_STRING(fid) do { int64_t n_; RD_LEN(n_, fid); \
    if (UNLIKELY(!utf8_ok(p, n_))) ERR(E_UTF8, fid); p += n_; } while (0)
#define VSET(bm, s) ((bm)[(s) >> 3] |= (uint8_t)(1u << ((s) & 7)))
/* Array blocks: a count, then (if negative) a byte size; each item takes at least one byte. */
#define RD_BLOCK(n, fid) do { RD_LONG(n, fid); if ((n) < 0) { int64_t z_; RD_LONG(z_, fid); (void)z_; \
    (n) = -(n); if (UNLIKELY((n) < 0)) ERR(E_COUNT, fid); } \
    if (UNLIKELY((n) > end - p)) ERR(E_COUNT, fid); } while (0)
"""

# Buffer management shared by every decoder; NB/NL and the BUF_* tables are emitted before it.
RUNTIME = r"""
enum { K_FIXED = 0, K_BITMAP = 1, K_OFFSETS = 2, K_DATA = 3 };

static void fail_at(Ctx *c, int code, int fid, const uint8_t *p) {
    c->err_code = code;
    c->err_field = fid;
    c->err_ptr = (int64_t)(intptr_t)p;
}

static int64_t buf_bytes(int b, int64_t slots) {
    switch (BUF_KIND[b]) {
    case K_BITMAP: return (slots + 7) / 8;
    case K_OFFSETS: return (slots + 1) * BUF_WIDTH[b];
    default: return slots * BUF_WIDTH[b];
    }
}

static int ensure_buf(Ctx *c, int b, int64_t bytes) {
    if (bytes <= c->cap[b]) return 0;
    uint8_t *q = buf_realloc(c->buf[b], c->cap[b], &bytes);
    if (!q) return -1;
    if (BUF_KIND[b] == K_BITMAP) memset(q + c->cap[b], 0, (size_t)(bytes - c->cap[b]));
    c->buf[b] = q;
    c->cap[b] = bytes;
    return 0;
}

/* Room for `need` slots in every buffer of one level (they always grow together). */
static int grow_level(Ctx *c, int level, int64_t need) {
    int64_t cap = c->lcap[level] * 2;
    if (cap < need) cap = need;
    if (cap < 64) cap = 64;
    cap = (cap + 63) & ~(int64_t)63;
    for (int b = 0; b < NB; b++)
        if (BUF_LEVEL[b] == level && ensure_buf(c, b, buf_bytes(b, cap))) return -1;
    c->lcap[level] = cap;
    return 0;
}

static int grow_data(Ctx *c, int b, int64_t need) {
    if (need <= c->cap[b]) return 0;
    int64_t cap = c->cap[b] * 2;
    if (cap < need) cap = need;
    if (cap < 4096) cap = 4096;
    return ensure_buf(c, b, cap);
}

/* Prepare a (possibly reused) context for `count` datums: zeroed bitmaps, offsets[0] = 0. */
int fd_begin(Ctx *c, int64_t count) {
    for (int l = 0; l < NL; l++) {
        int64_t need = l == 0 ? count : c->lcap[l];
        if (need < 64) need = 64;
        if (need > c->lcap[l] || c->lcap[l] == 0) { if (grow_level(c, l, need)) return -1; }
        /* A buffer of a reused level may be smaller than the level cap if an earlier grow failed. */
        for (int b = 0; b < NB; b++)
            if (BUF_LEVEL[b] == l && ensure_buf(c, b, buf_bytes(b, c->lcap[l]))) return -1;
        c->llen[l] = 0;
    }
    for (int b = 0; b < NB; b++) {
        if (BUF_KIND[b] == K_DATA) { if (grow_data(c, b, 1)) return -1; c->vlen[b] = 0; }
        else if (BUF_KIND[b] == K_BITMAP) memset(c->buf[b], 0, (size_t)c->cap[b]);
        else if (BUF_KIND[b] == K_OFFSETS) memset(c->buf[b], 0, (size_t)BUF_WIDTH[b]);
    }
    c->err_code = c->err_index = c->err_start = c->err_pos = c->err_field = c->err_ptr = 0;
    return 0;
}

void fd_free(Ctx *c) {
    for (int b = 0; b < NB; b++) { buf_free(c->buf[b], c->cap[b]); c->buf[b] = NULL; c->cap[b] = 0; }
    for (int l = 0; l < NL; l++) c->lcap[l] = 0;
}

/* Kafka bodies: pin each object's buffer (bytes, memoryview, ...) for the whole decode.
   Declared here rather than via Python.h: Py_buffer and these calls are in the stable ABI. */
typedef struct {
    void *buf; void *obj; int64_t len; int64_t itemsize; int readonly; int ndim;
    char *format; int64_t *shape; int64_t *strides; int64_t *suboffsets; void *internal;
} PyBufferView;
extern void *PySequence_GetItem(void *seq, int64_t i);
extern int PyObject_GetBuffer(void *obj, PyBufferView *view, int flags);
extern void PyBuffer_Release(PyBufferView *view);
extern void Py_DecRef(void *obj);

void fd_release(PyBufferView *views, int64_t n) {
    for (int64_t i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

/* Returns n on success; on failure releases what it pinned, leaves the Python error set and
   returns the index of the offending item. Must be called with the GIL held (ctypes.PyDLL). */
int64_t fd_acquire(void *seq, int64_t n, PyBufferView *views, const uint8_t **ptrs, int64_t *lens) {
    for (int64_t i = 0; i < n; i++) {
        void *item = PySequence_GetItem(seq, i);
        if (!item) { fd_release(views, i); return i; }
        int r = PyObject_GetBuffer(item, &views[i], 0);
        Py_DecRef(item);
        if (r) { fd_release(views, i); return i; }
        ptrs[i] = (const uint8_t *)views[i].buf;
        lens[i] = views[i].len;
    }
    return n;
}

/* Confluent framing, checked and stripped in place: each body must start with magic byte 0
   and the big-endian schema id ``id``; ptrs/lens then point at the datums. Returns -1 when all
   are good, else the index of the first bad body, with *why = 1 (shorter than the 5-byte
   header), 2 (magic byte not 0) or 3 (another schema id, stored in *found). */
int64_t fd_unframe(const uint8_t **ptrs, int64_t *lens, int64_t n, int64_t id, int64_t *why,
                   int64_t *found) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = ptrs[i];
        if (lens[i] < 5) { *why = 1; return i; }
        if (p[0] != 0) { *why = 2; *found = p[0]; return i; }
        int64_t got = ((int64_t)p[1] << 24) | ((int64_t)p[2] << 16) | ((int64_t)p[3] << 8) | p[4];
        if (got != id) { *why = 3; *found = got; return i; }
        ptrs[i] = p + 5;
        lens[i] -= 5;
    }
    return -1;
}
"""

PYBUFFER_SIZE = 80  # sizeof(Py_buffer) on 64-bit CPython >= 3.11 (stable ABI)
