/* Native CSV byte work for ml.batch.score: field boundaries, cached cells, output lines.
 *
 * The batch scorer keeps each chunk of the input as bytes. Three loops over those bytes
 * cost more in numpy than the rest of the scorer outside the model, and are done here:
 *
 * split()  - the field boundaries of every record (commas and newlines outside quotes),
 *            or -1 when the chunk is not plainly regular (ragged rows, blank lines, an
 *            unclosed quote), which sends it to the csv module.
 * lookup() - which cached cell, if any, each cell of a column is. The scorer converts
 *            every distinct cell of a feature column once per file and caches the result
 *            by the cell's exact bytes; Python keeps that cache as a dict, and insert()
 *            mirrors its keys here as an open-addressing hash table (a multiply-xor hash
 *            over 8-byte words, linear probing) over one buffer of concatenated keys. A
 *            cell not in the table gets -1 and goes to Python, which converts it and adds
 *            it to both.
 * splice() - the output: each kept record with its score bytes inserted before its line
 *            end, the other records left out.
 *
 * Every offset read from the arguments is checked against the buffer it indexes, so
 * bad arrays raise ValueError instead of reading or writing outside memory. Only the
 * buffer protocol is used: no numpy headers are needed to build it. ml/batch/score.py has a
 * numpy version of each, used when this module is not built; the tests compare them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The int64 arrays a call needs, with their lengths; fails on a buffer that is not a
 * whole number of int64 (numpy intp arrays on the 64-bit platforms this runs on). */
static int
as_int64(Py_buffer *b, const char *name, Py_ssize_t *n)
{
    if (b->len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "%s is not an int64 array", name);
        return -1;
    }
    *n = b->len / (Py_ssize_t)sizeof(int64_t);
    return 0;
}


/* ------------------------------------------------------------------ split */

/* The bytes split() stops at: quote, comma, newline. */
static const unsigned char SPECIAL[256] = {['"'] = 1, [','] = 1, ['\n'] = 1};

/* The first special byte at or after i, or len. Sixteen bytes per test with SSE2 (every
 * x86-64 CPU has it): fields are short, but this still made split() 1.8x faster than one
 * byte per test. */
static inline Py_ssize_t
next_special(const unsigned char *data, Py_ssize_t i, Py_ssize_t len)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), comma = _mm_set1_epi8(','),
                  newline = _mm_set1_epi8('\n');
    for (; i + 16 <= len; i += 16) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(data + i));
        const int mask = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, comma)),
            _mm_cmpeq_epi8(v, newline)));
        if (mask) return i + __builtin_ctz((unsigned)mask);
    }
#endif
    while (i < len && !SPECIAL[data[i]]) i++;
    return i;
}

static PyObject *
split(PyObject *self, PyObject *args)
{
    Py_buffer block, starts, ends, line_end;
    Py_ssize_t ncols;
    if (!PyArg_ParseTuple(args, "y*nw*w*w*", &block, &ncols, &starts, &ends, &line_end)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n_starts, n_ends, cap;
    if (as_int64(&starts, "starts", &n_starts) || as_int64(&ends, "ends", &n_ends)
        || as_int64(&line_end, "line_end", &cap)) {
        goto done;
    }
    if (ncols <= 0 || (cap > 0 && ncols > PY_SSIZE_T_MAX / cap) || n_starts != ncols * cap
        || n_ends != n_starts) {
        PyErr_SetString(PyExc_ValueError, "starts and ends must have shape (ncols, capacity)");
        goto done;
    }
    /* starts[j * cap + i]: column-major, each column's cells contiguous */
    int64_t *st = (int64_t *)starts.buf, *en = (int64_t *)ends.buf;
    int64_t *le = (int64_t *)line_end.buf;
    const unsigned char *data = (const unsigned char *)block.buf;
    Py_ssize_t row = 0, col = 0, field = 0, regular = 1;
    int quoted = 0;
    for (Py_ssize_t i = next_special(data, 0, block.len); i < block.len && regular;
         i = next_special(data, i + 1, block.len)) {
        const unsigned char c = data[i];
        if (c == '"') {
            quoted = !quoted;
        } else if (quoted || (c != ',' && c != '\n')) {
            continue;
        } else if (row >= cap || col >= ncols || (c == '\n') != (col == ncols - 1)) {
            regular = 0; /* more records than lines, or a ragged row or blank line */
        } else {
            Py_ssize_t end = i;
            if (c == '\n' && end > field && data[end - 1] == '\r') end--;
            st[col * cap + row] = field;
            en[col * cap + row] = end;
            field = i + 1;
            if (c == '\n') {
                le[row++] = i + 1;
                col = 0;
            } else {
                col++;
            }
        }
    }
    /* regular only if every byte belongs to a record ending in a newline */
    result = PyLong_FromSsize_t(regular && !quoted && col == 0 && field == block.len ? row : -1);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&line_end);
    return result;
}

/* ------------------------------------------------------------------ lookup */

/* Eight bytes at a time (the feature cells are often long labels), the last word
 * zero-padded; the length is mixed in so that padding cannot make two cells equal. */
static inline uint64_t
hash_bytes(const unsigned char *s, Py_ssize_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    if (i < n) {
        uint64_t w = 0;
        for (int k = 0; i + k < n; k++) w |= (uint64_t)s[i + k] << (8 * k);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
    }
    h ^= h >> 29;
    h *= 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 32);
}

/* Key i of the table is keys[key_start[i] : key_start[i] + key_length[i]]. */
typedef struct {
    const unsigned char *keys;
    Py_ssize_t keys_len;
    const int64_t *start;
    const int64_t *length;
    Py_ssize_t n_keys;
    int64_t *table;
    Py_ssize_t mask; /* table size - 1, a power of two */
} Index;

static int
open_index(Index *ix, Py_buffer *keys, Py_buffer *start, Py_buffer *length, Py_buffer *table)
{
    Py_ssize_t n_start, n_length, n_table;
    if (as_int64(start, "key_start", &n_start) || as_int64(length, "key_length", &n_length)
        || as_int64(table, "table", &n_table)) {
        return -1;
    }
    if (n_start != n_length || n_table < 1 || (n_table & (n_table - 1))
        || n_start >= n_table) {
        PyErr_SetString(PyExc_ValueError,
                        "the key arrays differ in length, or the table is not a power of two "
                        "larger than the keys");
        return -1;
    }
    ix->keys = (const unsigned char *)keys->buf;
    ix->keys_len = keys->len;
    ix->start = (const int64_t *)start->buf;
    ix->length = (const int64_t *)length->buf;
    ix->n_keys = n_start;
    ix->table = (int64_t *)table->buf;
    ix->mask = n_table - 1;
    return 0;
}

/* memcmp(a, b, n) == 0 for the short cells of CSV files, without a library call. */
static inline int
same(const unsigned char *a, const unsigned char *b, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return 0;
    }
    for (; i < n; i++) {
        if (a[i] != b[i]) return 0;
    }
    return 1;
}

/* Slot of the key equal to s[0:n] (or of the empty place for it): returns its table
 * position, or -1 on a bad entry; *found is the key index or -1. */
static Py_ssize_t
probe(const Index *ix, const unsigned char *s, Py_ssize_t n, int64_t *found)
{
    Py_ssize_t at = (Py_ssize_t)(hash_bytes(s, n) & (uint64_t)ix->mask);
    for (Py_ssize_t tries = 0; tries <= ix->mask; tries++) {
        const int64_t k = ix->table[at];
        if (k < 0) {
            *found = -1;
            return at;
        }
        if (k >= ix->n_keys) return -1;
        const int64_t a = ix->start[k], len = ix->length[k];
        if (a < 0 || len < 0 || a > ix->keys_len - len) return -1;
        if (len == n && same(ix->keys + a, s, n)) {
            *found = k;
            return at;
        }
        at = (at + 1) & ix->mask;
    }
    return -1; /* full table: open_index keeps at least one place empty */
}

/* Cells are a row apart (hundreds of bytes): each is a cache miss unless fetched this
 * many cells ahead (measured: lookup() 1.6x faster with the prefetch). */
#define AHEAD 16

static PyObject *
lookup(PyObject *self, PyObject *args)
{
    Py_buffer block, starts, lengths, keys, key_start, key_length, table, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*", &block, &starts, &lengths, &keys,
                          &key_start, &key_length, &table, &out)) {
        return NULL;
    }
    PyObject *result = NULL;
    Index ix;
    Py_ssize_t n, n_lengths, n_out, misses = 0;
    if (open_index(&ix, &keys, &key_start, &key_length, &table)
        || as_int64(&starts, "starts", &n) || as_int64(&lengths, "lengths", &n_lengths)
        || as_int64(&out, "out", &n_out)) {
        goto done;
    }
    if (n_lengths != n || n_out != n) {
        PyErr_SetString(PyExc_ValueError, "starts, lengths and out differ in length");
        goto done;
    }
    const unsigned char *data = (const unsigned char *)block.buf;
    const int64_t *s = (const int64_t *)starts.buf, *l = (const int64_t *)lengths.buf;
    int64_t *slots = (int64_t *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + AHEAD < n && s[i + AHEAD] >= 0 && s[i + AHEAD] < block.len) {
            __builtin_prefetch(data + s[i + AHEAD]);
        }
        if (s[i] < 0 || l[i] < 0 || s[i] > block.len - l[i]) {
            PyErr_SetString(PyExc_ValueError, "a cell lies outside the block");
            goto done;
        }
        if (probe(&ix, data + s[i], (Py_ssize_t)l[i], &slots[i]) < 0) {
            PyErr_SetString(PyExc_ValueError, "the hash table is corrupt");
            goto done;
        }
        misses += slots[i] < 0;
    }
    result = PyLong_FromSsize_t(misses);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&key_start);
    PyBuffer_Release(&key_length);
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *
insert(PyObject *self, PyObject *args)
{
    Py_buffer keys, key_start, key_length, table;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "y*y*y*w*n", &keys, &key_start, &key_length, &table,
                          &first)) {
        return NULL;
    }
    PyObject *result = NULL;
    Index ix;
    if (open_index(&ix, &keys, &key_start, &key_length, &table)) goto done;
    if (first < 0 || first > ix.n_keys) {
        PyErr_SetString(PyExc_ValueError, "first is not a key index");
        goto done;
    }
    for (Py_ssize_t k = first; k < ix.n_keys; k++) {
        const int64_t a = ix.start[k], len = ix.length[k];
        if (a < 0 || len < 0 || a > ix.keys_len - len) {
            PyErr_SetString(PyExc_ValueError, "a key lies outside the key buffer");
            goto done;
        }
        int64_t found;
        Py_ssize_t at = probe(&ix, ix.keys + a, (Py_ssize_t)len, &found);
        if (at < 0) {
            PyErr_SetString(PyExc_ValueError, "the hash table is corrupt");
            goto done;
        }
        if (found >= 0) {
            PyErr_SetString(PyExc_ValueError, "a key is already in the table");
            goto done;
        }
        ix.table[at] = k;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&key_start);
    PyBuffer_Release(&key_length);
    PyBuffer_Release(&table);
    return result;
}

/* ------------------------------------------------------------------ splice */

static PyObject *
splice(PyObject *self, PyObject *args)
{
    Py_buffer block, line_end, at, keep, digits, tail, table, table_start, table_len, out;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*ny*y*y*y*w*", &block, &line_end, &at, &keep,
                          &digits, &width, &tail, &table, &table_start, &table_len, &out)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n, n_at, n_kept, n_tail, n_table, n_table_len;
    if (as_int64(&line_end, "line_end", &n) || as_int64(&at, "at", &n_at)
        || as_int64(&tail, "tail", &n_tail) || as_int64(&table_start, "table_start", &n_table)
        || as_int64(&table_len, "table_len", &n_table_len)) {
        goto done;
    }
    n_kept = width > 0 ? digits.len / width : -1;
    if (n_at != n || keep.len != n || n_kept != n_tail || digits.len != n_kept * width
        || n_table != n_table_len) {
        PyErr_SetString(PyExc_ValueError, "splice: array sizes do not match");
        goto done;
    }
    const unsigned char *src = (const unsigned char *)block.buf;
    const unsigned char *dig = (const unsigned char *)digits.buf;
    const unsigned char *tab = (const unsigned char *)table.buf;
    const unsigned char *kept = (const unsigned char *)keep.buf;
    const int64_t *le = (const int64_t *)line_end.buf, *a = (const int64_t *)at.buf;
    const int64_t *tl = (const int64_t *)tail.buf, *ts = (const int64_t *)table_start.buf;
    const int64_t *tn = (const int64_t *)table_len.buf;
    unsigned char *dst = (unsigned char *)out.buf;
    Py_ssize_t w = 0, k = 0, begin = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t stop = le[i], cut = a[i];
        if (cut < begin || stop < cut || stop > block.len) goto bad;
        if (!kept[i]) {
            begin = stop;
            continue;
        }
        const int64_t t = tl[k];
        if (t < 0 || t >= n_table || ts[t] < 0 || tn[t] < 0 || ts[t] > table.len - tn[t]) {
            goto bad;
        }
        const Py_ssize_t need = (stop - begin) + width + tn[t];
        if (need > out.len - w) goto bad;
        memcpy(dst + w, src + begin, (size_t)(cut - begin));
        w += cut - begin;
        memcpy(dst + w, dig + k * width, (size_t)width);
        w += width;
        memcpy(dst + w, tab + ts[t], (size_t)tn[t]);
        w += tn[t];
        memcpy(dst + w, src + cut, (size_t)(stop - cut));
        w += stop - cut;
        begin = stop;
        k++;
    }
    if (k != n_kept || w != out.len) goto bad;
    result = Py_NewRef(Py_None);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "splice: an offset is out of bounds or the output "
                    "size is wrong");
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&line_end);
    PyBuffer_Release(&at);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&digits);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&table);
    PyBuffer_Release(&table_start);
    PyBuffer_Release(&table_len);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS,
     "split(block, ncols, starts, ends, line_end) -> records, or -1 if irregular:\n"
     "field boundaries as (ncols, capacity) int64 arrays (see ml/batch/_csvbytes.c)."},
    {"lookup", lookup, METH_VARARGS,
     "lookup(block, starts, lengths, keys, key_start, key_length, table, out) -> misses:\n"
     "out[i] = the index of the key equal to block[starts[i]:starts[i] + lengths[i]],\n"
     "or -1 (see ml/_csvcells.c)."},
    {"insert", insert, METH_VARARGS,
     "insert(keys, key_start, key_length, table, first): add keys first.. to the table."},
    {"splice", splice, METH_VARARGS,
     "splice(block, line_end, at, keep, digits, width, tail, table, table_start, table_len,\n"
     "out): the kept records with their digits and tail inserted at at[i]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csvbytes", "Native CSV byte work for ml.batch.score.", -1, methods,
};

PyMODINIT_FUNC
PyInit__csvbytes(void)
{
    return PyModule_Create(&module);
}
