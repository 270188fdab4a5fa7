package com.edgeshitu.core;

/**
 * {@code cv2.resize} for uint8 RGB images, the arithmetic of edge_shitu/preprocess.py's numpy
 * re-implementation (same tap positions and float32 weights, same accumulation order, rint,
 * clip): the Java output is byte-identical to the Python runtime's numpy path, and within one
 * grey level of OpenCV itself.
 */
public final class Resize {
    public static final int NEAREST = 0, LINEAR = 1, CUBIC = 2, AREA = 3, LANCZOS4 = 4;

    private Resize() {}

    public static int interpCode(Object v, String key) {
        if (v instanceof String) {
            String k = ((String) v).trim().toLowerCase(java.util.Locale.ROOT);
            if (k.equals("nearest")) return NEAREST;
            if (k.equals("bilinear") || k.equals("linear")) return LINEAR;
            if (k.equals("bicubic") || k.equals("cubic")) return CUBIC;
            if (k.equals("area")) return AREA;
            if (k.equals("lanczos") || k.equals("lanczos4")) return LANCZOS4;
            throw new EsException(key + ": unknown interpolation \"" + v + "\": use one of area, bicubic, bilinear, "
                    + "cubic, lanczos, lanczos4, linear, nearest");
        }
        if (v instanceof Long && (Long) v >= 0 && (Long) v <= 4) return (int) (long) (Long) v;
        throw new EsException(key + ": unsupported OpenCV interpolation code " + v + ": use 0..4");
    }

    /** Taps: idx[t][d], w[t][d]. */
    static final class Taps {
        final int[][] idx;
        final float[][] w;

        Taps(int n, int dst) {
            idx = new int[n][dst];
            w = new float[n][dst];
        }
    }

    static Taps taps(int dst, int src, double invScale, int interp) {
        double scale = 1.0 / invScale;
        if (interp == NEAREST) {
            Taps t = new Taps(1, dst);
            for (int d = 0; d < dst; d++) {
                t.idx[0][d] = (int) Math.min((long) Math.floor(d * scale), src - 1);
                t.w[0][d] = 1f;
            }
            return t;
        }
        if (interp == AREA) return scale >= 1.0 ? areaTaps(dst, src, scale) : areaAsLinear(dst, src, invScale);
        int n = interp == LINEAR ? 2 : interp == CUBIC ? 4 : 8;
        Taps t = new Taps(n, dst);
        for (int d = 0; d < dst; d++) {
            float f = (float) ((d + 0.5) * scale - 0.5);
            float sf = (float) Math.floor(f);
            float tt = f - sf;
            long s = (long) sf;
            if (interp == LINEAR) {
                if (s < 0) { s = 0; tt = 0f; }
                if (s >= src - 1) { s = src - 1; tt = 0f; }
                t.idx[0][d] = clip(s, src);
                t.idx[1][d] = clip(s + 1, src);
                t.w[0][d] = 1f - tt;
                t.w[1][d] = tt;
            } else if (interp == CUBIC) {
                final float a = -0.75f;
                float x0 = tt + 1f, x1 = tt, x2 = 1f - tt;
                float w0 = ((a * x0 - (float) (5 * -0.75)) * x0 + (float) (8 * -0.75)) * x0 - (float) (4 * -0.75);
                float w1 = ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1;
                float w2 = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1;
                for (int k = 0; k < 4; k++) t.idx[k][d] = clip(s - 1 + k, src);
                t.w[0][d] = w0;
                t.w[1][d] = w1;
                t.w[2][d] = w2;
                t.w[3][d] = 1f - w0 - w1 - w2;
            } else if (interp == LANCZOS4) {
                double[] w = new double[8];
                double sum = 0;
                for (int k = 0; k < 8; k++) {
                    double x = ((double) tt + 3.0 - k) * (Math.PI / 4);
                    w[k] = Math.abs(x) < 1e-9 ? 1.0 : Math.sin(4 * x) * Math.sin(x) / (4 * x * x);
                    sum += w[k];
                }
                for (int k = 0; k < 8; k++) {
                    t.w[k][d] = (float) (w[k] / sum);
                    t.idx[k][d] = clip(s - 3 + k, src);
                }
            } else {
                throw new IllegalArgumentException("interpolation " + interp);
            }
        }
        return t;
    }

    private static int clip(long v, int src) {
        return (int) Math.max(0, Math.min(v, src - 1));
    }

    static Taps areaTaps(int dst, int src, double scale) {
        int n = (int) Math.ceil(scale) + 2;
        Taps t = new Taps(n, dst);
        for (int dx = 0; dx < dst; dx++) {
            double fs1 = dx * scale, fs2 = fs1 + scale;
            double cell = Math.min(scale, src - fs1);
            long s1 = (long) Math.ceil(fs1), s2 = (long) Math.floor(fs2);
            s2 = Math.min(s2, src - 1);
            s1 = Math.min(s1, s2);
            int k = 0;
            if (s1 - fs1 > 1e-3) { t.idx[k][dx] = (int) (s1 - 1); t.w[k][dx] = (float) ((s1 - fs1) / cell); k++; }
            for (long sx = s1; sx < s2; sx++) { t.idx[k][dx] = (int) sx; t.w[k][dx] = (float) (1.0 / cell); k++; }
            if (fs2 - s2 > 1e-3) {
                t.idx[k][dx] = (int) s2;
                t.w[k][dx] = (float) (Math.min(Math.min(fs2 - s2, 1.0), cell) / cell);
            }
        }
        return t;
    }

    static Taps areaAsLinear(int dst, int src, double invScale) {
        double scale = 1.0 / invScale;
        Taps t = new Taps(2, dst);
        for (int d = 0; d < dst; d++) {
            double s = Math.floor(d * scale);
            float f = (float) ((d + 1) - (s + 1) * invScale);
            float tt = f <= 0 ? 0f : (float) (f - Math.floor(f));
            long si = (long) s;
            if (si >= src - 1) { si = src - 1; tt = 0f; }
            t.idx[0][d] = clip(si, src);
            t.idx[1][d] = clip(si + 1, src);
            t.w[0][d] = 1f - tt;
            t.w[1][d] = tt;
        }
        return t;
    }

    /** cv2.resize(img, (ow, oh)): the scales are ow/w and oh/h. */
    public static RgbImage toSize(RgbImage img, int ow, int oh, int interp) {
        return run(img, ow, oh, (double) ow / img.width, (double) oh / img.height, interp);
    }

    /** cv2.resize(img, None, fx=fx, fy=fy): size round(w*fx) x round(h*fy), mapping by fx/fy themselves. */
    public static RgbImage byFactors(RgbImage img, double fx, double fy, int interp) {
        int ow = (int) Math.rint(img.width * fx), oh = (int) Math.rint(img.height * fy);
        return run(img, ow, oh, fx, fy, interp);
    }

    private static RgbImage run(RgbImage img, int ow, int oh, double ixScale, double iyScale, int interp) {
        int w = img.width, h = img.height;
        if (ow <= 0 || oh <= 0) throw new EsException("resize of a " + w + "x" + h + " image gives an empty " + ow + "x" + oh + " image", 1);
        Taps ty, tx;
        if (interp == AREA && !(ixScale <= 1.0 && iyScale <= 1.0)) {
            ty = areaAsLinear(oh, h, iyScale);
            tx = areaAsLinear(ow, w, ixScale);
        } else {
            ty = taps(oh, h, iyScale, interp);
            tx = taps(ow, w, ixScale, interp);
        }
        byte[] src = img.rgb;
        // vertical pass: rows[y][x][c] = sum_k src[iy[k][y]][x][c] * wy[k][y], in tap order
        float[] rows = new float[oh * w * 3];
        for (int k = 0; k < ty.idx.length; k++) {
            for (int y = 0; y < oh; y++) {
                int sy = ty.idx[k][y];
                float wy = ty.w[k][y];
                int so = sy * w * 3, ro = y * w * 3;
                for (int j = 0; j < w * 3; j++) rows[ro + j] += (src[so + j] & 0xFF) * wy;
            }
        }
        float[] out = new float[oh * ow * 3];
        for (int k = 0; k < tx.idx.length; k++) {
            for (int x = 0; x < ow; x++) {
                int sx = tx.idx[k][x];
                float wx = tx.w[k][x];
                for (int y = 0; y < oh; y++) {
                    int ro = (y * w + sx) * 3, oo = (y * ow + x) * 3;
                    out[oo] += rows[ro] * wx;
                    out[oo + 1] += rows[ro + 1] * wx;
                    out[oo + 2] += rows[ro + 2] * wx;
                }
            }
        }
        byte[] res = new byte[oh * ow * 3];
        for (int j = 0; j < res.length; j++) {
            double v = Math.rint(out[j]);
            res[j] = (byte) (int) Math.max(0, Math.min(255, v));
        }
        return new RgbImage(ow, oh, res);
    }
}
