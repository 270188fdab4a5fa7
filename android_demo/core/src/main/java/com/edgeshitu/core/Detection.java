package com.edgeshitu.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;
import java.util.Map;

/**
 * Detector postprocessing, as edge_shitu/detection.py: the PP-PicoDet head description, the decode
 * of raw head maps, Paddle-compatible multi-class NMS ({@code multiclass_nms3}) and the
 * clip / rescale of a detector cut before its NMS. Rows are {class, score, x1, y1, x2, y2}.
 */
public final class Detection {
    private Detection() {}

    public static final class Head {
        public String image;
        public List<String> scores, dists;
        public int[] strides;
        public int[][] grids;
        public int numClasses, regMax;
        public double cellOffset;
        public double scoreThreshold = 0.025, nmsThreshold = 0.6;
        public int nmsTopK = 1000, keepTopK = 100;

        @SuppressWarnings("unchecked")
        public static Head fromMap(Object o, String key) {
            if (!(o instanceof Map)) throw new EsException(key + " must be an object");
            Map<String, Object> d = (Map<String, Object>) o;
            for (String k : new String[] {"image", "scores", "dists", "strides", "grids", "num_classes", "reg_max", "cell_offset"})
                if (!d.containsKey(k)) throw new EsException(key + ": detector head description lacks '" + k + "': rebuild the bundle with 'edge-shitu convert'");
            Head h = new Head();
            h.image = String.valueOf(d.get("image"));
            h.scores = (List<String>) d.get("scores");
            h.dists = (List<String>) d.get("dists");
            List<Object> st = (List<Object>) d.get("strides");
            h.strides = new int[st.size()];
            for (int i = 0; i < st.size(); i++) h.strides[i] = intOf(st.get(i), key + ".strides", 1);
            List<Object> gr = (List<Object>) d.get("grids");
            h.grids = new int[gr.size()][2];
            for (int i = 0; i < gr.size(); i++) {
                List<Object> g = (List<Object>) gr.get(i);
                h.grids[i][0] = intOf(g.get(0), key + ".grids", 1);
                h.grids[i][1] = intOf(g.get(1), key + ".grids", 1);
            }
            h.numClasses = intOf(d.get("num_classes"), key + ".num_classes", 1);
            h.regMax = intOf(d.get("reg_max"), key + ".reg_max", 0);
            h.cellOffset = ((Number) d.get("cell_offset")).doubleValue();
            Object nms = d.get("nms");
            if (nms instanceof Map) {
                Map<String, Object> p = (Map<String, Object>) nms;
                if (p.get("score_threshold") instanceof Number) h.scoreThreshold = ((Number) p.get("score_threshold")).doubleValue();
                if (p.get("nms_threshold") instanceof Number) h.nmsThreshold = ((Number) p.get("nms_threshold")).doubleValue();
                if (p.get("nms_top_k") instanceof Number) h.nmsTopK = ((Number) p.get("nms_top_k")).intValue();
                if (p.get("keep_top_k") instanceof Number) h.keepTopK = ((Number) p.get("keep_top_k")).intValue();
            }
            return h;
        }
    }

    static int intOf(Object v, String key, int min) {
        if (!(v instanceof Long) || (Long) v < min) throw new EsException(key + " must be integers >= " + min + ", got " + Preprocess.show(v));
        return (int) (long) (Long) v;
    }

    /** IoU of two x1, y1, x2, y2 boxes, in double like numpy's iou_matrix. */
    static double iou(float[] a, int ao, float[] b, int bo) {
        double x1 = Math.max(a[ao], b[bo]), y1 = Math.max(a[ao + 1], b[bo + 1]);
        double x2 = Math.min(a[ao + 2], b[bo + 2]), y2 = Math.min(a[ao + 3], b[bo + 3]);
        double inter = Math.max(x2 - x1, 0) * Math.max(y2 - y1, 0);
        double areaA = Math.max((double) a[ao + 2] - a[ao], 0) * Math.max((double) a[ao + 3] - a[ao + 1], 0);
        double areaB = Math.max((double) b[bo + 2] - b[bo], 0) * Math.max((double) b[bo + 3] - b[bo + 1], 0);
        double union = areaA + areaB - inter;
        return union > 0 ? inter / Math.max(union, 1e-12) : 0.0;
    }

    /**
     * Multi-class NMS with multiclass_nms3's semantics. boxes [N*4], scores [C][N] (class-major).
     * Returns rows sorted by score (stable), at most keepTopK; maxPerClass &lt; 0: no early stop.
     */
    public static List<float[]> nms(float[] boxes, final float[][] scores, float scoreThreshold, double iouThreshold,
                                    int topK, int keepTopK, int maxPerClass) {
        List<float[]> out = new ArrayList<float[]>();
        int n = boxes.length / 4;
        for (int c = 0; c < scores.length; c++) {
            final float[] s = scores[c];
            List<Integer> idx = new ArrayList<Integer>();
            for (int i = 0; i < n; i++) if (s[i] > scoreThreshold) idx.add(i);
            Collections.sort(idx, new Comparator<Integer>() { // stable: ties keep index order
                public int compare(Integer p, Integer q) {
                    return Float.compare(-s[p], -s[q]) != 0 ? (-s[p] < -s[q] ? -1 : 1) : 0;
                }
            });
            if (topK >= 0 && idx.size() > topK) idx = new ArrayList<Integer>(idx.subList(0, topK));
            List<Integer> keep = new ArrayList<Integer>();
            while (!idx.isEmpty() && (maxPerClass < 0 || keep.size() < maxPerClass)) {
                int i = idx.get(0);
                keep.add(i);
                if (idx.size() == 1) break;
                List<Integer> rest = new ArrayList<Integer>();
                for (int j = 1; j < idx.size(); j++) if (iou(boxes, i * 4, boxes, idx.get(j) * 4) <= iouThreshold) rest.add(idx.get(j));
                idx = rest;
            }
            for (int i : keep) out.add(new float[] {c, s[i], boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2], boxes[i * 4 + 3]});
        }
        sortByScore(out);
        return keepTopK >= 0 && out.size() > keepTopK ? new ArrayList<float[]>(out.subList(0, keepTopK)) : out;
    }

    /** Stable sort of rows by score (column 1), highest first. */
    public static void sortByScore(List<float[]> rows) {
        Collections.sort(rows, new Comparator<float[]>() {
            public int compare(float[] p, float[] q) {
                return p[1] > q[1] ? -1 : p[1] < q[1] ? 1 : 0;
            }
        });
    }

    /**
     * After a detector cut before NMS: boxes [N*4] and scores [N*C] (anchor-major, as the model
     * outputs them) clipped to imShape (h, w), divided by scaleFactor (sy, sx), NMS with the
     * program's parameters; minScore / maxKeep as postprocess_detections (exact shortcut).
     */
    public static List<float[]> postprocess(float[] boxes, float[] scores, Head head, float[] imShape, float[] scaleFactor,
                                            double minScore, int maxKeep) {
        int c = head.numClasses, n = scores.length / c;
        if (boxes.length != n * 4) throw new EsException("detector outputs do not agree: " + boxes.length / 4 + " boxes, " + n + " score rows; rebuild the bundle", 2);
        int keepTopK = head.keepTopK;
        if (maxKeep >= 0) keepTopK = Math.min(keepTopK, maxKeep);
        float thr = (float) Math.max(head.scoreThreshold, (double) Math.nextAfter((float) minScore, Double.NEGATIVE_INFINITY));
        List<Integer> live = new ArrayList<Integer>();
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < c; k++) if (scores[i * c + k] > thr) { live.add(i); break; }
        }
        float[] b = new float[live.size() * 4];
        float[][] s = new float[c][live.size()];
        float h = imShape[0], w = imShape[1], sy = scaleFactor[0], sx = scaleFactor[1];
        for (int j = 0; j < live.size(); j++) {
            int i = live.get(j);
            b[j * 4] = clip(boxes[i * 4], w) / sx;
            b[j * 4 + 1] = clip(boxes[i * 4 + 1], h) / sy;
            b[j * 4 + 2] = clip(boxes[i * 4 + 2], w) / sx;
            b[j * 4 + 3] = clip(boxes[i * 4 + 3], h) / sy;
            for (int k = 0; k < c; k++) s[k][j] = scores[i * c + k];
        }
        return nms(b, s, thr, head.nmsThreshold, head.nmsTopK, keepTopK, keepTopK);
    }

    private static float clip(float v, float hi) {
        return v < 0 ? 0f : v > hi ? hi : v;
    }

    /** Raw per-level maps (score maps, then distribution maps, head order) -> boxes [N*4], scores [N*C]. */
    public static float[][] decodePicodet(float[][] raw, Head head) {
        int levels = head.scores.size(), bins = head.regMax + 1, c = head.numClasses;
        int total = 0;
        for (int[] g : head.grids) total += g[0] * g[1];
        float[] boxes = new float[total * 4], scores = new float[total * c];
        int row = 0;
        for (int l = 0; l < levels; l++) {
            int gh = head.grids[l][0], gw = head.grids[l][1], stride = head.strides[l];
            float[] sc = raw[l], d = raw[levels + l];
            for (int y = 0; y < gh; y++) {
                for (int x = 0; x < gw; x++, row++) {
                    int cell = y * gw + x;
                    float cx = (float) ((x + (float) head.cellOffset) * (float) stride);
                    float cy = (float) ((y + (float) head.cellOffset) * (float) stride);
                    System.arraycopy(sc, cell * c, scores, row * c, c);
                    float[] dist = new float[4];
                    for (int side = 0; side < 4; side++) {
                        int o = (cell * 4 + side) * bins;
                        float mx = Float.NEGATIVE_INFINITY;
                        for (int k = 0; k < bins; k++) mx = Math.max(mx, d[o + k]);
                        float sum = 0;
                        float[] e = new float[bins];
                        for (int k = 0; k < bins; k++) { e[k] = (float) Math.exp(d[o + k] - mx); sum += e[k]; }
                        float ex = 0;
                        for (int k = 0; k < bins; k++) ex += e[k] / sum * k;
                        dist[side] = ex * stride;
                    }
                    boxes[row * 4] = cx - dist[0];
                    boxes[row * 4 + 1] = cy - dist[1];
                    boxes[row * 4 + 2] = cx + dist[2];
                    boxes[row * 4 + 3] = cy + dist[3];
                }
            }
        }
        return new float[][] {boxes, scores};
    }
}
