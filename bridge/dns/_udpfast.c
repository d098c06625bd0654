/* The compiled UDP fast path: a batch of queries received, answered and sent in one call.
 *
 * `Batcher.serve` waits for one datagram, takes every other one already queued
 * (`recvmmsg`), answers those the table's fast path answers (`Responder.respond` in
 * respond.py: the same dicts read the same way, the same bytes written), sends the replies
 * (`sendmmsg`) and counts them into the serving thread's `metrics.Counts` lists. Every
 * other packet (a miss, a name to re-spell that the bytes cannot show, a rotation not made
 * yet, a reply to truncate, anything malformed) is handed back to Python, which answers it
 * the usual way: this file only ever answers what the Python fast path answers, with the
 * same bytes (tests/integration/test_dns_udpfast.py compares the two).
 *
 * The GIL is released only around the two system calls; the dicts are read with it held.
 * One `Batcher` per serving thread: its buffers are that thread's.
 *
 * Over our 600-line mark: it is one extension module, and its three parts (reading the
 * table, answering a packet, the batch's I/O and counts) share the types `configure` sets;
 * split, each part would need a header for the others' few functions.
 */
#define _GNU_SOURCE  /* recvmmsg, sendmmsg */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define IN_CAP 4096       /* as server.UDP_BUFFER: a longer datagram is cut, as recvfrom does */
#define OUT_CAP 4096      /* a longer reply is handed back (replies that long are rare) */
#define REPLY_MAX 65535
#define MIN_UDP_PAYLOAD 512
#define OTHER_QTYPE 256
#define QTYPE_SLOTS 257
#define RCODE_SLOTS 16
#define SPAN_SLOTS 64
#define MAX_BATCH 1024

/* Set once by `configure`: the sentinel and types respond.py tells apart, and the
 * `Counts.n` slots written here. */
static PyObject *Gone, *EntryType, *RotationsType, *TurnsType;
static Py_ssize_t SlotDropped = -1, SlotTruncated = -1, SlotNanos = -1;

#define MAX_LABELS 128  /* a 255-byte name has at most 127 labels */

/* What one batch reads of the table (strong references, released by view_clear). */
typedef struct {
    PyObject *entries_recent, *entries_base, *defaults_recent, *defaults_base;
    PyObject *opt[2];
    PyObject *zones;      /* `_zones`: Zone(answerer, labels, wire, upper, pods), most specific first */
    PyObject *negatives;  /* `_negatives`: (zone index, prefix) -> (by_type, default), made on first use */
    /* With `_special`: the names whose answers only Python serves (`CowMap`s' two dicts). */
    PyObject *shuffled[2], *chases[2], *slow_defaults[2];
    long udp_payload;
    int special;
} View;

static PyObject *dict_attr(PyObject *table, const char *name);

static void view_clear(View *v) {
    Py_CLEAR(v->entries_recent);
    Py_CLEAR(v->entries_base);
    Py_CLEAR(v->defaults_recent);
    Py_CLEAR(v->defaults_base);
    Py_CLEAR(v->opt[0]);
    Py_CLEAR(v->opt[1]);
    Py_CLEAR(v->zones);
    Py_CLEAR(v->negatives);
    for (int i = 0; i < 2; i++) {
        Py_CLEAR(v->shuffled[i]);
        Py_CLEAR(v->chases[i]);
        Py_CLEAR(v->slow_defaults[i]);
    }
}

/* A `CowMap`'s two dicts, `recent` and `base`, into out[0] and out[1]. */
static int cow_attr(PyObject *table, const char *name, PyObject **out) {
    PyObject *map = PyObject_GetAttrString(table, name);
    if (map == NULL)
        return -1;
    out[0] = dict_attr(map, "recent");
    out[1] = out[0] == NULL ? NULL : dict_attr(map, "base");
    Py_DECREF(map);
    return out[1] == NULL ? -1 : 0;
}

static PyObject *dict_attr(PyObject *table, const char *name) {
    PyObject *value = PyObject_GetAttrString(table, name);
    if (value != NULL && !PyDict_CheckExact(value)) {
        Py_DECREF(value);
        PyErr_Format(PyExc_TypeError, "%s is not a dict", name);
        return NULL;
    }
    return value;
}

/* 0 on success; -1 with an exception set. */
static int view_load(View *v, PyObject *table) {
    memset(v, 0, sizeof(*v));
    if (!(v->entries_recent = dict_attr(table, "_entries_recent")) ||
        !(v->entries_base = dict_attr(table, "_entries_base")) ||
        !(v->defaults_recent = dict_attr(table, "_defaults_recent")) ||
        !(v->defaults_base = dict_attr(table, "_defaults_base")) ||
        !(v->negatives = dict_attr(table, "_negatives")))
        goto fail;
    PyObject *opt = PyObject_GetAttrString(table, "_opt");
    if (opt == NULL)
        goto fail;
    if (!PyTuple_Check(opt) || PyTuple_GET_SIZE(opt) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(opt, 0)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(opt, 1))) {
        Py_DECREF(opt);
        PyErr_SetString(PyExc_TypeError, "_opt is not two bytes");
        goto fail;
    }
    v->opt[0] = Py_NewRef(PyTuple_GET_ITEM(opt, 0));
    v->opt[1] = Py_NewRef(PyTuple_GET_ITEM(opt, 1));
    Py_DECREF(opt);
    v->zones = PyObject_GetAttrString(table, "_zones");
    if (v->zones == NULL)
        goto fail;
    if (!PyTuple_Check(v->zones)) {
        PyErr_SetString(PyExc_TypeError, "_zones is not a tuple");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v->zones); i++) {
        PyObject *zone = PyTuple_GET_ITEM(v->zones, i);
        if (!PyTuple_Check(zone) || PyTuple_GET_SIZE(zone) != 5 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(zone, 2))) {
            PyErr_SetString(PyExc_TypeError, "a zone is not a Zone");
            goto fail;
        }
    }
    PyObject *special = PyObject_GetAttrString(table, "_special");
    if (special == NULL)
        goto fail;
    v->special = PyObject_IsTrue(special);
    Py_DECREF(special);
    if (v->special < 0)
        goto fail;
    if (v->special && (cow_attr(table, "_shuffled", v->shuffled) < 0 ||
                       cow_attr(table, "_chases", v->chases) < 0 ||
                       cow_attr(table, "_slow_defaults", v->slow_defaults) < 0))
        goto fail;
    PyObject *payload = PyObject_GetAttrString(table, "udp_payload");
    if (payload == NULL)
        goto fail;
    v->udp_payload = PyLong_AsLong(payload);
    Py_DECREF(payload);
    if (v->udp_payload == -1 && PyErr_Occurred())
        goto fail;
    return 0;
fail:
    view_clear(v);
    return -1;
}

/* A `CowMap` read as the fast path reads it: `recent` wins (GONE: absent), else `base`.
 * Borrowed reference, NULL if absent; sets *error on an exception. */
static PyObject *cow_get(PyObject *recent, PyObject *base, PyObject *key, int *error) {
    PyObject *value = PyDict_GetItemWithError(recent, key);
    if (value == NULL) {
        if (PyErr_Occurred()) {
            *error = 1;
            return NULL;
        }
        value = PyDict_GetItemWithError(base, key);
        if (value == NULL && PyErr_Occurred())
            *error = 1;
        return value;
    }
    return value == Gone ? NULL : value;
}

static int small_int(PyObject *value, Py_ssize_t *out) {
    if (!PyLong_CheckExact(value))
        return 0;
    *out = PyLong_AsSsize_t(value);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* An `Entry`: heads, body, size, spots. 0 if it is not one (e.g. a `Shuffled`). */
static int entry_parts(PyObject *entry, PyObject **heads, PyObject **body, Py_ssize_t *size,
                       PyObject **spots) {
    if (!Py_IS_TYPE(entry, (PyTypeObject *)EntryType) || PyTuple_GET_SIZE(entry) != 5)
        return 0;
    *heads = PyTuple_GET_ITEM(entry, 0);
    *body = PyTuple_GET_ITEM(entry, 1);
    *spots = PyTuple_GET_ITEM(entry, 3);
    return PyTuple_Check(*heads) && PyTuple_GET_SIZE(*heads) == 8 && PyBytes_CheckExact(*body) &&
           small_int(PyTuple_GET_ITEM(entry, 2), size) && PyTuple_Check(*spots);
}

/* The negative answer `Responder._miss` finds (through `_absent`) for a name in one of our
 * zones that no table lists: borrowed, or NULL to hand the packet back (a pod name, a
 * shape not asked before, a name outside our zones, ...); sets *error on an exception.
 * `lower`: the question name lowered, `end`: where it ends in `p`. */
static PyObject *absent(const View *v, const unsigned char *p, Py_ssize_t len, Py_ssize_t end,
                        PyObject *key, PyObject *name, int *error) {
    const char *lower = PyBytes_AS_STRING(name);
    if (v->special) {
        /* A shuffled, chased or slow name: `_miss` answers it. */
        if (cow_get(v->shuffled[0], v->shuffled[1], key, error) != NULL ||
            cow_get(v->chases[0], v->chases[1], key, error) != NULL ||
            cow_get(v->slow_defaults[0], v->slow_defaults[1], name, error) != NULL || *error)
            return NULL;
    }
    /* packet.walk_name: it must end where the fast path's name ended. */
    Py_ssize_t offsets[MAX_LABELS], labels = 0, pos = 12;
    for (;;) {
        if (pos >= len)
            return NULL;
        unsigned char length = p[pos];
        if (length == 0)
            break;
        if (length > 63 || pos + length - 12 >= 254 || labels == MAX_LABELS)
            return NULL;
        offsets[labels++] = pos;
        pos += length + 1;
    }
    if (pos + 1 != end)
        return NULL;  /* a label holding a zero byte: `_miss` looks the name up again */
    for (Py_ssize_t index = 0; index < PyTuple_GET_SIZE(v->zones); index++) {
        PyObject *zone = PyTuple_GET_ITEM(v->zones, index);
        PyObject *wire = PyTuple_GET_ITEM(zone, 2);
        Py_ssize_t zone_at = end - PyBytes_GET_SIZE(wire);
        if (zone_at < 12 || memcmp(lower + (zone_at - 12), PyBytes_AS_STRING(wire),
                                   (size_t)PyBytes_GET_SIZE(wire)) != 0)
            continue;
        Py_ssize_t label = -1;
        for (Py_ssize_t i = 0; i < labels; i++) {
            if (offsets[i] == zone_at) {
                label = i;
                break;
            }
        }
        if (label < 0)
            continue;
        int pods = PyObject_IsTrue(PyTuple_GET_ITEM(zone, 4));
        if (pods < 0) {
            *error = 1;
            return NULL;
        }
        if (pods && label == 3 && memcmp(lower + (offsets[2] - 12), "\3pod", 4) == 0)
            return NULL;  /* a pod's own records: `Table._pod` */
        PyObject *key = Py_BuildValue("(nn)", index, zone_at - 12);
        if (key == NULL) {
            *error = 1;
            return NULL;
        }
        PyObject *found = PyDict_GetItemWithError(v->negatives, key);
        Py_DECREF(key);
        if (found == NULL) {
            if (PyErr_Occurred())
                *error = 1;
            return NULL;  /* made on first use, by Python */
        }
        if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 2 ||
            !PyDict_CheckExact(PyTuple_GET_ITEM(found, 0)))
            return NULL;
        PyObject *qtype = PyLong_FromLong(((long)p[end] << 8) | p[end + 1]);
        if (qtype == NULL) {
            *error = 1;
            return NULL;
        }
        PyObject *entry = PyDict_GetItemWithError(PyTuple_GET_ITEM(found, 0), qtype);
        Py_DECREF(qtype);
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                *error = 1;
                return NULL;
            }
            entry = PyTuple_GET_ITEM(found, 1);
        }
        return entry;
    }
    return NULL;  /* not ours */
}

/* The reply `Responder.respond(packet, tcp=False)` gives when its fast path (with
 * `_emit`'s rotations and re-spelling, short of truncation) or `_miss`'s negative answers
 * answer `packet`, written to `out` (room for `cap` bytes): its length; 0 to hand the
 * packet back to Python; -1 with an exception set. `*qslot`: the `Counts.qtypes` slot
 * respond would count. */
static Py_ssize_t answer_one(const View *v, const unsigned char *p, Py_ssize_t len,
                             unsigned char *out, Py_ssize_t cap, int *qslot) {
    static const unsigned char query_counts[6] = {0, 1, 0, 0, 0, 0};
    if (len < 17 || memcmp(p + 4, query_counts, 6) != 0 || (p[2] & 0xF8))
        return 0;
    const unsigned char *zero = memchr(p + 12, 0, (size_t)(len - 12));
    if (zero == NULL)
        return 0;
    Py_ssize_t end = zero - p + 1, qend = end + 4, nlen = end - 12;
    if (qend > len)
        return 0;
    *qslot = p[end] ? OTHER_QTYPE : p[end + 1];

    /* EDNS: none, or one OPT record as packet.read_opt reads it; else Python's slow path. */
    const char *opt = NULL;
    Py_ssize_t optlen = 0, limit;
    unsigned int arcount = ((unsigned int)p[10] << 8) | p[11];
    if (arcount == 0 && len == qend) {
        limit = MIN_UDP_PAYLOAD;
    } else if (arcount == 1 && len >= qend + 11 && p[qend] == 0 && p[qend + 1] == 0 &&
               p[qend + 2] == 41 && p[qend + 6] == 0 &&
               qend + 11 + (((Py_ssize_t)p[qend + 9] << 8) | p[qend + 10]) == len) {
        long payload = ((long)p[qend + 3] << 8) | p[qend + 4];
        PyObject *ours = v->opt[(p[qend + 7] & 0x80) ? 1 : 0];
        opt = PyBytes_AS_STRING(ours);
        optlen = PyBytes_GET_SIZE(ours);
        long room = payload < v->udp_payload ? payload : v->udp_payload;
        limit = room > MIN_UDP_PAYLOAD ? room : MIN_UDP_PAYLOAD;
    } else {
        return 0;
    }

    /* Keys: the name lowered as bytes.lower() does (ASCII only), then type and class. */
    PyObject *key = PyBytes_FromStringAndSize(NULL, nlen + 4);
    if (key == NULL)
        return -1;
    char *k = PyBytes_AS_STRING(key);
    for (Py_ssize_t i = 0; i < nlen; i++) {
        unsigned char c = p[12 + i];
        k[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    memcpy(k + nlen, p + end, 4);
    int error = 0;
    PyObject *entry = cow_get(v->entries_recent, v->entries_base, key, &error);
    if (entry == NULL && !error) {
        /* The name's default: class IN only, never for a zone transfer (IXFR, AXFR). */
        if (p[end + 2] != 0 || p[end + 3] != 1 || (p[end] == 0 && (p[end + 1] == 251 || p[end + 1] == 252))) {
            Py_DECREF(key);
            return 0;
        }
        PyObject *name = PyBytes_FromStringAndSize(k, nlen);
        if (name == NULL) {
            Py_DECREF(key);
            return -1;
        }
        entry = cow_get(v->defaults_recent, v->defaults_base, name, &error);
        if (entry == NULL && !error)
            entry = absent(v, p, len, end, key, name, &error);
        Py_DECREF(name);
    }
    Py_DECREF(key);
    if (error)
        return -1;
    if (entry == NULL)
        return 0;
    Py_INCREF(entry);
    Py_ssize_t result = 0;

    PyObject *heads, *body, *spots;
    Py_ssize_t size;
    if (!entry_parts(entry, &heads, &body, &size, &spots))
        goto done;
    const char *bodyp = PyBytes_AS_STRING(body);
    Py_ssize_t bodylen = PyBytes_GET_SIZE(body);
    PyObject *patches = NULL;  /* (at, qoffset, length) triples: re-spelled question copies */
    if (Py_IS_TYPE(spots, (PyTypeObject *)RotationsType)) {
        Py_ssize_t count = PyTuple_GET_SIZE(spots);
        if (count == 0)
            goto done;
        PyObject *rotation = PyTuple_GET_ITEM(spots, p[1] % count);
        if (!PyBytes_CheckExact(rotation))
            goto done;
        bodyp = PyBytes_AS_STRING(rotation);
        bodylen = PyBytes_GET_SIZE(rotation);
    } else if (Py_IS_TYPE(spots, (PyTypeObject *)TurnsType)) {
        /* Turns(records, stride, doubled, variants, base): encode.Turns.turn. */
        if (PyTuple_GET_SIZE(spots) != 5)
            goto done;
        Py_ssize_t index = ((Py_ssize_t)p[0] << 8) | p[1], records, stride;
        PyObject *doubled = PyTuple_GET_ITEM(spots, 2), *variants = PyTuple_GET_ITEM(spots, 3);
        if (!PyList_CheckExact(variants))
            goto done;
        if (PyList_GET_SIZE(variants)) {
            PyObject *variant = PyList_GET_ITEM(variants, index % PyList_GET_SIZE(variants));
            if (variant == Py_None)
                goto done;  /* made on first use, by Python */
            Py_INCREF(variant);
            Py_SETREF(entry, variant);
            if (!entry_parts(entry, &heads, &body, &size, &spots) || !PyTuple_CheckExact(spots))
                goto done;
            bodyp = PyBytes_AS_STRING(body);
            bodylen = PyBytes_GET_SIZE(body);
            if (PyTuple_GET_SIZE(spots))
                patches = spots;
        } else {
            if (!small_int(PyTuple_GET_ITEM(spots, 0), &records) ||
                !small_int(PyTuple_GET_ITEM(spots, 1), &stride) || records <= 0 || stride < 0 ||
                !PyBytes_CheckExact(doubled))
                goto done;
            Py_ssize_t at = (index % records) * stride, total = PyBytes_GET_SIZE(doubled);
            Py_ssize_t stop = at + records * stride;
            if (stop > total || at > total)
                goto done;  /* the Python slice would be shorter: leave it to Python */
            bodyp = PyBytes_AS_STRING(doubled) + at;
            bodylen = stop - at;
        }
    } else if (PyTuple_CheckExact(spots)) {
        if (PyTuple_GET_SIZE(spots))
            patches = spots;
    } else {
        goto done;
    }
    if (size + qend - 12 + optlen > limit)
        goto done;  /* truncated: `_emit` cuts it */
    Py_ssize_t reply = 12 + (qend - 12) + bodylen + optlen;
    if (reply > cap)
        goto done;
    int variant = (p[2] & 1) | ((p[3] >> 3) & 2);
    PyObject *head = PyTuple_GET_ITEM(heads, optlen ? (variant | 4) : variant);
    if (!PyBytes_CheckExact(head) || PyBytes_GET_SIZE(head) != 10)
        goto done;
    memcpy(out, p, 2);
    memcpy(out + 2, PyBytes_AS_STRING(head), 10);
    memcpy(out + 12, p + 12, (size_t)(qend - 12));
    unsigned char *outbody = out + qend;
    memcpy(outbody, bodyp, (size_t)bodylen);
    if (patches != NULL) {
        /* As `_emit`: each copy compared with the body as encoded, rewritten if it differs. */
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(patches); i++) {
            PyObject *spot = PyTuple_GET_ITEM(patches, i);
            Py_ssize_t at, qoffset, length;
            if (!PyTuple_Check(spot) || PyTuple_GET_SIZE(spot) != 3 ||
                !small_int(PyTuple_GET_ITEM(spot, 0), &at) ||
                !small_int(PyTuple_GET_ITEM(spot, 1), &qoffset) ||
                !small_int(PyTuple_GET_ITEM(spot, 2), &length) || at < 0 || qoffset < 0 ||
                length < 0 || qoffset + length > len || at + length > bodylen)
                goto done;
            if (memcmp(p + qoffset, bodyp + at, (size_t)length) != 0)
                memcpy(outbody + at, p + qoffset, (size_t)length);
        }
    }
    if (optlen)
        memcpy(outbody + bodylen, opt, (size_t)optlen);
    result = reply;
done:
    Py_DECREF(entry);
    return result;
}

/* --- Batcher -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned int size;
    struct mmsghdr *in, *out;
    struct iovec *in_iov, *out_iov;
    struct sockaddr_storage *peers;
    unsigned char *in_buf, *out_buf;
} Batcher;

static void Batcher_dealloc(Batcher *self) {
    PyMem_Free(self->in);
    PyMem_Free(self->out);
    PyMem_Free(self->in_iov);
    PyMem_Free(self->out_iov);
    PyMem_Free(self->peers);
    PyMem_Free(self->in_buf);
    PyMem_Free(self->out_buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Batcher_init(Batcher *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fd", "size", NULL};
    int fd;
    unsigned int size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iI", keywords, &fd, &size))
        return -1;
    if (size < 1 || size > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch size must be 1-%d", MAX_BATCH);
        return -1;
    }
    if (self->in != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    self->fd = fd;
    self->size = size;
    self->in = PyMem_Calloc(size, sizeof(struct mmsghdr));
    self->out = PyMem_Calloc(size, sizeof(struct mmsghdr));
    self->in_iov = PyMem_Calloc(size, sizeof(struct iovec));
    self->out_iov = PyMem_Calloc(size, sizeof(struct iovec));
    self->peers = PyMem_Calloc(size, sizeof(struct sockaddr_storage));
    self->in_buf = PyMem_Malloc((size_t)size * IN_CAP);
    self->out_buf = PyMem_Malloc((size_t)size * OUT_CAP);
    if (!self->in || !self->out || !self->in_iov || !self->out_iov || !self->peers ||
        !self->in_buf || !self->out_buf) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The peer as the socket module gives it: (host, port) or (host, port, flowinfo, scope). */
static PyObject *peer_tuple(const struct sockaddr_storage *peer) {
    char host[INET6_ADDRSTRLEN];
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
        if (!inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("si", host, ntohs(a->sin_port));
    }
    if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)peer;
        if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("siII", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "not an IP peer");
    return NULL;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* what time.perf_counter_ns reads on Linux */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* list[index] += count */
static int bump(PyObject *list, Py_ssize_t index, long long count) {
    if (count == 0)
        return 0;
    PyObject *old = PyList_GET_ITEM(list, index);
    PyObject *add = PyLong_FromLongLong(count);
    if (add == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(old, add);
    Py_DECREF(add);
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(list, index, sum);
    Py_DECREF(old);
    return 0;
}

static PyObject *Batcher_serve(Batcher *self, PyObject *args) {
    PyObject *server, *qtypes, *rcodes, *n, *spans;
    int autopath;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!p", &server, &PyList_Type, &qtypes, &PyList_Type,
                          &rcodes, &PyList_Type, &n, &PyList_Type, &spans, &autopath))
        return NULL;
    if (Gone == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (PyList_GET_SIZE(qtypes) != QTYPE_SLOTS || PyList_GET_SIZE(rcodes) != RCODE_SLOTS ||
        PyList_GET_SIZE(spans) != SPAN_SLOTS || PyList_GET_SIZE(n) <= SlotNanos ||
        PyList_GET_SIZE(n) <= SlotDropped || PyList_GET_SIZE(n) <= SlotTruncated) {
        PyErr_SetString(PyExc_ValueError, "counter lists of the wrong size");
        return NULL;
    }
    unsigned int size = self->size;
    for (unsigned int i = 0; i < size; i++) {
        self->in_iov[i].iov_base = self->in_buf + (size_t)i * IN_CAP;
        self->in_iov[i].iov_len = IN_CAP;
        struct msghdr *h = &self->in[i].msg_hdr;
        memset(h, 0, sizeof(*h));
        h->msg_name = &self->peers[i];
        h->msg_namelen = sizeof(struct sockaddr_storage);
        h->msg_iov = &self->in_iov[i];
        h->msg_iovlen = 1;
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg(self->fd, self->in, size, MSG_WAITFORONE, NULL);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        if (errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int64_t started = now_ns();
    PyObject *rest = PyList_New(0);
    if (rest == NULL)
        return NULL;
    /* The table served now, read after the wait: one published meanwhile answers. */
    View view;
    PyObject *table = PyObject_GetAttrString(server, "_table");
    int have_view = table != NULL && view_load(&view, table) == 0;
    Py_XDECREF(table);
    if (!have_view)
        PyErr_Clear();  /* not a table this file knows: Python answers the whole batch */
    long long qcount[QTYPE_SLOTS] = {0};
    unsigned int answered = 0;
    for (int i = 0; i < got; i++) {
        Py_ssize_t len = self->in[i].msg_len;
        if (len == 0)
            continue;  /* stop()'s wake-up, or an empty datagram: nothing to answer */
        const unsigned char *packet = self->in_buf + (size_t)i * IN_CAP;
        unsigned char *reply = self->out_buf + (size_t)answered * OUT_CAP;
        int qslot = OTHER_QTYPE;
        Py_ssize_t length = 0;
        if (have_view && self->in[i].msg_hdr.msg_namelen <= sizeof(struct sockaddr_storage)) {
            length = answer_one(&view, packet, len, reply, OUT_CAP, &qslot);
            if (length < 0) {
                PyErr_Clear();  /* e.g. out of memory: Python answers it, or counts it */
                length = 0;
            }
            if (length > 0 && autopath && (reply[3] & 0xF) == 3)
                length = 0;  /* an NXDOMAIN may start an autopath walk: Python's */
        }
        if (length > 0) {
            qcount[qslot]++;
            self->out_iov[answered].iov_base = reply;
            self->out_iov[answered].iov_len = (size_t)length;
            struct msghdr *h = &self->out[answered].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = &self->peers[i];
            h->msg_namelen = self->in[i].msg_hdr.msg_namelen;
            h->msg_iov = &self->out_iov[answered];
            h->msg_iovlen = 1;
            answered++;
            continue;
        }
        PyObject *peer = peer_tuple(&self->peers[i]);
        PyObject *item = peer == NULL ? NULL : Py_BuildValue("(y#N)", (const char *)packet, len, peer);
        if (item == NULL || PyList_Append(rest, item) < 0) {
            Py_XDECREF(item);
            if (have_view)
                view_clear(&view);
            Py_DECREF(rest);
            return NULL;
        }
        Py_DECREF(item);
    }
    if (have_view)
        view_clear(&view);

    /* Send; a datagram that fails is dropped and counted, the next ones still go. */
    long long dropped = 0;
    unsigned int sent_from = 0;
    char ok[MAX_BATCH];
    memset(ok, 0, answered);
    Py_BEGIN_ALLOW_THREADS
    while (sent_from < answered) {
        int sent = sendmmsg(self->fd, self->out + sent_from, answered - sent_from, 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            dropped++;
            sent_from++;
            continue;
        }
        if (sent == 0) {
            dropped += answered - sent_from;
            break;
        }
        memset(ok + sent_from, 1, (size_t)sent);
        sent_from += (unsigned int)sent;
    }
    Py_END_ALLOW_THREADS
    int64_t took = now_ns() - started;
    if (took < 0)
        took = 0;

    long long rcount[RCODE_SLOTS] = {0}, truncated = 0, delivered = 0;
    for (unsigned int j = 0; j < answered; j++) {
        if (!ok[j])
            continue;
        const unsigned char *reply = self->out_buf + (size_t)j * OUT_CAP;
        rcount[reply[3] & 0xF]++;
        if (reply[2] & 0x02)
            truncated++;
        delivered++;
    }
    int span = took ? 64 - __builtin_clzll((unsigned long long)took) : 0;
    for (int q = 0; q < QTYPE_SLOTS; q++)
        if (bump(qtypes, q, qcount[q]) < 0)
            goto fail;
    for (int r = 0; r < RCODE_SLOTS; r++)
        if (bump(rcodes, r, rcount[r]) < 0)
            goto fail;
    if (bump(n, SlotDropped, dropped) < 0 || bump(n, SlotTruncated, truncated) < 0 ||
        bump(spans, span, delivered) < 0 || bump(n, SlotNanos, delivered * took) < 0)
        goto fail;
    return rest;
fail:
    Py_DECREF(rest);
    return NULL;
}

static PyMethodDef Batcher_methods[] = {
    {"serve", (PyCFunction)Batcher_serve, METH_VARARGS,
     "serve(server, qtypes, rcodes, n, spans, autopath) -> [(packet, peer), ...]\n"
     "Wait for queries, answer from server._table and send what the fast path answers, "
     "count it; the rest is returned for Python to answer."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bridge.dns._udpfast.Batcher",
    .tp_basicsize = sizeof(Batcher),
    .tp_dealloc = (destructor)Batcher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batcher(fd, size): serves a blocking UDP socket `size` datagrams at a time.",
    .tp_methods = Batcher_methods,
    .tp_init = (initproc)Batcher_init,
    .tp_new = PyType_GenericNew,
};

/* --- module functions ----------------------------------------------------------------- */

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *gone, *entry, *rotations, *turns;
    Py_ssize_t dropped, truncated, nanos;
    if (!PyArg_ParseTuple(args, "OO!O!O!(nnn)", &gone, &PyType_Type, &entry, &PyType_Type,
                          &rotations, &PyType_Type, &turns, &dropped, &truncated, &nanos))
        return NULL;
    if (dropped < 0 || truncated < 0 || nanos < 0) {
        PyErr_SetString(PyExc_ValueError, "negative slot");
        return NULL;
    }
    Py_XSETREF(Gone, Py_NewRef(gone));
    Py_XSETREF(EntryType, Py_NewRef(entry));
    Py_XSETREF(RotationsType, Py_NewRef(rotations));
    Py_XSETREF(TurnsType, Py_NewRef(turns));
    SlotDropped = dropped;
    SlotTruncated = truncated;
    SlotNanos = nanos;
    Py_RETURN_NONE;
}

static PyObject *answer(PyObject *module, PyObject *args) {
    PyObject *table;
    const char *packet;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Oy#", &table, &packet, &len))
        return NULL;
    if (Gone == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    View view;
    if (view_load(&view, table) < 0)
        return NULL;
    unsigned char *out = PyMem_Malloc(REPLY_MAX);
    if (out == NULL) {
        view_clear(&view);
        return PyErr_NoMemory();
    }
    int qslot = OTHER_QTYPE;
    Py_ssize_t length = answer_one(&view, (const unsigned char *)packet, len, out, REPLY_MAX, &qslot);
    view_clear(&view);
    PyObject *result = NULL;
    if (length > 0)
        result = Py_BuildValue("(y#i)", (const char *)out, length, qslot);
    else if (length == 0)
        result = Py_NewRef(Py_None);
    PyMem_Free(out);
    return result;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(GONE, Entry, Rotations, Turns, (dropped, truncated, nanos)): what respond.py uses "
     "and the Counts.n slots written."},
    {"answer", answer, METH_VARARGS,
     "answer(table, packet) -> (reply, qtype slot) | None: one packet as a batch answers it "
     "(None: handed back to Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_udpfast", "The compiled UDP fast path (see _udpfast.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__udpfast(void) {
    if (PyType_Ready(&BatcherType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Batcher", (PyObject *)&BatcherType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
