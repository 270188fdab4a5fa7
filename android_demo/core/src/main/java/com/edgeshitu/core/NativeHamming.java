package com.edgeshitu.core;

import java.nio.ByteBuffer;

/** The C Hamming kernel (runtimes/native/eshamming.c) through JNI: libeshamming_jni.so. */
public final class NativeHamming {
    private NativeHamming() {}

    private static volatile boolean loaded = false;
    private static String why = "not loaded";

    /** Loads the library from a file (host) or by name (Android: System.loadLibrary). */
    public static synchronized boolean load(String pathOrName) {
        if (loaded) return true;
        try {
            if (pathOrName.indexOf('/') >= 0) System.load(pathOrName); else System.loadLibrary(pathOrName);
            if (abi() != 2) { why = "ABI " + abi() + ", expected 2"; return false; }
            loaded = true;
        } catch (Throwable t) {
            why = t.toString();
        }
        return loaded;
    }

    public static boolean available() {
        return loaded;
    }

    public static String whyNot() {
        return why;
    }

    static native int abi();

    static native String kernel();

    /** flock(2) of an open file (LOCK_EX = 2, LOCK_UN = 8): 0 or -errno. */
    static native int flock(java.io.FileDescriptor fd, int op);

    static native int topk(ByteBuffer planes, long offset, long count, long stride, int words, long[] queries, int nq,
                           byte[] deleted, int k, int[] outDist, long[] outRows);
}
