package com.edgeshitu.core;

import java.io.File;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * PP-ShiTu on the device, the steps of edge_shitu/pipeline.py: detector boxes (best max_det
 * above det_threshold) plus the whole photo as candidates, each cropped (integer box), embedded
 * and searched in the bundle's index (top-1, score = the index's distance -> cosine table),
 * kept above rec_score_threshold, then NMS over the recognized boxes (IoU rec_nms_iou, +1 pixel
 * areas). Shared by the Android app and the host command line.
 */
public final class Recognizer {
    /** Creates a model from a verified artifact file (the app and the host: {@link LiteRt}). */
    public interface ModelFactory {
        Model open(File file, String kind, int threads);
    }

    public static final ModelFactory LITERT = new ModelFactory() {
        public Model open(File file, String kind, int threads) {
            if (!kind.startsWith("tflite:")) throw new EsException(file + ": " + kind + " artifacts need Paddle Lite; the app runs TFLite artifacts (--precision fp32|int8)");
            return new LiteRt(file.getPath(), threads);
        }
    };

    public static final class Settings {
        public double detThreshold = 0.2, recScoreThreshold = 0.5, recNmsIou = 0.05;
        public int maxDet = 5, topK = 5, rerank = 0;

        static Settings fromRuntime(Map<String, Object> rt, int rerank) {
            Settings s = new Settings();
            if (rt.get("det_threshold") instanceof Number) s.detThreshold = ((Number) rt.get("det_threshold")).doubleValue();
            if (rt.get("max_det") instanceof Number) s.maxDet = ((Number) rt.get("max_det")).intValue();
            if (rt.get("rec_score_threshold") instanceof Number) s.recScoreThreshold = ((Number) rt.get("rec_score_threshold")).doubleValue();
            if (rt.get("rec_nms_iou") instanceof Number) s.recNmsIou = ((Number) rt.get("rec_nms_iou")).doubleValue();
            if (rt.get("top_k") instanceof Number) s.topK = ((Number) rt.get("top_k")).intValue();
            s.rerank = rerank;
            return s;
        }
    }

    public static final class Options {
        public String precision, detPrecision;
        public Integer threads, maxDet, rerank;
        public Double threshold, detThreshold;
    }

    public static final class Recognized {
        public final int[] box;
        public final String label;
        public final double score;
        public final long id;
        public final Double detScore;
        public final String source;

        Recognized(int[] box, String label, double score, long id, Double detScore, String source) {
            this.box = box;
            this.label = label;
            this.score = score;
            this.id = id;
            this.detScore = detScore;
            this.source = source;
        }

        public Map<String, Object> toMap() {
            Map<String, Object> m = new LinkedHashMap<String, Object>();
            List<Object> b = new ArrayList<Object>();
            for (int v : box) b.add((long) v);
            m.put("box", b);
            m.put("label", label);
            m.put("score", round(score, 5));
            m.put("id", Json.unsigned(id));
            m.put("det_score", detScore == null ? null : (Object) round(detScore, 5));
            m.put("source", source);
            return m;
        }
    }

    public static final class Result {
        public List<Recognized> objects = new ArrayList<Recognized>();
        public List<float[]> detections = new ArrayList<float[]>();
        public Map<String, Double> timingsMs = new LinkedHashMap<String, Double>();
        public int width, height;

        public Map<String, Object> toMap() {
            Map<String, Object> m = new LinkedHashMap<String, Object>();
            m.put("image_size", Arrays.asList((Object) (long) width, (long) height));
            List<Object> objs = new ArrayList<Object>();
            for (Recognized o : objects) objs.add(o.toMap());
            m.put("objects", objs);
            List<Object> dets = new ArrayList<Object>();
            for (float[] row : detections) {
                List<Object> r = new ArrayList<Object>();
                for (float v : row) r.add(round(v, 4));
                dets.add(r);
            }
            m.put("detections", dets);
            Map<String, Object> t = new LinkedHashMap<String, Object>();
            for (Map.Entry<String, Double> e : timingsMs.entrySet()) t.put(e.getKey(), round(e.getValue(), 3));
            m.put("timings_ms", t);
            return m;
        }
    }

    /** Python's round(x, n): the exact binary value rounded half-even. */
    public static double round(double x, int n) {
        if (Double.isNaN(x) || Double.isInfinite(x)) return x;
        return new BigDecimal(x).setScale(n, RoundingMode.HALF_EVEN).doubleValue();
    }

    public final Bundle bundle;
    public final String artifactKind;
    public final Settings settings;
    public final GalleryIndex index;
    private final Model rec, det;
    private final Preprocess.Rec recPre;
    private final Preprocess.Det detPre;
    private final Detection.Head head;
    private final File indexFile;

    @SuppressWarnings("unchecked")
    public Recognizer(Bundle b, Options o, ModelFactory models) {
        this.bundle = b;
        Map<String, Object> rt = b.runtime();
        String backend = rt.get("backend") instanceof String ? ((String) rt.get("backend")).toLowerCase(java.util.Locale.ROOT) : "tflite";
        if (!backend.equals("tflite") && !backend.equals("litert") && o.precision == null)
            System.err.println("edge-shitu: warning: the bundle's board runs '" + backend + "' artifacts; the app runs its TFLite artifacts");
        String precision = o.precision != null ? o.precision : rt.get("precision") instanceof String ? (String) rt.get("precision") : "fp32";
        int threads = o.threads != null ? o.threads : rt.get("threads") instanceof Long ? (int) (long) (Long) rt.get("threads") : 1;
        String kind = "tflite:" + precision;
        Map<String, Object> recArt = b.artifact("rec", kind);
        // the detector: Options.detPrecision, else the manifest's runtime.det_precision (fp32 over a 16x8
        // int8 file) when no precision was asked for, else the extractor's precision
        Object fromManifest = o.precision == null ? rt.get("det_precision") : null;
        String detAsked = o.detPrecision != null ? o.detPrecision
                : fromManifest instanceof String && !fromManifest.equals(precision) ? (String) fromManifest : null;
        String detPrecision = detAsked != null ? detAsked : precision;
        Map<String, Object> detArt = b.hasDetector() ? b.artifact("det", "tflite:" + detPrecision) : null;
        recPre = new Preprocess.Rec(b.model("rec").get("preprocess"), "rec.preprocess");
        indexFile = b.indexFile();
        if (!indexFile.exists()) throw new EsException(indexFile + ": no such index file; the bundle has no gallery: re-copy the bundle (" + b.root + ")");
        index = GalleryIndex.open(indexFile);
        if (index.dim != b.featureDim())
            throw new EsException(indexFile + ": the index holds " + index.dim + "-d features but the extractor gives " + b.featureDim()
                    + "-d (manifest rec.feature_dim): the index is from another bundle; re-copy it");
        File recFile = b.verifiedFile("rec", recArt);
        File detFile = detArt != null ? b.verifiedFile("det", detArt) : null;
        settings = Settings.fromRuntime(rt, b.indexRerank());
        if (o.threshold != null) settings.recScoreThreshold = o.threshold;
        if (o.detThreshold != null) settings.detThreshold = o.detThreshold;
        if (o.maxDet != null) settings.maxDet = o.maxDet;
        if (o.rerank != null) settings.rerank = o.rerank;
        artifactKind = detAsked == null ? kind : kind + " (det " + detAsked + ")";  // as the Python Recognizer says it
        Model r = models.open(recFile, kind, threads);
        Model d = null;
        try {
            if (detArt != null) {
                detPre = new Preprocess.Det(b.model("det").get("preprocess"), "det.preprocess");
                Map<String, Object> details = (Map<String, Object>) detArt.get("details");
                head = details != null && Boolean.TRUE.equals(details.get("cut_before_nms")) && details.get("head") != null
                        ? Detection.Head.fromMap(details.get("head"), "det.details.head") : null;
                d = models.open(detFile, (String) detArt.get("kind"), threads);
            } else {
                detPre = null;
                head = null;
            }
        } catch (RuntimeException e) {
            r.close();
            throw e;
        }
        rec = r;
        det = d;
    }

    public void close() {
        rec.close();
        if (det != null) det.close();
    }

    public long maxImagePixels() {
        return bundle.maxImagePixels();
    }

    static boolean nhwc(int[] shape) {
        return shape.length == 4 && shape[3] == 3 && shape[1] != 3;
    }

    // ------------------------------------------------------------------ stages
    public List<float[]> detect(RgbImage img, Map<String, Double> timings) {
        List<float[]> out = new ArrayList<float[]>();
        if (det == null) return out;
        long t0 = System.nanoTime();
        Preprocess.Det.Feeds f = detPre.apply(img, nhwc(det.inputShapes()[0]));
        long t1 = System.nanoTime();
        float[][] outs = det.run(new float[][] {f.image.data});
        long t2 = System.nanoTime();
        List<float[]> dets;
        if (head != null) {
            float[] boxes = null, scores = null;
            int[][] shapes = det.outputShapes();
            for (int i = 0; i < outs.length; i++) if (boxes == null && shapes[i].length >= 2 && shapes[i][shapes[i].length - 1] == 4) boxes = outs[i];
            for (int i = 0; i < outs.length; i++) if (outs[i] != boxes && scores == null && shapes[i][shapes[i].length - 1] == head.numClasses) scores = outs[i];
            if (boxes == null || scores == null)
                throw new EsException("detector outputs are not boxes [1,N,4] + scores [1,N," + head.numClasses + "]; rebuild the bundle");
            dets = Detection.postprocess(boxes, scores, head, f.imShape, f.scaleFactor, settings.detThreshold, settings.maxDet);
        } else {
            dets = new ArrayList<float[]>();
            for (int i = 0; i + 6 <= outs[0].length; i += 6) dets.add(Arrays.copyOfRange(outs[0], i, i + 6));
        }
        Detection.sortByScore(dets);
        for (int i = 0; i < Math.min(settings.maxDet, dets.size()); i++) {
            float[] row = dets.get(i);
            if (row[1] >= (float) settings.detThreshold) out.add(row);
        }
        long t3 = System.nanoTime();
        timings.put("det_pre", (t1 - t0) / 1e6);
        timings.put("det_infer", (t2 - t1) / 1e6);
        timings.put("det_post", (t3 - t2) / 1e6);
        return out;
    }

    /** Integer crop boxes (truncated like PaddleClas) inside w x h, with their scores. */
    static List<Object[]> cropBoxes(List<float[]> dets, int w, int h, int minSide) {
        List<Object[]> out = new ArrayList<Object[]>();
        for (float[] row : dets) {
            int x1 = (int) row[2], y1 = (int) row[3], x2 = (int) row[4], y2 = (int) row[5];
            x1 = Math.max(0, x1);
            y1 = Math.max(0, y1);
            x2 = Math.min(w, x2);
            y2 = Math.min(h, y2);
            if (x2 - x1 >= minSide && y2 - y1 >= minSide) out.add(new Object[] {new int[] {x1, y1, x2, y2}, (double) row[1]});
        }
        return out;
    }

    public float[] embed(RgbImage crop) {
        Preprocess.Tensor t = recPre.apply(crop, nhwc(rec.inputShapes()[0]));
        float[] f = rec.run(new float[][] {t.data})[0];
        return f;
    }

    public Result recognize(RgbImage img) {
        Result res = new Result();
        long start = System.nanoTime();
        int w = img.width, h = img.height;
        res.width = w;
        res.height = h;
        List<float[]> dets = detect(img, res.timingsMs);
        res.detections = dets;
        List<int[]> boxes = new ArrayList<int[]>();
        List<Double> detScores = new ArrayList<Double>();
        for (Object[] c : cropBoxes(dets, w, h, 2)) { boxes.add((int[]) c[0]); detScores.add((Double) c[1]); }
        boxes.add(new int[] {0, 0, w, h});
        detScores.add(null);
        float[][] feats = new float[boxes.size()][];
        double tPre = 0, tInf = 0;
        for (int i = 0; i < boxes.size(); i++) {
            int[] b = boxes.get(i);
            long t0 = System.nanoTime();
            RgbImage crop = img.crop(b[0], b[1], b[2], b[3]);
            Preprocess.Tensor t = recPre.apply(crop, nhwc(rec.inputShapes()[0]));
            long t1 = System.nanoTime();
            feats[i] = rec.run(new float[][] {t.data})[0];
            tInf += (System.nanoTime() - t1) / 1e6;
            tPre += (t1 - t0) / 1e6;
        }
        res.timingsMs.put("rec_pre", tPre);
        res.timingsMs.put("rec_infer", tInf);
        long t0 = System.nanoTime();
        List<List<GalleryIndex.Match>> hits = index.query(feats, Math.max(1, settings.topK), Math.max(0, settings.rerank));
        res.timingsMs.put("search", (System.nanoTime() - t0) / 1e6);
        t0 = System.nanoTime();
        List<Recognized> objs = new ArrayList<Recognized>();
        for (int i = 0; i < boxes.size(); i++) {
            List<GalleryIndex.Match> ms = hits.get(i);
            if (ms.isEmpty()) continue;
            GalleryIndex.Match m = ms.get(0);
            // the re-rank cosine with the index's int8 vectors when re-ranked, else the distance table (scores.match_score)
            double score = index.hasRerankVectors() && !Float.isNaN(m.score) ? m.score : index.scoreOfDistance(m.distance);
            if (score >= settings.recScoreThreshold)
                objs.add(new Recognized(boxes.get(i), m.label, score, m.id, detScores.get(i), detScores.get(i) == null ? "image" : "det"));
        }
        res.objects = nmsRecognized(objs, settings.recNmsIou);
        res.timingsMs.put("nms", (System.nanoTime() - t0) / 1e6);
        res.timingsMs.put("total", (System.nanoTime() - start) / 1e6);
        return res;
    }

    /** PaddleClas nms_to_rec_results: best score first, drop overlaps above iou (+1 pixel areas). */
    static List<Recognized> nmsRecognized(final List<Recognized> objs, double iou) {
        Integer[] order = new Integer[objs.size()];
        for (int i = 0; i < order.length; i++) order[i] = i;
        Arrays.sort(order, new java.util.Comparator<Integer>() {
            public int compare(Integer a, Integer b) {
                return Double.compare(objs.get(b).score, objs.get(a).score);
            }
        });
        List<Integer> rest = new ArrayList<Integer>(Arrays.asList(order));
        List<Recognized> keep = new ArrayList<Recognized>();
        while (!rest.isEmpty()) {
            int i = rest.get(0);
            Recognized a = objs.get(i);
            keep.add(a);
            List<Integer> next = new ArrayList<Integer>();
            double areaA = (double) (a.box[2] - a.box[0] + 1) * (a.box[3] - a.box[1] + 1);
            for (int k = 1; k < rest.size(); k++) {
                Recognized b = objs.get(rest.get(k));
                double ww = Math.max(0.0, Math.min(a.box[2], b.box[2]) - Math.max(a.box[0], b.box[0]) + 1);
                double hh = Math.max(0.0, Math.min(a.box[3], b.box[3]) - Math.max(a.box[1], b.box[1]) + 1);
                double inter = ww * hh;
                double areaB = (double) (b.box[2] - b.box[0] + 1) * (b.box[3] - b.box[1] + 1);
                if (inter / (areaA + areaB - inter) <= iou) next.add(rest.get(k));
            }
            rest = next;
        }
        return keep;
    }

    // ------------------------------------------------------------------ gallery edits
    /** The best detection above the threshold as an integer box (min side 8), or null (whole photo). */
    public int[] mainObjectBox(RgbImage img) {
        if (det == null) return null;
        List<Object[]> b = cropBoxes(detect(img, new LinkedHashMap<String, Double>()), img.width, img.height, 8);
        return b.isEmpty() ? null : (int[]) b.get(0)[0];
    }

    /** Embeds photos of one product (main object, or whole photo) and appends them to the index; returns ids. */
    public long[] addToGallery(List<RgbImage> photos, final String label, boolean wholeImage) {
        if (label.trim().isEmpty()) throw new EsException("--label must not be empty");
        final float[][] feats = new float[photos.size()][];
        for (int i = 0; i < photos.size(); i++) {
            RgbImage img = photos.get(i);
            int[] box = wholeImage ? null : mainObjectBox(img);
            feats[i] = embed(box == null ? img : img.crop(box[0], box[1], box[2], box[3]));
        }
        final List<String> labels = new ArrayList<String>();
        for (int i = 0; i < feats.length; i++) labels.add(label);
        long[] ids = GalleryIndex.edit(indexFile, new GalleryIndex.Edit<long[]>() {
            public long[] apply(GalleryIndex g) {
                return g.add(feats, labels, null);
            }
        });
        reloadIndex();
        return ids;
    }

    public int removeFromGallery(final long[] ids) {
        int n = GalleryIndex.edit(indexFile, new GalleryIndex.Edit<Integer>() {
            public Integer apply(GalleryIndex g) {
                return g.remove(ids);
            }
        });
        reloadIndex();
        return n;
    }

    private GalleryIndex current;

    private void reloadIndex() {
        current = GalleryIndex.open(indexFile);
        swap(current);
    }

    private void swap(GalleryIndex g) {
        // the searched index is final for thread-safety of readers; copy the new state into it
        index.bits = g.bits;
        index.dim = g.dim;
        index.method = g.method;
        index.minor = g.minor;
        index.normalize = g.normalize;
        index.nextId = g.nextId;
        index.generation = g.generation;
        index.count = g.count;
        index.codes = g.codes;
        index.ids = g.ids;
        index.deleted = g.deleted;
        index.labelOf = g.labelOf;
        index.labels = g.labels;
        index.mean = g.mean;
        index.proj = g.proj;
        index.vectors = g.vectors;
        index.meta = g.meta;
    }
}
