package com.edgeshitu.core;

import java.nio.ByteBuffer;

/**
 * Exact top-k Hamming search over word-planar codes: the project's C kernel through JNI when
 * {@code libeshamming_jni.so} is loaded ({@link NativeHamming}), else pure Java. Both order
 * results by (distance, row) and skip deleted rows, so they return the same lists.
 */
public final class Hamming {
    private Hamming() {}

    static volatile boolean forceJava = false;

    /** For tests: true searches in Java even when the native kernel is loaded. */
    public static void forceJava(boolean on) {
        forceJava = on;
    }

    public static String kernelName() {
        return !forceJava && NativeHamming.available() ? "native-" + NativeHamming.kernel() : "java";
    }

    /** planes: LE u64 words, word w of row r at (w * stride + r) * 8; results padded with -1. */
    public static void topk(ByteBuffer planes, int count, int stride, int words, long[] queries, int nq, byte[] deleted, int k,
                            int[][] dist, long[][] rows) {
        if (k <= 0) {
            for (int i = 0; i < nq; i++) { dist[i] = new int[0]; rows[i] = new long[0]; }
            return;
        }
        if (!forceJava && NativeHamming.available() && planes.isDirect()) {
            int[] d = new int[nq * k];
            long[] r = new long[nq * k];
            int rc = NativeHamming.topk(planes, 0, count, stride, words, queries, nq, deleted, k, d, r);
            if (rc == 0) {
                for (int i = 0; i < nq; i++) {
                    dist[i] = new int[k];
                    rows[i] = new long[k];
                    System.arraycopy(d, i * k, dist[i], 0, k);
                    System.arraycopy(r, i * k, rows[i], 0, k);
                }
                return;
            }
        }
        for (int i = 0; i < nq; i++) {
            int[] bd = new int[k];
            long[] br = new long[k];
            java.util.Arrays.fill(bd, -1);
            java.util.Arrays.fill(br, -1);
            int filled = 0;
            int worst = Integer.MAX_VALUE;
            for (int row = 0; row < count; row++) {
                int dd = 0;
                for (int w = 0; w < words; w++) dd += Long.bitCount(planes.getLong((w * stride + row) * 8) ^ queries[i * words + w]);
                if (filled == k && dd >= worst) continue;
                if (deleted != null && ((deleted[row >> 3] >> (row & 7)) & 1) != 0) continue;
                int pos = filled < k ? filled : k - 1;
                while (pos > 0 && bd[pos - 1] > dd) { // strictly greater: an equal distance keeps the older row first
                    bd[pos] = bd[pos - 1];
                    br[pos] = br[pos - 1];
                    pos--;
                }
                bd[pos] = dd;
                br[pos] = row;
                if (filled < k) filled++;
                if (filled == k) worst = bd[k - 1];
            }
            dist[i] = bd;
            rows[i] = br;
        }
    }
}
