package com.edgeshitu.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * A bundle folder (docs/bundle-format.md) opened on the device: manifest.json read and checked
 * as edge_shitu/bundle.py + manifest_schema.py check it (format, major version, the keys the
 * runtime reads, their types and ranges, paths that stay inside the bundle), artifacts verified
 * by sha256 before they are loaded. Every refusal is one line naming the key.
 */
public final class Bundle {
    public static final int FORMAT_MAJOR = 1;
    public final File root;
    public final Map<String, Object> manifest;
    private final String where;

    private Bundle(File root, Map<String, Object> manifest) {
        this.root = root;
        this.manifest = manifest;
        this.where = new File(root, "manifest.json").getPath();
    }

    @SuppressWarnings("unchecked")
    public static Bundle open(File root) {
        if (!root.isDirectory()) throw new EsException(root + ": not a bundle directory; make one with 'edge-shitu convert'");
        File mf = new File(root, "manifest.json");
        if (!mf.exists()) throw new EsException(root + ": no manifest.json; this is not an edge-shitu bundle (make one with 'edge-shitu convert')");
        if (!mf.isFile()) throw new EsException(mf + ": is not a file; re-copy the bundle");
        Object m;
        try {
            m = Json.parse(new String(readAll(mf), "UTF-8"));
        } catch (IOException e) {
            throw new EsException(mf + ": cannot be read (" + e.getMessage() + ")");
        } catch (IllegalArgumentException e) {
            String msg = e.getMessage();
            throw new EsException(mf + ": not valid JSON (" + (msg.length() > 200 ? msg.substring(0, 200) : msg) + "); fix the file or rebuild the bundle with 'edge-shitu convert'");
        }
        if (!(m instanceof Map)) throw new EsException(mf + ": not an edge-shitu bundle manifest (format != edge-shitu-bundle)");
        Bundle b = new Bundle(root, (Map<String, Object>) m);
        b.check();
        return b;
    }

    static byte[] readAll(File f) throws IOException {
        InputStream in = new FileInputStream(f);
        try {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            Streams.pump(in, out, 1 << 16);
            return out.toByteArray();
        } finally {
            in.close();
        }
    }

    // ------------------------------------------------------------------ checks
    private EsException bad(String key, String must, Object got) {
        return new EsException(where + ": " + key + " must be " + must + ", got " + Preprocess.show(got)
                + "; fix the file or rebuild the bundle with 'edge-shitu convert'");
    }

    private EsException missing(String key, String must) {
        return new EsException(where + ": " + key + " is missing (must be " + must + "); fix the file or rebuild the bundle with 'edge-shitu convert'");
    }

    static boolean isInt(Object v) {
        return v instanceof Long;
    }

    static boolean isNum(Object v) {
        return (v instanceof Long || v instanceof Double) && !Double.isNaN(((Number) v).doubleValue()) && !Double.isInfinite(((Number) v).doubleValue());
    }

    @SuppressWarnings("unchecked")
    private Map<String, Object> obj(Map<String, Object> m, String k, String key, boolean required) {
        Object v = m.get(k);
        if (v == null) {
            if (required) throw missing(key, "an object");
            return null;
        }
        if (!(v instanceof Map)) throw bad(key, "an object", v);
        return (Map<String, Object>) v;
    }

    private void intIn(Map<String, Object> m, String k, String key, long lo, long hi) {
        if (m == null || !m.containsKey(k)) return;
        Object v = m.get(k);
        if (!isInt(v) || (Long) v < lo || (Long) v > hi)
            throw bad(key, hi == Long.MAX_VALUE ? "an integer >= " + lo : "an integer in [" + lo + ", " + hi + "]", v);
    }

    private void numIn(Map<String, Object> m, String k, String key, double lo, double hi) {
        if (m == null || !m.containsKey(k)) return;
        Object v = m.get(k);
        if (!isNum(v) || ((Number) v).doubleValue() < lo || ((Number) v).doubleValue() > hi)
            throw bad(key, "a number in [" + fmt(lo) + ", " + fmt(hi) + "]", v);
    }

    private static String fmt(double d) {
        return d == Math.rint(d) ? Long.toString((long) d) : Double.toString(d);
    }

    private void oneOf(Map<String, Object> m, String k, String key, String... allowed) {
        if (m == null || !m.containsKey(k)) return;
        Object v = m.get(k);
        if (!(v instanceof String) || !Arrays.asList(allowed).contains(v)) throw bad(key, "one of " + Arrays.toString(allowed), v);
    }

    @SuppressWarnings("unchecked")
    private void check() {
        Map<String, Object> m = manifest;
        if (!"edge-shitu-bundle".equals(m.get("format"))) throw new EsException(where + ": not an edge-shitu bundle manifest (format != edge-shitu-bundle)");
        Object ver = m.get("format_version");
        if (!(ver instanceof List) || ((List<?>) ver).size() != 2 || !isInt(((List<?>) ver).get(0)) || !isInt(((List<?>) ver).get(1))
                || (Long) ((List<?>) ver).get(0) < 0 || (Long) ((List<?>) ver).get(1) < 0)
            throw new EsException(where + ": format_version must be [major, minor], got " + Preprocess.show(ver) + "; fix the file or rebuild the bundle with 'edge-shitu convert'");
        long major = (Long) ((List<?>) ver).get(0), minor = (Long) ((List<?>) ver).get(1);
        if (major != FORMAT_MAJOR)
            throw new EsException(where + ": bundle format " + major + "." + minor + "; this edge-shitu reads " + FORMAT_MAJOR
                    + ".x: upgrade edge-shitu on the device or rebuild the bundle");
        Map<String, Object> board = obj(m, "board", "board", true);
        if (board != null && board.containsKey("name") && !(board.get("name") instanceof String)) throw bad("board.name", "a string", board.get("name"));
        intIn(board, "max_image_pixels", "board.max_image_pixels", 1, Long.MAX_VALUE);
        Map<String, Object> rt = obj(m, "runtime", "runtime", false);
        if (rt != null) {
            if (rt.containsKey("backend")) {
                Object be = rt.get("backend");
                List<String> ok = Arrays.asList("tflite", "nb", "onnx", "paddle", "paddlelite", "paddle-lite", "litert");
                if (!(be instanceof String) || !ok.contains(((String) be).toLowerCase(Locale.ROOT)))
                    throw bad("runtime.backend", "one of tflite, nb, onnx, paddle (or paddlelite, paddle-lite, litert)", be);
            }
            oneOf(rt, "precision", "runtime.precision", "fp32", "fp16", "int8");
            oneOf(rt, "det_precision", "runtime.det_precision", "fp32", "fp16", "int8");
            intIn(rt, "threads", "runtime.threads", 1, 1024);
            numIn(rt, "det_threshold", "runtime.det_threshold", 0, 1);
            intIn(rt, "max_det", "runtime.max_det", 0, Long.MAX_VALUE);
            numIn(rt, "rec_score_threshold", "runtime.rec_score_threshold", -1, 1);
            numIn(rt, "rec_nms_iou", "runtime.rec_nms_iou", 0, 1);
            intIn(rt, "top_k", "runtime.top_k", 1, Long.MAX_VALUE);
            intIn(rt, "rerank", "runtime.rerank", 0, Long.MAX_VALUE);
        }
        Map<String, Object> idx = obj(m, "index", "index", true);
        if (!idx.containsKey("file")) throw missing("index.file", "a relative path inside the bundle");
        if (idx.containsKey("bits")) {
            Object v = idx.get("bits");
            if (!isInt(v) || (Long) v < 64 || (Long) v % 64 != 0) throw bad("index.bits", "an integer >= 64, a multiple of 64", v);
        }
        oneOf(idx, "method", "index.method", "itq", "sign");
        intIn(idx, "items", "index.items", 0, Long.MAX_VALUE);
        intIn(idx, "labels", "index.labels", 0, Long.MAX_VALUE);
        intIn(idx, "rerank", "index.rerank", 0, Long.MAX_VALUE);
        if (idx.containsKey("rerank_vectors") && !(idx.get("rerank_vectors") instanceof Boolean)) throw bad("index.rerank_vectors", "true or false", idx.get("rerank_vectors"));
        resolve(idx.get("file"), "index.file", "");
        Map<String, Object> rec = obj(m, "rec", "rec", true);
        if (!rec.containsKey("feature_dim")) throw missing("rec.feature_dim", "an integer >= 1");
        intIn(rec, "feature_dim", "rec.feature_dim", 1, Long.MAX_VALUE);
        checkModel(rec, "rec");
        Map<String, Object> det = obj(m, "det", "det", false);
        if (det != null) checkModel(det, "det");
        Map<String, Object> lib = obj(m, "native_lib", "native_lib", false);
        if (lib != null) {
            if (!lib.containsKey("file")) throw missing("native_lib.file", "a path inside lib/");
            resolve(lib.get("file"), "native_lib.file", "lib");
            sha(lib.get("sha256"), "native_lib.sha256");
        }
    }

    /** rec or det: its preprocess (as Preprocess.Rec / Preprocess.Det reads it) and its artifacts. */
    private void checkModel(Map<String, Object> model, String which) {
        if (!model.containsKey("preprocess")) throw missing(which + ".preprocess", "an object");
        try {
            if (which.equals("det")) new Preprocess.Det(model.get("preprocess"), "det.preprocess");
            else new Preprocess.Rec(model.get("preprocess"), "rec.preprocess");
        } catch (EsException e) {
            throw new EsException(where + ": " + e.getMessage() + "; fix the file or rebuild the bundle with 'edge-shitu convert'");
        }
        checkArtifacts(model, which);
    }

    private void sha(Object v, String key) {
        if (!(v instanceof String) || !((String) v).matches("[0-9a-fA-F]{64}")) throw bad(key, "64 hex digits", v);
    }

    @SuppressWarnings("unchecked")
    private void checkArtifacts(Map<String, Object> model, String which) {
        Object arts = model.get("artifacts");
        if (!(arts instanceof List) || ((List<?>) arts).isEmpty()) throw bad(which + ".artifacts", "a non-empty list of artifact entries", arts);
        List<String> kinds = Arrays.asList("tflite:fp32", "tflite:fp16", "tflite:int8", "nb:arm:fp32", "nb:arm:int8", "nb:x86:fp32", "nb:x86:int8");
        int i = 0;
        for (Object o : (List<Object>) arts) {
            String k = which + ".artifacts[" + i++ + "]";
            if (!(o instanceof Map)) throw bad(k, "an object", o);
            Map<String, Object> a = (Map<String, Object>) o;
            if (!kinds.contains(a.get("kind"))) throw bad(k + ".kind", "one of " + kinds, a.get("kind"));
            if (!a.containsKey("file")) throw missing(k + ".file", "a relative path inside the bundle");
            resolve(a.get("file"), k + ".file", "");
            sha(a.get("sha256"), k + ".sha256");
            if (!a.containsKey("bytes")) throw missing(k + ".bytes", "an integer >= 0");
            intIn(a, "bytes", k + ".bytes", 0, Long.MAX_VALUE);
            Object det = a.get("details");
            if (det != null && !(det instanceof Map)) throw bad(k + ".details", "an object", det);
            if (det != null && ((Map<String, Object>) det).containsKey("cut_before_nms") && !(((Map<String, Object>) det).get("cut_before_nms") instanceof Boolean))
                throw bad(k + ".details.cut_before_nms", "true or false", ((Map<String, Object>) det).get("cut_before_nms"));
            if (det != null && ((Map<String, Object>) det).get("head") != null) {
                try {
                    Detection.Head.fromMap(((Map<String, Object>) det).get("head"), k + ".details.head");
                } catch (EsException e) {
                    throw new EsException(where + ": " + e.getMessage());
                } catch (RuntimeException e) {
                    throw new EsException(where + ": " + k + ".details.head is not usable (" + e + "); fix the file or rebuild the bundle");
                }
            }
            if ("rec".equals(which) && a.get("outputs") instanceof List && ((List<?>) a.get("outputs")).size() == 1) {
                Object out = ((List<?>) a.get("outputs")).get(0);
                Object shape = out instanceof Map ? ((Map<String, Object>) out).get("shape") : null;
                if (shape instanceof List && !((List<?>) shape).isEmpty()) {
                    Object last = ((List<?>) shape).get(((List<?>) shape).size() - 1);
                    Object dim = model.get("feature_dim");
                    if (last instanceof Long && dim instanceof Long && !last.equals(dim))
                        throw new EsException(where + ": " + k + " (" + a.get("kind") + ") outputs " + last + "-d features but rec.feature_dim is " + dim + "; fix the manifest or rebuild the bundle");
                }
            }
        }
    }

    /** A path the manifest names, resolved inside the bundle (or its lib/ folder), as resolve_in_bundle. */
    public File resolve(Object rel, String key, String under) {
        String inside = under.isEmpty() ? "the bundle" : "the bundle's " + under + "/ folder";
        String why = null;
        if (!(rel instanceof String)) why = "not a string";
        else {
            String s = (String) rel;
            if (s.isEmpty() || s.equals(".")) why = "empty";
            else if (s.startsWith("/") || s.startsWith("\\") || s.matches("^[A-Za-z]:.*")) why = "absolute";
            else if (s.indexOf('\\') >= 0) why = "use '/' separators";
            else if (s.indexOf('\0') >= 0) why = "contains a NUL byte";
            else for (String part : s.split("/")) if (part.equals("..")) why = "'..'";
            if (why == null && !under.isEmpty() && !s.startsWith(under + "/")) why = "not inside " + under + "/";
        }
        if (why != null)
            throw new EsException(where + ": " + key + " must be a relative path inside " + inside + " (no '..'), got " + Preprocess.show(rel) + " (" + why + "); fix the manifest or rebuild the bundle");
        File base, p;
        try {
            base = root.getCanonicalFile();
            p = new File(base, (String) rel).getCanonicalFile();
        } catch (IOException e) {
            throw new EsException(where + ": " + key + " " + Preprocess.show(rel) + " cannot be resolved (" + e.getMessage() + "); re-copy the bundle");
        }
        File limit = under.isEmpty() ? base : new File(base, under);
        if (!p.getPath().startsWith(limit.getPath() + File.separator))
            throw new EsException(where + ": " + key + " " + Preprocess.show(rel) + " leads out of " + inside + " through a symlink (to " + p + "); refused: re-copy the bundle without links that point outside it");
        if (p.exists() && !p.isFile())
            throw new EsException(where + ": " + key + " " + Preprocess.show(rel) + " is not a regular file; re-copy the bundle");
        return p;
    }

    // ------------------------------------------------------------------ access
    @SuppressWarnings("unchecked")
    public Map<String, Object> runtime() {
        Object r = manifest.get("runtime");
        return r instanceof Map ? (Map<String, Object>) r : new java.util.HashMap<String, Object>();
    }

    @SuppressWarnings("unchecked")
    public Map<String, Object> model(String which) {
        Object o = manifest.get(which);
        if (!(o instanceof Map)) throw new EsException(root + ": the bundle has no '" + which + "' model");
        return (Map<String, Object>) o;
    }

    public boolean hasDetector() {
        return manifest.get("det") instanceof Map;
    }

    @SuppressWarnings("unchecked")
    public File indexFile() {
        return resolve(((Map<String, Object>) manifest.get("index")).get("file"), "index.file", "");
    }

    @SuppressWarnings("unchecked")
    public int indexRerank() {
        Object r = ((Map<String, Object>) manifest.get("index")).get("rerank");
        return r instanceof Long ? (int) (long) (Long) r : 0;
    }

    public int featureDim() {
        return (int) (long) (Long) model("rec").get("feature_dim");
    }

    @SuppressWarnings("unchecked")
    public long maxImagePixels() {
        Object b = manifest.get("board");
        Object v = b instanceof Map ? ((Map<String, Object>) b).get("max_image_pixels") : null;
        return v instanceof Long ? (Long) v : 40000000L;
    }

    /** One artifact entry of a model, the one of this kind; its file verified by size and sha256. */
    @SuppressWarnings("unchecked")
    public Map<String, Object> artifact(String which, String kind) {
        List<Object> arts = (List<Object>) model(which).get("artifacts");
        List<String> have = new ArrayList<String>();
        for (int i = 0; i < arts.size(); i++) {
            Map<String, Object> a = (Map<String, Object>) arts.get(i);
            have.add((String) a.get("kind"));
            if (kind.equals(a.get("kind"))) return a;
        }
        throw new EsException(root + ": no " + which + " artifact of kind " + kind + " (the bundle has: " + join(have) + "); "
                + "the app runs TFLite artifacts: rebuild the bundle for a board with tflite artifacts (e.g. --board rpi4)");
    }

    @SuppressWarnings("unchecked")
    public File verifiedFile(String which, Map<String, Object> a) {
        List<Object> arts = (List<Object>) model(which).get("artifacts");
        File f = resolve(a.get("file"), which + ".artifacts[" + arts.indexOf(a) + "].file", "");
        if (!f.isFile()) throw new EsException(f + ": missing from the bundle; re-copy the bundle");
        Object bytes = a.get("bytes");
        if (bytes instanceof Long && f.length() != (Long) bytes)
            throw new EsException(f + ": " + f.length() + " bytes but the manifest says " + bytes + "; the file is truncated or was replaced: re-copy the bundle");
        String got = sha256(f);
        if (!got.equalsIgnoreCase((String) a.get("sha256")))
            throw new EsException(f + ": sha256 does not match manifest.json; the file is corrupt or was replaced: re-copy the bundle");
        return f;
    }

    static String join(List<String> l) {
        StringBuilder b = new StringBuilder();
        for (String s : l) { if (b.length() > 0) b.append(", "); b.append(s); }
        return b.length() == 0 ? "none" : b.toString();
    }

    public static String sha256(File f) {
        try {
            final MessageDigest md = MessageDigest.getInstance("SHA-256");
            InputStream in = new FileInputStream(f);
            try {
                Streams.pump(in, new java.io.OutputStream() {
                    public void write(int x) { md.update((byte) x); }
                    public void write(byte[] buf, int off, int n) { md.update(buf, off, n); }
                }, 1 << 20);
            } finally {
                in.close();
            }
            StringBuilder b = new StringBuilder();
            for (byte x : md.digest()) b.append(String.format("%02x", x & 0xFF));
            return b.toString();
        } catch (IOException e) {
            throw new EsException(f + ": cannot be read (" + e.getMessage() + ")");
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
