package com.edgeshitu.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The manifest's preprocessing, op for op as edge_shitu/preprocess.py runs it: the detector's
 * PaddleDetection ops (Resize, NormalizeImage, Permute, PadStride) and the extractor's
 * {@code rec.preprocess}. Normalisation goes through per-channel 256-entry float32 tables built
 * with the same float32 operations as Python's, so the model sees the same floats.
 */
public final class Preprocess {
    private Preprocess() {}

    static final double[] IMAGENET_MEAN = {0.485, 0.456, 0.406};
    static final double[] IMAGENET_STD = {0.229, 0.224, 0.225};

    /** A model input: float32 values in the layout the model wants (NHWC or NCHW), batch 1. */
    public static final class Tensor {
        public final float[] data;
        public final int h, w;
        public final boolean nhwc;

        Tensor(float[] data, int h, int w, boolean nhwc) {
            this.data = data;
            this.h = h;
            this.w = w;
            this.nhwc = nhwc;
        }
    }

    /** Per-channel tables through which uint8 pixels become floats. */
    static Tensor applyLuts(RgbImage im, float[][] luts, boolean nhwc, int padH, int padW) {
        int h = Math.max(im.height, padH), w = Math.max(im.width, padW);
        float[] out = new float[h * w * 3];
        byte[] p = im.rgb;
        for (int y = 0; y < im.height; y++) {
            for (int x = 0; x < im.width; x++) {
                int s = (y * im.width + x) * 3;
                for (int c = 0; c < 3; c++) {
                    float v = luts[c][p[s + c] & 0xFF];
                    if (nhwc) out[(y * w + x) * 3 + c] = v; else out[(c * h + y) * w + x] = v;
                }
            }
        }
        return new Tensor(out, h, w, nhwc);
    }

    // ------------------------------------------------------------------ detector
    public static final class Det {
        final List<Map<String, Object>> ops;

        @SuppressWarnings("unchecked")
        public Det(Object preprocess, String key) {
            if (!(preprocess instanceof Map)) throw new EsException(key + " must be an object");
            Map<String, Object> d = (Map<String, Object>) preprocess;
            Object kind = d.get("kind");
            if (d.containsKey("kind") && !"det".equals(kind)) throw new EsException(key + ".kind must be \"det\", got " + show(kind));
            Object ops = d.get("ops");
            if (!(ops instanceof List)) throw new EsException(key + ".ops must be a list of ops");
            this.ops = new ArrayList<Map<String, Object>>();
            int i = 0;
            for (Object o : (List<Object>) ops) {
                String k = key + ".ops[" + i++ + "]";
                if (!(o instanceof Map)) throw new EsException(k + " must be an object");
                Map<String, Object> op = (Map<String, Object>) o;
                Object type = op.get("type");
                if (!Arrays.asList("Resize", "NormalizeImage", "Permute", "PadStride").contains(type))
                    throw new EsException(k + ".type must be one of Resize, NormalizeImage, Permute, PadStride, got " + show(type));
                if ("Resize".equals(type)) {
                    targetSize(op, k);
                    Resize.interpCode(op.containsKey("interp") ? op.get("interp") : Long.valueOf(1), k + ".interp");
                }
                if ("Resize".equals(type)) bool(op, "keep_ratio", k);
                if ("NormalizeImage".equals(type)) {
                    three(op, "mean", IMAGENET_MEAN, k + ".mean", false);
                    three(op, "std", IMAGENET_STD, k + ".std", true);
                    bool(op, "is_scale", k);
                    Object nt = op.get("norm_type");
                    if (op.containsKey("norm_type") && !"mean_std".equals(nt) && !"none".equals(nt))
                        throw new EsException(k + ".norm_type must be one of \"mean_std\", \"none\", got " + show(nt));
                }
                if ("PadStride".equals(type) && op.containsKey("stride") && !(op.get("stride") instanceof Long && (Long) op.get("stride") >= 0))
                    throw new EsException(k + ".stride must be an integer >= 0, got " + show(op.get("stride")));
                this.ops.add(op);
            }
        }

        static int[] targetSize(Map<String, Object> op, String k) {
            Object ts = op.get("target_size");
            if (ts instanceof Long && (Long) ts >= 1) return new int[] {(int) (long) (Long) ts, (int) (long) (Long) ts};
            if (ts instanceof List && ((List<?>) ts).size() == 2 && ((List<?>) ts).get(0) instanceof Long
                    && ((List<?>) ts).get(1) instanceof Long && (Long) ((List<?>) ts).get(0) >= 1 && (Long) ((List<?>) ts).get(1) >= 1)
                return new int[] {(int) (long) (Long) ((List<?>) ts).get(0), (int) (long) (Long) ((List<?>) ts).get(1)};
            throw new EsException(k + ".target_size must be an integer >= 1 or [h, w] integers >= 1, got " + show(ts));
        }

        /** Feeds for a detector cut before NMS: the image tensor, im_shape (h, w), scale_factor (sy, sx). */
        public static final class Feeds {
            public Tensor image;
            public float[] imShape = new float[2];
            public float[] scaleFactor = new float[] {1f, 1f};
        }

        public Feeds apply(RgbImage img, boolean nhwc) {
            Feeds f = new Feeds();
            RgbImage im = img;
            f.imShape[0] = img.height;
            f.imShape[1] = img.width;
            float[][] luts = null;
            int stride = 0;
            for (Map<String, Object> op : ops) {
                String type = (String) op.get("type");
                if (type.equals("Resize")) {
                    int[] ts = targetSize(op, "Resize");
                    int th = ts[0], tw = ts[1];
                    int h = im.height, w = im.width;
                    double sy, sx;
                    Object kr = op.get("keep_ratio");
                    if (kr == null || Boolean.TRUE.equals(kr)) {
                        double scale = (double) Math.min(th, tw) / Math.min(h, w);
                        if (Math.rint(scale * Math.max(h, w)) > Math.max(th, tw)) scale = (double) Math.max(th, tw) / Math.max(h, w);
                        sy = sx = scale;
                    } else {
                        sy = (double) th / h;
                        sx = (double) tw / w;
                    }
                    int interp = Resize.interpCode(op.containsKey("interp") ? op.get("interp") : Long.valueOf(1), "interp");
                    im = Resize.byFactors(im, sx, sy, interp);
                    f.imShape[0] = im.height;
                    f.imShape[1] = im.width;
                    f.scaleFactor[0] = (float) sy;
                    f.scaleFactor[1] = (float) sx;
                } else if (type.equals("NormalizeImage")) {
                    luts = detLuts(op);
                } else if (type.equals("PadStride")) {
                    Object s = op.get("stride");
                    stride = s instanceof Long ? (int) (long) (Long) s : 0;
                }
                // Permute: the layout is the model's (NHWC for TFLite), decided below
            }
            if (luts == null) { // no NormalizeImage: the raw values as float
                luts = new float[3][256];
                for (int c = 0; c < 3; c++) for (int v = 0; v < 256; v++) luts[c][v] = v;
            }
            int ph = im.height, pw = im.width;
            if (stride > 0) {
                ph = (im.height + stride - 1) / stride * stride;
                pw = (im.width + stride - 1) / stride * stride;
            }
            f.image = applyLuts(im, luts, nhwc, ph, pw);
            return f;
        }

        static float[][] detLuts(Map<String, Object> op) {
            float[][] l = new float[3][256];
            boolean isScale = !Boolean.FALSE.equals(op.get("is_scale"));
            boolean meanStd = !"none".equals(op.get("norm_type"));
            double[] mean = three(op, "mean", IMAGENET_MEAN, "mean", false);
            double[] std = three(op, "std", IMAGENET_STD, "std", true);
            for (int c = 0; c < 3; c++) {
                for (int v = 0; v < 256; v++) {
                    float x = v;
                    if (isScale) x = x / 255.0f;
                    if (meanStd) x = (x - (float) mean[c]) / (float) std[c];
                    l[c][v] = x;
                }
            }
            return l;
        }
    }

    // ------------------------------------------------------------------ extractor
    public static final class Rec {
        public final int w, h;
        final int interp;
        final String resize, fit;
        final double scale;
        final double[] mean, std;
        final int padValue;
        final float[][] luts;

        @SuppressWarnings("unchecked")
        public Rec(Object preprocess, String key) {
            if (!(preprocess instanceof Map)) throw new EsException(key + " must be an object");
            Map<String, Object> d = (Map<String, Object>) preprocess;
            Set<String> known = new HashSet<String>(Arrays.asList("kind", "size", "interp", "resize", "scale", "mean", "std", "fit", "pad_value"));
            for (String k : d.keySet())
                if (!known.contains(k)) throw new EsException(key + ": unknown recognition preprocess key \"" + k + "\": written by a newer edge-shitu? upgrade");
            Object kind = d.get("kind");
            if (d.containsKey("kind") && !"rec".equals(kind)) throw new EsException(key + ".kind must be \"rec\", got " + show(kind));
            Object size = d.get("size");
            if (!d.containsKey("size")) { w = 224; h = 224; }
            else if (size instanceof List && ((List<?>) size).size() == 2 && ((List<?>) size).get(0) instanceof Long && ((List<?>) size).get(1) instanceof Long
                    && (Long) ((List<?>) size).get(0) >= 1 && (Long) ((List<?>) size).get(1) >= 1) {
                w = (int) (long) (Long) ((List<?>) size).get(0);
                h = (int) (long) (Long) ((List<?>) size).get(1);
            } else throw new EsException(key + ".size must be [w, h], integers >= 1, got " + show(size));
            Object ip = d.containsKey("interp") ? d.get("interp") : "bilinear";
            interp = Resize.interpCode(ip, key + ".interp");
            Object rs = d.containsKey("resize") ? d.get("resize") : "cv2";
            if (!"cv2".equals(rs) && !"pil".equals(rs)) throw new EsException(key + ".resize must be \"cv2\" or \"pil\", got " + show(rs));
            resize = (String) rs;
            Object sc = d.containsKey("scale") ? d.get("scale") : Double.valueOf(1.0 / 255.0);
            if (!(sc instanceof Number) || ((Number) sc).doubleValue() <= 0 || sc instanceof Boolean)
                throw new EsException(key + ".scale must be a number > 0, got " + show(sc));
            scale = ((Number) sc).doubleValue();
            mean = three(d, "mean", IMAGENET_MEAN, key + ".mean", false);
            std = three(d, "std", IMAGENET_STD, key + ".std", true);
            Object ft = d.containsKey("fit") ? d.get("fit") : "stretch";
            if (!"stretch".equals(ft) && !"letterbox".equals(ft)) throw new EsException(key + ".fit must be \"stretch\" or \"letterbox\", got " + show(ft));
            fit = (String) ft;
            Object pv = d.containsKey("pad_value") ? d.get("pad_value") : Long.valueOf(255);
            if (!(pv instanceof Long) || (Long) pv < 0 || (Long) pv > 255) throw new EsException(key + ".pad_value must be an integer in [0, 255], got " + show(pv));
            padValue = (int) (long) (Long) pv;
            if (fit.equals("letterbox") && (w != h || interp != Resize.LINEAR))
                throw new EsException(key + ": a letterbox preprocess needs a square size and bilinear resizing");
            if (resize.equals("pil"))
                throw new EsException(key + ".resize \"pil\" (Pillow's antialiased resize) is not supported on Android; rebuild the bundle with the default \"cv2\"");
            luts = new float[3][256];
            for (int c = 0; c < 3; c++) {
                for (int v = 0; v < 256; v++) {
                    float x = (float) v * (float) scale;
                    luts[c][v] = (x - (float) mean[c]) / (float) std[c];
                }
            }
        }

        public RgbImage resizeImage(RgbImage img) {
            if (fit.equals("letterbox")) {
                int size = w;
                double s = (double) size / Math.max(img.height, img.width);
                int nw = (int) Math.max(1, pyRound(img.width * s)), nh = (int) Math.max(1, pyRound(img.height * s));
                RgbImage small = (nw == img.width && nh == img.height) ? img : Resize.toSize(img, nw, nh, Resize.LINEAR);
                byte[] canvas = new byte[size * size * 3];
                Arrays.fill(canvas, (byte) padValue);
                int y0 = (size - nh) / 2, x0 = (size - nw) / 2;
                for (int y = 0; y < nh; y++) System.arraycopy(small.rgb, y * nw * 3, canvas, ((y0 + y) * size + x0) * 3, nw * 3);
                return new RgbImage(size, size, canvas);
            }
            return Resize.toSize(img, w, h, interp);
        }

        public Tensor apply(RgbImage img, boolean nhwc) {
            return applyLuts(resizeImage(img), luts, nhwc, 0, 0);
        }
    }

    /** Python's round(): half to even. */
    static double pyRound(double v) {
        return Math.rint(v);
    }

    static void bool(Map<String, Object> m, String k, String key) {
        if (m.containsKey(k) && !(m.get(k) instanceof Boolean))
            throw new EsException(key + "." + k + " must be true or false, got " + show(m.get(k)));
    }

    /** m[k] as 3 numbers (absent: the default; present, even null: checked). */
    static double[] three(Map<String, Object> m, String k, double[] dflt, String key, boolean positive) {
        if (!m.containsKey(k)) return dflt;
        Object v = m.get(k);
        if (v instanceof List && ((List<?>) v).size() == 3) {
            double[] out = new double[3];
            for (int i = 0; i < 3; i++) {
                Object x = ((List<?>) v).get(i);
                if (!(x instanceof Number) || Double.isNaN(((Number) x).doubleValue()) || (positive && ((Number) x).doubleValue() <= 0))
                    throw new EsException(key + " must be 3 numbers" + (positive ? " > 0" : "") + ", got " + show(v));
                out[i] = ((Number) x).doubleValue();
            }
            return out;
        }
        throw new EsException(key + " must be 3 numbers" + (positive ? " > 0" : "") + ", got " + show(v));
    }

    static String show(Object v) {
        String s = v instanceof String ? "\"" + v + "\"" : Json.write(v, 0);
        return s.length() <= 60 ? s : s.substring(0, 57) + "...";
    }
}
