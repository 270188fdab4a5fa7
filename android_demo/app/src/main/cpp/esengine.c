/* A small inference engine over LiteRT's C API, for the JVM (JNI class com.edgeshitu.core.LiteRt).
 *
 * The same source runs on a phone (against libLiteRt.so from LiteRT's Maven package, which the
 * app ships) and on the host JVM in the tests (against ai_edge_litert/libLiteRt.so from the
 * ai-edge-litert wheel): LiteRT is opened with dlopen and its functions looked up with dlsym,
 * so nothing of it is needed at build time. Float32 inputs and outputs (what every bundle
 * artifact declares); each model owns managed tensor buffers from its buffer requirements
 * (aligned by LiteRT), filled and read through JNI array copies under lock.
 *
 * No libc is used beyond dlopen/dlsym/dlerror (no allocation: a fixed table of models), so the
 * Android builds need no NDK: see android_demo/README.md. Errors are status codes; the Java side
 * turns them into one-line messages. */
#include <jni.h>
#include <stddef.h>
#include <stdint.h>

#include "litert_decls.h"

#if defined(__ANDROID__)
/* bionic's dlfcn.h values; linked against the system's libdl.so at run time */
void *dlopen(const char *filename, int flags);
void *dlsym(void *handle, const char *symbol);
const char *dlerror(void);
#if defined(__LP64__)
#define ES_RTLD_NOW 2
#else
#define ES_RTLD_NOW 0
#endif
#else
#include <dlfcn.h>
#define ES_RTLD_NOW RTLD_NOW
#endif

#define ES_MAX_MODELS 16
#define ES_MAX_IO 8

/* stages reported with a failing status (LiteRt.java turns them into messages) */
enum { ST_LOAD = 1, ST_ENV, ST_MODEL, ST_SIGNATURE, ST_TENSOR, ST_TYPE, ST_OPTIONS, ST_COMPILE,
       ST_REQUIREMENTS, ST_BUFFER, ST_SLOTS, ST_DTYPE, ST_IO, ST_LOCK, ST_RUN, ST_SIZE };

static struct {
    int loaded;
    fn_create_environment create_environment;
    fn_destroy_environment destroy_environment;
    fn_create_model_from_file create_model_from_file;
    fn_destroy_model destroy_model;
    fn_get_model_signature get_model_signature;
    fn_get_num_signature_io num_inputs, num_outputs;
    fn_get_signature_tensor input_tensor, output_tensor;
    fn_get_signature_name input_name, output_name;
    fn_get_ranked_tensor_type ranked_type;
    fn_create_options create_options;
    fn_destroy_options destroy_options;
    fn_set_options_hw set_hw;
    fn_create_opaque_options create_opaque;
    fn_add_opaque_options add_opaque;
    fn_create_compiled_model create_compiled;
    fn_destroy_compiled_model destroy_compiled;
    fn_get_buffer_requirements input_req, output_req;
    fn_create_managed_buffer_from_requirements managed_buffer;
    fn_lock_buffer lock;
    fn_unlock_buffer unlock;
    fn_destroy_buffer destroy_buffer;
    fn_run_compiled_model run;
} lrt;

typedef struct {
    int used;
    LiteRtEnvironment env;
    LiteRtModel model;
    LiteRtOptions options;
    LiteRtCompiledModel compiled;
    LiteRtSignature signature;
    int n_in, n_out;
    es_litert_ranked_type in_type[ES_MAX_IO], out_type[ES_MAX_IO];
    const char *in_name[ES_MAX_IO], *out_name[ES_MAX_IO];
    LiteRtTensorBuffer in_buf[ES_MAX_IO], out_buf[ES_MAX_IO];
    size_t in_bytes[ES_MAX_IO], out_bytes[ES_MAX_IO];
    char threads_payload[32];
} es_model;

static es_model models[ES_MAX_MODELS];

/* freestanding: the compiler may emit calls to these for struct copies */
void *memset(void *d, int c, size_t n) __attribute__((visibility("hidden")));
void *memset(void *d, int c, size_t n) {
    volatile unsigned char *p = (volatile unsigned char *)d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t n) __attribute__((visibility("hidden")));
void *memcpy(void *d, const void *s, size_t n) {
    volatile unsigned char *p = (volatile unsigned char *)d;
    const unsigned char *q = (const unsigned char *)s;
    while (n--) *p++ = *q++;
    return d;
}

static void keep_payload(void *p) { (void)p; } /* the payload lives in the model's slot */

static void set_status(JNIEnv *env, jintArray out, int status, int stage) {
    jint v[2] = {status, stage};
    if (out) (*env)->SetIntArrayRegion(env, out, 0, 2, v);
}

#define SYM(field, name)                              \
    do {                                              \
        *(void **)&lrt.field = dlsym(h, name);        \
        if (!lrt.field) return (*env)->NewStringUTF(env, "missing symbol " name); \
    } while (0)

/* Loads LiteRT; returns null, or what went wrong. */
JNIEXPORT jstring JNICALL Java_com_edgeshitu_core_LiteRt_nativeLoad(JNIEnv *env, jclass cls, jstring jpath) {
    (void)cls;
    if (lrt.loaded) return NULL;
    const char *path = (*env)->GetStringUTFChars(env, jpath, NULL);
    void *h = dlopen(path, ES_RTLD_NOW);
    (*env)->ReleaseStringUTFChars(env, jpath, path);
    if (!h) {
        const char *e = dlerror();
        return (*env)->NewStringUTF(env, e ? e : "dlopen failed");
    }
    SYM(create_environment, "LiteRtCreateEnvironment");
    SYM(destroy_environment, "LiteRtDestroyEnvironment");
    SYM(create_model_from_file, "LiteRtCreateModelFromFile");
    SYM(destroy_model, "LiteRtDestroyModel");
    SYM(get_model_signature, "LiteRtGetModelSignature");
    SYM(num_inputs, "LiteRtGetNumSignatureInputs");
    SYM(num_outputs, "LiteRtGetNumSignatureOutputs");
    SYM(input_tensor, "LiteRtGetSignatureInputTensorByIndex");
    SYM(output_tensor, "LiteRtGetSignatureOutputTensorByIndex");
    SYM(input_name, "LiteRtGetSignatureInputName");
    SYM(output_name, "LiteRtGetSignatureOutputName");
    SYM(ranked_type, "LiteRtGetRankedTensorType");
    SYM(create_options, "LiteRtCreateOptions");
    SYM(destroy_options, "LiteRtDestroyOptions");
    SYM(set_hw, "LiteRtSetOptionsHardwareAccelerators");
    SYM(create_opaque, "LiteRtCreateOpaqueOptions");
    SYM(add_opaque, "LiteRtAddOpaqueOptions");
    SYM(create_compiled, "LiteRtCreateCompiledModel");
    SYM(destroy_compiled, "LiteRtDestroyCompiledModel");
    SYM(input_req, "LiteRtGetCompiledModelInputBufferRequirements");
    SYM(output_req, "LiteRtGetCompiledModelOutputBufferRequirements");
    SYM(managed_buffer, "LiteRtCreateManagedTensorBufferFromRequirements");
    SYM(lock, "LiteRtLockTensorBuffer");
    SYM(unlock, "LiteRtUnlockTensorBuffer");
    SYM(destroy_buffer, "LiteRtDestroyTensorBuffer");
    SYM(run, "LiteRtRunCompiledModel");
    lrt.loaded = 1;
    return NULL;
}

static void release(es_model *m) {
    for (int i = 0; i < ES_MAX_IO; i++) {
        if (m->in_buf[i]) lrt.destroy_buffer(m->in_buf[i]);
        if (m->out_buf[i]) lrt.destroy_buffer(m->out_buf[i]);
    }
    if (m->compiled) lrt.destroy_compiled(m->compiled);
    if (m->options) lrt.destroy_options(m->options);
    if (m->model) lrt.destroy_model(m->model);
    if (m->env) lrt.destroy_environment(m->env);
    memset(m, 0, sizeof(*m));
}

static size_t elements(const es_litert_ranked_type *t) {
    size_t n = 1;
    for (unsigned i = 0; i < t->layout.rank; i++) n *= (size_t)(t->layout.dimensions[i] > 0 ? t->layout.dimensions[i] : 1);
    return n;
}

static int write_digits(char *p, int v) { /* no division: armv7-a has no divide instruction and no libgcc here */
    static const int pow10[] = {1000, 100, 10, 1};
    int n = 0;
    for (int i = 0; i < 4; i++) {
        int d = 0;
        while (v >= pow10[i]) { v -= pow10[i]; d++; }
        if (d || n || i == 3) p[n++] = (char)('0' + d);
    }
    return n;
}

/* Opens a .tflite on the CPU (XNNPACK, `threads` threads). Returns a handle > 0, or 0 with
 * status[0] = LiteRT status, status[1] = stage. */
JNIEXPORT jint JNICALL Java_com_edgeshitu_core_LiteRt_nativeOpen(JNIEnv *env, jclass cls, jstring jpath, jint threads,
                                                                 jintArray status) {
    (void)cls;
    if (!lrt.loaded) { set_status(env, status, -1, ST_LOAD); return 0; }
    int slot = -1;
    for (int i = 0; i < ES_MAX_MODELS; i++)
        if (!models[i].used) { slot = i; break; }
    if (slot < 0) { set_status(env, status, -1, ST_SLOTS); return 0; }
    es_model *m = &models[slot];
    memset(m, 0, sizeof(*m));
    m->used = 1;
    int st, stage;
#define TRY(call, stg) do { stage = (stg); if ((st = (call)) != 0) goto fail; } while (0)
    TRY(lrt.create_environment(0, NULL, &m->env), ST_ENV);
    const char *path = (*env)->GetStringUTFChars(env, jpath, NULL);
    st = lrt.create_model_from_file(m->env, path, &m->model);
    (*env)->ReleaseStringUTFChars(env, jpath, path);
    stage = ST_MODEL;
    if (st) goto fail;
    TRY(lrt.get_model_signature(m->model, 0, &m->signature), ST_SIGNATURE);
    LiteRtParamIndex ni = 0, no = 0;
    TRY(lrt.num_inputs(m->signature, &ni), ST_SIGNATURE);
    TRY(lrt.num_outputs(m->signature, &no), ST_SIGNATURE);
    stage = ST_IO;
    if (ni < 1 || no < 1 || ni > ES_MAX_IO || no > ES_MAX_IO) { st = -1; goto fail; }
    m->n_in = (int)ni;
    m->n_out = (int)no;
    for (int i = 0; i < m->n_in + m->n_out; i++) {
        int out = i >= m->n_in, k = out ? i - m->n_in : i;
        LiteRtTensor t;
        TRY(out ? lrt.output_tensor(m->signature, (LiteRtParamIndex)k, &t) : lrt.input_tensor(m->signature, (LiteRtParamIndex)k, &t), ST_TENSOR);
        es_litert_ranked_type *ty = out ? &m->out_type[k] : &m->in_type[k];
        TRY(lrt.ranked_type(t, ty), ST_TYPE);
        stage = ST_DTYPE;
        if (ty->element_type != ES_LITERT_FLOAT32) { st = -1; goto fail; }
        TRY(out ? lrt.output_name(m->signature, (LiteRtParamIndex)k, out ? &m->out_name[k] : &m->in_name[k])
                : lrt.input_name(m->signature, (LiteRtParamIndex)k, &m->in_name[k]), ST_SIGNATURE);
    }
    TRY(lrt.create_options(&m->options), ST_OPTIONS);
    TRY(lrt.set_hw(m->options, ES_LITERT_HW_CPU), ST_OPTIONS);
    if (threads > 0) { /* XNNPACK's thread count: opaque option "xnnpack", payload "num_threads = N\n" */
        static const char key[] = "num_threads = ";
        int n = 0;
        for (; key[n]; n++) m->threads_payload[n] = key[n];
        n += write_digits(m->threads_payload + n, threads > 1024 ? 1024 : (int)threads);
        m->threads_payload[n++] = '\n';
        m->threads_payload[n] = 0;
        LiteRtOpaqueOptions opq;
        TRY(lrt.create_opaque("xnnpack", m->threads_payload, keep_payload, &opq), ST_OPTIONS);
        TRY(lrt.add_opaque(m->options, opq), ST_OPTIONS);
    }
    TRY(lrt.create_compiled(m->env, m->model, m->options, &m->compiled), ST_COMPILE);
    for (int i = 0; i < m->n_in + m->n_out; i++) {
        int out = i >= m->n_in, k = out ? i - m->n_in : i;
        LiteRtTensorBufferRequirements req;
        TRY(out ? lrt.output_req(m->compiled, 0, (LiteRtParamIndex)k, &req) : lrt.input_req(m->compiled, 0, (LiteRtParamIndex)k, &req), ST_REQUIREMENTS);
        TRY(lrt.managed_buffer(m->env, out ? &m->out_type[k] : &m->in_type[k], req, out ? &m->out_buf[k] : &m->in_buf[k]), ST_BUFFER);
        if (out) m->out_bytes[k] = elements(&m->out_type[k]) * 4; else m->in_bytes[k] = elements(&m->in_type[k]) * 4;
    }
#undef TRY
    set_status(env, status, 0, 0);
    return slot + 1;
fail:
    release(m);
    set_status(env, status, st, stage);
    return 0;
}

static es_model *get(jint handle) {
    if (handle < 1 || handle > ES_MAX_MODELS || !models[handle - 1].used) return NULL;
    return &models[handle - 1];
}

JNIEXPORT jint JNICALL Java_com_edgeshitu_core_LiteRt_nativeCount(JNIEnv *env, jclass cls, jint h, jboolean out) {
    (void)env; (void)cls;
    es_model *m = get(h);
    return m ? (out ? m->n_out : m->n_in) : -1;
}

/* the shape of input/output i (dynamic dimensions as written, e.g. -1) */
JNIEXPORT jintArray JNICALL Java_com_edgeshitu_core_LiteRt_nativeShape(JNIEnv *env, jclass cls, jint h, jboolean out,
                                                                       jint i) {
    (void)cls;
    es_model *m = get(h);
    if (!m || i < 0 || i >= (out ? m->n_out : m->n_in)) return NULL;
    const es_litert_ranked_type *t = out ? &m->out_type[i] : &m->in_type[i];
    jint dims[ES_LITERT_MAX_RANK];
    int rank = (int)t->layout.rank;
    for (int d = 0; d < rank; d++) dims[d] = t->layout.dimensions[d];
    jintArray a = (*env)->NewIntArray(env, rank);
    if (a) (*env)->SetIntArrayRegion(env, a, 0, rank, dims);
    return a;
}

JNIEXPORT jstring JNICALL Java_com_edgeshitu_core_LiteRt_nativeName(JNIEnv *env, jclass cls, jint h, jboolean out,
                                                                    jint i) {
    (void)cls;
    es_model *m = get(h);
    if (!m || i < 0 || i >= (out ? m->n_out : m->n_in)) return NULL;
    const char *n = out ? m->out_name[i] : m->in_name[i];
    return (*env)->NewStringUTF(env, n ? n : "");
}

/* inputs[i] -> input buffer i, run, output buffer j -> outputs[j]. Arrays must hold exactly the
 * tensor's element count. Returns 0, or a LiteRT status with *stage set. */
JNIEXPORT jint JNICALL Java_com_edgeshitu_core_LiteRt_nativeRun(JNIEnv *env, jclass cls, jint h, jobjectArray inputs,
                                                                jobjectArray outputs, jintArray status) {
    (void)cls;
    es_model *m = get(h);
    if (!m) { set_status(env, status, -1, ST_SLOTS); return -1; }
    if ((*env)->GetArrayLength(env, inputs) != m->n_in || (*env)->GetArrayLength(env, outputs) != m->n_out) {
        set_status(env, status, -1, ST_IO);
        return -1;
    }
    for (int i = 0; i < m->n_in + m->n_out; i++) {
        int out = i >= m->n_in, k = out ? i - m->n_in : i;
        jfloatArray a = (jfloatArray)(*env)->GetObjectArrayElement(env, out ? outputs : inputs, k);
        size_t want = (out ? m->out_bytes[k] : m->in_bytes[k]) / 4;
        if (!a || (size_t)(*env)->GetArrayLength(env, a) != want) { set_status(env, status, -1, ST_SIZE); return -1; }
        (*env)->DeleteLocalRef(env, a);
    }
    for (int k = 0; k < m->n_in; k++) {
        void *p = NULL;
        int st = lrt.lock(m->in_buf[k], &p, ES_LITERT_LOCK_WRITE);
        if (st) { set_status(env, status, st, ST_LOCK); return st; }
        jfloatArray a = (jfloatArray)(*env)->GetObjectArrayElement(env, inputs, k);
        (*env)->GetFloatArrayRegion(env, a, 0, (jsize)(m->in_bytes[k] / 4), (jfloat *)p);
        (*env)->DeleteLocalRef(env, a);
        lrt.unlock(m->in_buf[k]);
    }
    int st = lrt.run(m->compiled, 0, (size_t)m->n_in, m->in_buf, (size_t)m->n_out, m->out_buf);
    if (st) { set_status(env, status, st, ST_RUN); return st; }
    for (int k = 0; k < m->n_out; k++) {
        void *p = NULL;
        st = lrt.lock(m->out_buf[k], &p, ES_LITERT_LOCK_READ);
        if (st) { set_status(env, status, st, ST_LOCK); return st; }
        jfloatArray a = (jfloatArray)(*env)->GetObjectArrayElement(env, outputs, k);
        (*env)->SetFloatArrayRegion(env, a, 0, (jsize)(m->out_bytes[k] / 4), (const jfloat *)p);
        (*env)->DeleteLocalRef(env, a);
        lrt.unlock(m->out_buf[k]);
    }
    set_status(env, status, 0, 0);
    return 0;
}

JNIEXPORT void JNICALL Java_com_edgeshitu_core_LiteRt_nativeClose(JNIEnv *env, jclass cls, jint h) {
    (void)env; (void)cls;
    es_model *m = get(h);
    if (m) release(m);
}
