/*
 * getpatter.core._audio: the per-frame audio work that would otherwise be Python loops.
 *
 * G.711 mu-law / A-law (ITU-T G.711, bit-exact with CPython's audioop at width 2),
 * int16 <-> float32, gain and mix with saturation, RMS and peak.
 *
 * Conventions (audio.py relies on them):
 *   - Inputs are any object exporting a buffer (bytes, bytearray, memoryview, numpy
 *     arrays). Contiguous buffers are read in place, never copied; only a strided one
 *     (a numpy slice with a step) is first gathered into a private copy. The buffer is
 *     treated as raw bytes in native byte order; audio.py checks numpy dtypes first.
 *   - Sample outputs are new `bytes`, or are written into an optional writable `out`
 *     buffer of exactly the right size, in which case `out` itself is returned. `out` may
 *     be the input itself for gain and mix (same layout), but must not otherwise overlap.
 *   - Every acquired Py_buffer is released on every path.
 *   - Unaligned buffers (e.g. a memoryview slice at an odd offset) are fine: all
 *     multi-byte loads and stores go through memcpy, which the compiler turns into
 *     plain moves.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Above this many input bytes the kernel runs without the GIL (about 32k samples). */
#define NOGIL_BYTES ((Py_ssize_t)1 << 16)

/* ---------------------------------------------------------------- tables ---- */

static int16_t ulaw_dec_table[256];
static int16_t alaw_dec_table[256];
/* mu-law encodes the top 14 bits of a sample: index = (uint16_t)sample >> 2. */
static uint8_t ulaw_enc_table[1 << 14];
/* A-law encodes the top 13 bits of a sample: index = (uint16_t)sample >> 3. */
static uint8_t alaw_enc_table[1 << 13];

/* G.711 mu-law: complement the code, rebuild the biased magnitude, remove the bias. */
static int16_t
ulaw_decode_one(unsigned int code)
{
    unsigned int u = ~code & 0xFFu;
    int exponent = (int)((u >> 4) & 0x07u);
    int magnitude = ((((int)(u & 0x0Fu)) << 3) + 0x84) << exponent;
    return (int16_t)((u & 0x80u) ? (0x84 - magnitude) : (magnitude - 0x84));
}

/* G.711 A-law: undo the even-bit inversion, rebuild the magnitude at mid-step. */
static int16_t
alaw_decode_one(unsigned int code)
{
    unsigned int a = (code ^ 0x55u) & 0xFFu;
    int exponent = (int)((a >> 4) & 0x07u);
    int magnitude = ((int)(a & 0x0Fu)) << 4;
    if (exponent == 0) {
        magnitude += 8;
    }
    else {
        magnitude = (magnitude + 0x108) << (exponent - 1);
    }
    return (int16_t)((a & 0x80u) ? magnitude : -magnitude);
}

/* mu-law of a 14-bit sample (-8192..8191): bias by 33, find the segment, keep 4 bits. */
static uint8_t
ulaw_encode14(int v)
{
    unsigned int mask = 0xFFu;
    int segment = 0;
    if (v < 0) {
        v = -v;
        mask = 0x7Fu;
    }
    v += 33;
    if (v > 0x1FFF) {
        return (uint8_t)(0x7Fu ^ mask);
    }
    while ((v >> (segment + 6)) != 0) {
        segment++;
    }
    return (uint8_t)((((unsigned int)segment << 4) | ((unsigned int)(v >> (segment + 1)) & 0x0Fu))
                     ^ mask);
}

/* A-law of a 13-bit sample (-4096..4095): ones' complement magnitude, segment, 4 bits. */
static uint8_t
alaw_encode13(int v)
{
    unsigned int mask = 0xD5u;
    int segment = 0;
    unsigned int code;
    if (v < 0) {
        v = -v - 1;
        mask = 0x55u;
    }
    while ((v >> (segment + 5)) != 0) {
        segment++;
    }
    code = (unsigned int)segment << 4;
    code |= (unsigned int)(v >> (segment < 2 ? 1 : segment)) & 0x0Fu;
    return (uint8_t)(code ^ mask);
}

static void
build_tables(void)
{
    unsigned int i;
    for (i = 0; i < 256; i++) {
        ulaw_dec_table[i] = ulaw_decode_one(i);
        alaw_dec_table[i] = alaw_decode_one(i);
    }
    /* Index i holds the bit pattern of the sample's top bits; sign-extend it back. */
    for (i = 0; i < (1u << 14); i++) {
        ulaw_enc_table[i] = ulaw_encode14(i < (1u << 13) ? (int)i : (int)i - (1 << 14));
    }
    for (i = 0; i < (1u << 13); i++) {
        alaw_enc_table[i] = alaw_encode13(i < (1u << 12) ? (int)i : (int)i - (1 << 13));
    }
}

/* --------------------------------------------------------------- kernels ---- */

static inline int16_t
load_i16(const unsigned char *p)
{
    int16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint16_t
load_u16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void
store_i16(unsigned char *p, int16_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline float
load_f32(const unsigned char *p)
{
    float v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void
store_f32(unsigned char *p, float v)
{
    memcpy(p, &v, sizeof v);
}

/* Round half to even without a libm call. Valid for |v| < 2**22 (float) / 2**51 (double),
 * which holds because callers clamp to the int16 range first. Needs strict IEEE evaluation
 * (FLT_EVAL_METHOD == 0, no -ffast-math); otherwise fall back to libm. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0 && !defined(__FAST_MATH__)
static inline float
round_even_f(float v)
{
    return (v + 12582912.0f) - 12582912.0f; /* 1.5 * 2**23 */
}
static inline double
round_even_d(double v)
{
    return (v + 6755399441055744.0) - 6755399441055744.0; /* 1.5 * 2**52 */
}
#else
static inline float
round_even_f(float v)
{
    return rintf(v);
}
static inline double
round_even_d(double v)
{
    return rint(v);
}
#endif

typedef void (*kernel_fn)(const unsigned char *in, Py_ssize_t n, unsigned char *out,
                          const void *ctx);

static void
k_ulaw_decode(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        store_i16(out + 2 * i, ulaw_dec_table[in[i]]);
    }
}

static void
k_alaw_decode(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        store_i16(out + 2 * i, alaw_dec_table[in[i]]);
    }
}

static void
k_ulaw_encode(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = ulaw_enc_table[load_u16(in + 2 * i) >> 2];
    }
}

static void
k_alaw_encode(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = alaw_enc_table[load_u16(in + 2 * i) >> 3];
    }
}

static void
k_int16_to_float32(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    /* Multiplying by 2**-15 is exact, so this equals x / 32768 bit for bit. */
    for (Py_ssize_t i = 0; i < n; i++) {
        store_f32(out + 4 * i, (float)load_i16(in + 2 * i) * (1.0f / 32768.0f));
    }
}

static void
k_float32_to_int16(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    (void)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = load_f32(in + 4 * i) * 32768.0f; /* exact scaling by a power of two */
        if (v != v) {
            v = 0.0f; /* NaN: silence rather than an undefined cast */
        }
        else if (v > 32767.0f) {
            v = 32767.0f;
        }
        else if (v < -32768.0f) {
            v = -32768.0f;
        }
        store_i16(out + 2 * i, (int16_t)round_even_f(v));
    }
}

static void
k_gain(const unsigned char *in, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    const double gain = *(const double *)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = (double)load_i16(in + 2 * i) * gain;
        if (v > 32767.0) {
            v = 32767.0;
        }
        else if (v < -32768.0) {
            v = -32768.0;
        }
        store_i16(out + 2 * i, (int16_t)round_even_d(v));
    }
}

static void
k_mix(const unsigned char *a, Py_ssize_t n, unsigned char *out, const void *ctx)
{
    const unsigned char *b = (const unsigned char *)ctx;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t v = (int32_t)load_i16(a + 2 * i) + (int32_t)load_i16(b + 2 * i);
        if (v > 32767) {
            v = 32767;
        }
        else if (v < -32768) {
            v = -32768;
        }
        store_i16(out + 2 * i, (int16_t)v);
    }
}

/* --------------------------------------------------------------- plumbing ---- */

/* A read-only input: a view of the caller's buffer, read in place when it is contiguous
 * (the normal case), or a private contiguous copy when it is strided (e.g. a numpy slice
 * with a step). Always pair get_input() with release_input(). */
typedef struct {
    Py_buffer view;
    void *copy;
    const unsigned char *data;
    Py_ssize_t len;
} input_t;

static void
release_input(input_t *in)
{
    PyBuffer_Release(&in->view);
    if (in->copy != NULL) {
        PyMem_Free(in->copy);
        in->copy = NULL;
    }
}

/* Acquire `obj` as bytes whose length is a multiple of `item`. */
static int
get_input(PyObject *obj, input_t *in, Py_ssize_t item, const char *func, const char *what)
{
    in->copy = NULL;
    if (PyObject_GetBuffer(obj, &in->view, PyBUF_SIMPLE) == 0) {
        in->data = (const unsigned char *)in->view.buf;
        in->len = in->view.len;
    }
    else {
        /* Maybe strided: ask again for a full description, keeping the first error in
         * case this is not a buffer at all (it is the simpler message). */
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *first = PyErr_GetRaisedException();
        if (PyObject_GetBuffer(obj, &in->view, PyBUF_FULL_RO) < 0) {
            PyErr_Clear();
            PyErr_SetRaisedException(first);
            return -1;
        }
        Py_XDECREF(first);
#else
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyObject_GetBuffer(obj, &in->view, PyBUF_FULL_RO) < 0) {
            PyErr_Clear();
            PyErr_Restore(type, value, traceback);
            return -1;
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
#endif
        in->copy = PyMem_Malloc(in->view.len > 0 ? (size_t)in->view.len : 1);
        if (in->copy == NULL) {
            PyErr_NoMemory();
            release_input(in);
            return -1;
        }
        if (PyBuffer_ToContiguous(in->copy, &in->view, in->view.len, 'C') < 0) {
            release_input(in);
            return -1;
        }
        in->data = (const unsigned char *)in->copy;
        in->len = in->view.len;
    }
    if (in->len % item != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s has %zd bytes, not a whole number of %zd-byte samples", func,
                     what, in->len, item);
        release_input(in);
        return -1;
    }
    return 0;
}

/* Make the result: a new bytes object, or `out_arg` checked for size and writability.
 * On success *dst points at `nbytes` writable bytes; `out_view->obj` is non-NULL only
 * when a view of `out_arg` is held and must be released by the caller. */
static PyObject *
make_output(PyObject *out_arg, Py_ssize_t nbytes, const char *func, Py_buffer *out_view,
            unsigned char **dst)
{
    out_view->obj = NULL;
    if (out_arg == NULL || out_arg == Py_None) {
        PyObject *res = PyBytes_FromStringAndSize(NULL, nbytes);
        if (res != NULL) {
            *dst = (unsigned char *)PyBytes_AS_STRING(res);
        }
        return res;
    }
    if (PyObject_GetBuffer(out_arg, out_view, PyBUF_WRITABLE) < 0) {
        out_view->obj = NULL;
        return NULL;
    }
    if (out_view->len != nbytes) {
        PyErr_Format(PyExc_ValueError, "%s: out has %zd bytes, expected %zd", func,
                     out_view->len, nbytes);
        PyBuffer_Release(out_view);
        out_view->obj = NULL;
        return NULL;
    }
    *dst = (unsigned char *)out_view->buf;
    Py_INCREF(out_arg);
    return out_arg;
}

static void
run_kernel(kernel_fn kernel, const unsigned char *in, Py_ssize_t n, unsigned char *out,
           const void *ctx, Py_ssize_t work_bytes)
{
    if (work_bytes >= NOGIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        kernel(in, n, out, ctx);
        Py_END_ALLOW_THREADS
    }
    else {
        kernel(in, n, out, ctx);
    }
}

static int
check_nargs(const char *func, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max)
{
    if (nargs < min || nargs > max) {
        if (min == max) {
            PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", func,
                         min, nargs);
        }
        else {
            PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", func,
                         min, max, nargs);
        }
        return -1;
    }
    return 0;
}

/* One input buffer of `in_item`-byte items -> one output of `out_item`-byte items. */
static PyObject *
unary(const char *func, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t in_item,
      Py_ssize_t out_item, kernel_fn kernel)
{
    input_t in;
    Py_buffer outv;
    unsigned char *dst = NULL;
    PyObject *res;
    Py_ssize_t n;

    if (check_nargs(func, nargs, 1, 2) < 0) {
        return NULL;
    }
    if (get_input(args[0], &in, in_item, func, "input") < 0) {
        return NULL;
    }
    n = in.len / in_item;
    if (n > PY_SSIZE_T_MAX / out_item) {
        release_input(&in);
        return PyErr_NoMemory();
    }
    res = make_output(nargs > 1 ? args[1] : NULL, n * out_item, func, &outv, &dst);
    if (res != NULL) {
        run_kernel(kernel, in.data, n, dst, NULL, in.len);
        if (outv.obj != NULL) {
            PyBuffer_Release(&outv);
        }
    }
    release_input(&in);
    return res;
}

/* ---------------------------------------------------------- Python methods ---- */

static PyObject *
py_ulaw_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("ulaw_decode", args, nargs, 1, 2, k_ulaw_decode);
}

static PyObject *
py_alaw_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("alaw_decode", args, nargs, 1, 2, k_alaw_decode);
}

static PyObject *
py_ulaw_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("ulaw_encode", args, nargs, 2, 1, k_ulaw_encode);
}

static PyObject *
py_alaw_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("alaw_encode", args, nargs, 2, 1, k_alaw_encode);
}

static PyObject *
py_int16_to_float32(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("int16_to_float32", args, nargs, 2, 4, k_int16_to_float32);
}

static PyObject *
py_float32_to_int16(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return unary("float32_to_int16", args, nargs, 4, 2, k_float32_to_int16);
}

static PyObject *
py_apply_gain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    input_t in;
    Py_buffer outv;
    unsigned char *dst = NULL;
    PyObject *res;
    double gain;
    Py_ssize_t n;
    (void)self;

    if (check_nargs("apply_gain", nargs, 2, 3) < 0) {
        return NULL;
    }
    gain = PyFloat_AsDouble(args[1]);
    if (gain == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!isfinite(gain)) {
        PyErr_SetString(PyExc_ValueError, "apply_gain: gain must be finite");
        return NULL;
    }
    if (get_input(args[0], &in, 2, "apply_gain", "input") < 0) {
        return NULL;
    }
    n = in.len / 2;
    res = make_output(nargs > 2 ? args[2] : NULL, in.len, "apply_gain", &outv, &dst);
    if (res != NULL) {
        run_kernel(k_gain, in.data, n, dst, &gain, in.len);
        if (outv.obj != NULL) {
            PyBuffer_Release(&outv);
        }
    }
    release_input(&in);
    return res;
}

static PyObject *
py_mix(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    input_t a, b;
    Py_buffer outv;
    unsigned char *dst = NULL;
    PyObject *res = NULL;
    (void)self;

    if (check_nargs("mix", nargs, 2, 3) < 0) {
        return NULL;
    }
    if (get_input(args[0], &a, 2, "mix", "a") < 0) {
        return NULL;
    }
    if (get_input(args[1], &b, 2, "mix", "b") < 0) {
        release_input(&a);
        return NULL;
    }
    if (a.len != b.len) {
        PyErr_Format(PyExc_ValueError, "mix: a has %zd samples but b has %zd", a.len / 2,
                     b.len / 2);
    }
    else {
        res = make_output(nargs > 2 ? args[2] : NULL, a.len, "mix", &outv, &dst);
        if (res != NULL) {
            run_kernel(k_mix, a.data, a.len / 2, dst, b.data, a.len);
            if (outv.obj != NULL) {
                PyBuffer_Release(&outv);
            }
        }
    }
    release_input(&b);
    release_input(&a);
    return res;
}

static PyObject *
py_rms(PyObject *self, PyObject *arg)
{
    input_t in;
    const unsigned char *p;
    uint64_t sum = 0;
    Py_ssize_t n;
    (void)self;

    if (get_input(arg, &in, 2, "rms", "input") < 0) {
        return NULL;
    }
    p = in.data;
    n = in.len / 2;
    /* Exact integer sum of squares (2**30 per sample), so the result does not depend on
     * summation order; the numpy fallback does the same and agrees bit for bit. */
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t x = load_i16(p + 2 * i);
        sum += (uint64_t)(int64_t)(x * x);
    }
    release_input(&in);
    if (n == 0) {
        return PyFloat_FromDouble(0.0);
    }
    return PyFloat_FromDouble(sqrt((double)sum / (double)n));
}

static PyObject *
py_peak(PyObject *self, PyObject *arg)
{
    input_t in;
    const unsigned char *p;
    int32_t lo = 0, hi = 0;
    Py_ssize_t n;
    (void)self;

    if (get_input(arg, &in, 2, "peak", "input") < 0) {
        return NULL;
    }
    p = in.data;
    n = in.len / 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t x = load_i16(p + 2 * i);
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    release_input(&in);
    return PyLong_FromLong((long)(-lo > hi ? -lo : hi));
}

PyDoc_STRVAR(doc_ulaw_decode, "ulaw_decode(data, out=None) -> bytes\n\n"
                              "G.711 mu-law codes (1 byte each) to native int16 PCM.");
PyDoc_STRVAR(doc_alaw_decode, "alaw_decode(data, out=None) -> bytes\n\n"
                              "G.711 A-law codes (1 byte each) to native int16 PCM.");
PyDoc_STRVAR(doc_ulaw_encode, "ulaw_encode(samples, out=None) -> bytes\n\n"
                              "Native int16 PCM to G.711 mu-law codes.");
PyDoc_STRVAR(doc_alaw_encode, "alaw_encode(samples, out=None) -> bytes\n\n"
                              "Native int16 PCM to G.711 A-law codes.");
PyDoc_STRVAR(doc_int16_to_float32, "int16_to_float32(samples, out=None) -> bytes\n\n"
                                   "int16 PCM to float32 x / 32768.");
PyDoc_STRVAR(doc_float32_to_int16,
             "float32_to_int16(samples, out=None) -> bytes\n\n"
             "float32 to int16: x * 32768, saturated, rounded half to even; NaN -> 0.");
PyDoc_STRVAR(doc_apply_gain,
             "apply_gain(samples, gain, out=None) -> bytes\n\n"
             "int16 * gain (double), saturated, rounded half to even. gain must be finite.");
PyDoc_STRVAR(doc_mix, "mix(a, b, out=None) -> bytes\n\n"
                      "Saturating sum of two equal-length int16 buffers.");
PyDoc_STRVAR(doc_rms, "rms(samples) -> float\n\nRoot mean square of int16 samples (0.0 if empty).");
PyDoc_STRVAR(doc_peak, "peak(samples) -> int\n\nLargest |sample| of int16 samples (0 if empty).");

static PyMethodDef audio_methods[] = {
    {"ulaw_decode", (PyCFunction)(void (*)(void))py_ulaw_decode, METH_FASTCALL, doc_ulaw_decode},
    {"alaw_decode", (PyCFunction)(void (*)(void))py_alaw_decode, METH_FASTCALL, doc_alaw_decode},
    {"ulaw_encode", (PyCFunction)(void (*)(void))py_ulaw_encode, METH_FASTCALL, doc_ulaw_encode},
    {"alaw_encode", (PyCFunction)(void (*)(void))py_alaw_encode, METH_FASTCALL, doc_alaw_encode},
    {"int16_to_float32", (PyCFunction)(void (*)(void))py_int16_to_float32, METH_FASTCALL,
     doc_int16_to_float32},
    {"float32_to_int16", (PyCFunction)(void (*)(void))py_float32_to_int16, METH_FASTCALL,
     doc_float32_to_int16},
    {"apply_gain", (PyCFunction)(void (*)(void))py_apply_gain, METH_FASTCALL, doc_apply_gain},
    {"mix", (PyCFunction)(void (*)(void))py_mix, METH_FASTCALL, doc_mix},
    {"rms", py_rms, METH_O, doc_rms},
    {"peak", py_peak, METH_O, doc_peak},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc, "C audio core of getpatter: G.711, int16/float32, gain, mix, RMS, peak.\n\n"
                         "Use getpatter.core.audio, which wraps these and has a numpy fallback.");

static int
audio_exec(PyObject *module)
{
    (void)module;
    build_tables(); /* idempotent, pure data: safe if several interpreters load us */
    return 0;
}

static PyModuleDef_Slot audio_slots[] = {
    {Py_mod_exec, (void *)audio_exec},
    {0, NULL},
};

static struct PyModuleDef audio_module = {
    PyModuleDef_HEAD_INIT,
    "getpatter.core._audio",
    module_doc,
    0,
    audio_methods,
    audio_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__audio(void)
{
    return PyModuleDef_Init(&audio_module);
}
