/* JNI glue of the project's Hamming kernel (runtimes/native/eshamming.c) for
 * com.edgeshitu.core.NativeHamming. Freestanding like the kernel: built into one library with it
 * (libeshamming_jni.so) for the host JVM and for Android's three ABIs without the NDK. */
#include <jni.h>
#include <stddef.h>
#include <stdint.h>

#include "eshamming.h"

JNIEXPORT jint JNICALL Java_com_edgeshitu_core_NativeHamming_abi(JNIEnv *env, jclass cls) {
    (void)env; (void)cls;
    return es_hamming_abi();
}

JNIEXPORT jstring JNICALL Java_com_edgeshitu_core_NativeHamming_kernel(JNIEnv *env, jclass cls) {
    (void)cls;
    return (*env)->NewStringUTF(env, es_hamming_kernel());
}

/* planes: a direct buffer (a mapped index file or an in-memory copy), the CODES section at
 * byte offset `offset`, 8-byte aligned; deleted: null or the DELETED bitmap. */
JNIEXPORT jint JNICALL Java_com_edgeshitu_core_NativeHamming_topk(JNIEnv *env, jclass cls, jobject planes, jlong offset,
                                                                  jlong count, jlong stride, jint words,
                                                                  jlongArray queries, jint nq, jbyteArray deleted,
                                                                  jint k, jintArray out_dist, jlongArray out_rows) {
    (void)cls;
    uint8_t *base = (uint8_t *)(*env)->GetDirectBufferAddress(env, planes);
    if (!base || (offset & 7) || ((uintptr_t)(base + offset) & 7)) return -2;
    jlong *q = (jlong *)(*env)->GetPrimitiveArrayCritical(env, queries, NULL);
    jbyte *del = deleted ? (jbyte *)(*env)->GetPrimitiveArrayCritical(env, deleted, NULL) : NULL;
    jint *od = (jint *)(*env)->GetPrimitiveArrayCritical(env, out_dist, NULL);
    jlong *orow = (jlong *)(*env)->GetPrimitiveArrayCritical(env, out_rows, NULL);
    int rc = -1;
    if (q && od && orow && (!deleted || del))
        rc = es_hamming_topk((const uint64_t *)(base + offset), (uint64_t)count, (uint64_t)stride, (uint32_t)words,
                             (const uint64_t *)q, (uint64_t)nq, (const uint8_t *)del, (uint32_t)k, (int32_t *)od,
                             (int64_t *)orow);
    if (orow) (*env)->ReleasePrimitiveArrayCritical(env, out_rows, orow, 0);
    if (od) (*env)->ReleasePrimitiveArrayCritical(env, out_dist, od, 0);
    if (del) (*env)->ReleasePrimitiveArrayCritical(env, deleted, del, JNI_ABORT);
    if (q) (*env)->ReleasePrimitiveArrayCritical(env, queries, q, JNI_ABORT);
    return rc;
}

/* flock(2) on a java.io.FileDescriptor, for the index's lock file: the Python writers serialise
 * with flock, which Java's FileChannel.lock (fcntl) does not exclude on Linux. A raw system call
 * (the library links no libc); the descriptor is read from the object's private int field (JNI
 * ignores access control): "fd" on OpenJDK, "descriptor" on Android. Returns 0 or -errno. */
static long raw_flock(long fd, long op) {
    long ret;
#if defined(__x86_64__)
    __asm__ volatile("syscall" : "=a"(ret) : "0"(73L), "D"(fd), "S"(op) : "rcx", "r11", "memory");
#elif defined(__aarch64__) || defined(__arm__)
    /* svc #0: number in x8 / r7 (flock is 32 / 143), arguments and result in x0,x1 / r0,r1 */
#if defined(__aarch64__)
#define ES_SVC_NR "x8"
#define ES_SVC_A0 "x0"
#define ES_SVC_A1 "x1"
#define ES_NR_FLOCK 32
#else
#define ES_SVC_NR "r7"
#define ES_SVC_A0 "r0"
#define ES_SVC_A1 "r1"
#define ES_NR_FLOCK 143
#endif
    register long nr __asm__(ES_SVC_NR) = ES_NR_FLOCK;
    register long a0 __asm__(ES_SVC_A0) = fd;
    register long a1 __asm__(ES_SVC_A1) = op;
    __asm__ volatile("svc #0" : "+r"(a0) : "r"(nr), "r"(a1) : "memory");
    ret = a0;
#else
    (void)fd; (void)op;
    ret = -38; /* ENOSYS */
#endif
    return ret;
}

JNIEXPORT jint JNICALL Java_com_edgeshitu_core_NativeHamming_flock(JNIEnv *env, jclass cls, jobject fdobj, jint op) {
    (void)cls;
    jclass c = (*env)->GetObjectClass(env, fdobj);
    jfieldID f = (*env)->GetFieldID(env, c, "fd", "I");
    if (!f) {
        (*env)->ExceptionClear(env);
        f = (*env)->GetFieldID(env, c, "descriptor", "I");
        if (!f) { (*env)->ExceptionClear(env); return -9; /* EBADF */ }
    }
    jint fd = (*env)->GetIntField(env, fdobj, f);
    long r;
    do r = raw_flock(fd, op); while (r == -4); /* EINTR */
    return (jint)r;
}
