package com.edgeshitu.host;

import com.edgeshitu.core.Bundle;
import com.edgeshitu.core.EsException;
import com.edgeshitu.core.GalleryIndex;
import com.edgeshitu.core.Json;
import com.edgeshitu.core.LiteRt;
import com.edgeshitu.core.NativeHamming;
import com.edgeshitu.core.RgbImage;
import com.edgeshitu.core.Recognizer;

import java.io.File;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The Android demo's Java core on the host JVM: {@code java -jar edge-shitu-android.jar ...}.
 *
 * <pre>
 * recognize BUNDLE IMAGE_OR_FOLDER... [--json] [--precision P] [--det-precision P] [--threads N]
 *           [--threshold X] [--det-threshold X] [--max-det N] [--rerank N]
 * gallery add BUNDLE PHOTO... --label L [--whole-image] [--json]
 * gallery remove BUNDLE ID... | --label L
 * gallery list BUNDLE
 * index search INDEX QUERIES.npy [--k K] [--rerank R]        (JSON)
 * index add INDEX FEATURES.npy --labels FILE [--ids FILE]    (JSON: the new ids)
 * index remove INDEX ID...
 * index compact INDEX
 * index info INDEX
 * </pre>
 *
 * Native parts: libesengine.so (LiteRT engine) and libeshamming_jni.so next to the jar in
 * host/, LiteRT from EDGE_SHITU_LITERT_LIB or host/libLiteRt.so (make android-jar links the
 * ai-edge-litert wheel's). EDGE_SHITU_KERNEL=java searches without the C kernel.
 * Exit codes as edge-shitu: 0, 1 (a photo failed), 2 (bad bundle or argument).
 */
public final class Main {
    static PrintStream out, err;

    public static void main(String[] args) {
        try {
            out = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), true, "UTF-8");
            err = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.err), true, "UTF-8");
        } catch (java.io.UnsupportedEncodingException e) {
            throw new IllegalStateException(e);
        }
        int code;
        try {
            code = run(args);
        } catch (EsException e) {
            err.println("edge-shitu: error: " + e.getMessage());
            code = e.exitCode;
        }
        out.flush();
        System.exit(code);
    }

    static File hostDir() {
        try {
            File jar = new File(Main.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            return new File(jar.isFile() ? jar.getParentFile() : jar, "host");
        } catch (Exception e) {
            return new File("host");
        }
    }

    static String env(String k, String dflt) {
        String v = System.getenv(k);
        return v != null && !v.isEmpty() ? v : dflt;
    }

    static void loadNative(boolean engine) {
        File host = hostDir();
        String kernel = env("EDGE_SHITU_KERNEL", "auto").toLowerCase(Locale.ROOT);
        if (!kernel.equals("java") && !kernel.equals("numpy")) {
            String lib = env("EDGE_SHITU_HAMMING_JNI", new File(host, "libeshamming_jni.so").getAbsolutePath());
            if (!NativeHamming.load(lib) && kernel.equals("native"))
                throw new EsException("EDGE_SHITU_KERNEL=native but the C kernel cannot be loaded (" + NativeHamming.whyNot() + "); run 'make android-jar'");
        }
        if (engine) {
            String e = LiteRt.load(env("EDGE_SHITU_ENGINE_LIB", new File(host, "libesengine.so").getAbsolutePath()),
                    env("EDGE_SHITU_LITERT_LIB", new File(host, "libLiteRt.so").getAbsolutePath()));
            if (e != null) throw new EsException(e + "; set EDGE_SHITU_LITERT_LIB to ai_edge_litert/libLiteRt.so (pip install ai-edge-litert) or run 'make android-jar'");
        }
    }

    static final String USAGE = "usage: edge-shitu-android recognize BUNDLE IMAGE... [--json] | gallery add|remove|list BUNDLE ... | index search|add|remove|compact|info INDEX ...";

    static int run(String[] args) {
        if (args.length == 0) throw new EsException(USAGE);
        List<String> a = new ArrayList<String>(Arrays.asList(args));
        String cmd = a.remove(0);
        if (cmd.equals("recognize")) return recognize(a);
        if (cmd.equals("gallery") && !a.isEmpty()) return gallery(a.remove(0), a);
        if (cmd.equals("index") && !a.isEmpty()) return index(a.remove(0), a);
        if (cmd.equals("debug-resize") && a.size() == 5) return debugResize(a);
        if (cmd.equals("debug-bundle")) return debugBundle(a);
        throw new EsException(USAGE);
    }

    // ------------------------------------------------------------------ options
    static String opt(List<String> a, String name) {
        int i = a.indexOf(name);
        if (i < 0) return null;
        if (i + 1 >= a.size()) throw new EsException("option " + name + " needs a value");
        String v = a.get(i + 1);
        a.remove(i + 1);
        a.remove(i);
        return v;
    }

    static boolean flag(List<String> a, String name) {
        return a.remove(name);
    }

    static Integer intOpt(List<String> a, String name, int min) {
        String v = opt(a, name);
        if (v == null) return null;
        try {
            int x = Integer.parseInt(v);
            if (x < min) throw new NumberFormatException();
            return x;
        } catch (NumberFormatException e) {
            throw new EsException("option " + name + ": '" + v + "' is not an integer >= " + min);
        }
    }

    static Double numOpt(List<String> a, String name) {
        String v = opt(a, name);
        if (v == null) return null;
        try {
            return Double.parseDouble(v);
        } catch (NumberFormatException e) {
            throw new EsException("option " + name + ": '" + v + "' is not a number");
        }
    }

    static void noOptions(List<String> a) {
        for (String s : a) if (s.startsWith("--")) throw new EsException("unknown option " + s + "; " + USAGE);
    }

    static Recognizer.Options recOptions(List<String> a) {
        Recognizer.Options o = new Recognizer.Options();
        o.precision = opt(a, "--precision");
        o.detPrecision = opt(a, "--det-precision");
        o.threads = intOpt(a, "--threads", 1);
        o.threshold = numOpt(a, "--threshold");
        o.detThreshold = numOpt(a, "--det-threshold");
        o.maxDet = intOpt(a, "--max-det", 0);
        o.rerank = intOpt(a, "--rerank", 0);
        String backend = opt(a, "--backend");
        if (backend != null && !backend.equalsIgnoreCase("tflite") && !backend.equalsIgnoreCase("litert"))
            throw new EsException("--backend " + backend + ": the Android runtime runs TFLite artifacts (--backend tflite)");
        return o;
    }

    static final List<String> IMAGE_SUFFIXES = Arrays.asList(".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif");

    static List<File> expandImages(List<String> paths) {
        List<File> files = new ArrayList<File>();
        for (String p : paths) {
            File f = new File(p);
            if (f.isDirectory()) {
                List<File> found = new ArrayList<File>();
                walk(f, found);
                Collections.sort(found, new java.util.Comparator<File>() {
                    public int compare(File x, File y) {
                        return x.getPath().compareTo(y.getPath());
                    }
                });
                files.addAll(found);
            } else files.add(f);
        }
        return files;
    }

    static void walk(File dir, List<File> out) {
        File[] kids = dir.listFiles();
        if (kids == null) return;
        for (File k : kids) {
            if (k.isDirectory()) walk(k, out);
            else {
                String n = k.getName().toLowerCase(Locale.ROOT);
                int dot = n.lastIndexOf('.');
                if (dot > 0 && IMAGE_SUFFIXES.contains(n.substring(dot)) && k.isFile()) out.add(k);
            }
        }
    }

    // ------------------------------------------------------------------ recognize
    static int recognize(List<String> a) {
        boolean json = flag(a, "--json");
        Recognizer.Options o = recOptions(a);
        noOptions(a);
        if (a.size() < 2) throw new EsException("usage: recognize BUNDLE IMAGE... [--json]");
        String bundlePath = a.remove(0);
        List<File> files = expandImages(a);
        Bundle b = Bundle.open(new File(bundlePath));
        loadNative(true);
        Recognizer rec = new Recognizer(b, o, Recognizer.LITERT);
        ImageIoDecoder dec = new ImageIoDecoder();
        List<Object> results = new ArrayList<Object>();
        List<Object> failed = new ArrayList<Object>();
        try {
            for (File f : files) {
                Map<String, Object> entry = new LinkedHashMap<String, Object>();
                entry.put("image", f.getPath());
                try {
                    RgbImage img = dec.decode(f, rec.maxImagePixels());
                    Recognizer.Result r = rec.recognize(img);
                    entry.putAll(r.toMap());
                    if (!json) {
                        out.println(String.format(Locale.ROOT, "%s: %d object(s) in %.1f ms", f, r.objects.size(), r.timingsMs.get("total")));
                        for (Recognizer.Recognized x : r.objects)
                            out.println(String.format(Locale.ROOT, "  %s  score %.3f  id %d  box %s  (%s)", x.label, x.score, x.id, Arrays.toString(x.box), x.source));
                    }
                } catch (EsException e) {
                    err.println("edge-shitu: error: " + e.getMessage());
                    failed.add(f.getPath());
                    entry.put("error", e.getMessage());
                }
                results.add(entry);
            }
        } finally {
            rec.close();
        }
        if (json) {
            Map<String, Object> doc = new LinkedHashMap<String, Object>();
            doc.put("bundle", bundlePath);
            doc.put("artifact", rec.artifactKind);
            doc.put("kernel", rec.index.kernel());
            doc.put("images", results);
            doc.put("failed", failed);
            out.println(Json.write(doc, 1));
        }
        if (!failed.isEmpty()) {
            err.println("edge-shitu: error: " + failed.size() + " of " + files.size() + " image(s) failed: " + joinObj(failed));
            return 1;
        }
        return 0;
    }

    static String joinObj(List<Object> l) {
        StringBuilder s = new StringBuilder();
        for (Object o : l) { if (s.length() > 0) s.append(", "); s.append(o); }
        return s.toString();
    }

    /** Tests only: debug-resize IN OUT.raw W H INTERP -> the RGB bytes of Resize.toSize (cv2.resize). */
    static int debugResize(List<String> a) {
        RgbImage img = new ImageIoDecoder().decode(new File(a.get(0)), Long.MAX_VALUE);
        RgbImage r = com.edgeshitu.core.Resize.toSize(img, Integer.parseInt(a.get(2)), Integer.parseInt(a.get(3)), Integer.parseInt(a.get(4)));
        try {
            Files.write(new File(a.get(1)).toPath(), r.rgb);
        } catch (IOException e) {
            throw new EsException(a.get(1) + ": cannot write (" + e.getMessage() + ")");
        }
        return 0;
    }

    /** Tests only: debug-bundle BUNDLE... -> one JSON line each: {"ok": true} or {"error": "..."} (Bundle.open). */
    static int debugBundle(List<String> a) {
        for (String b : a) {
            Map<String, Object> d = new LinkedHashMap<String, Object>();
            try {
                Bundle.open(new File(b));
                d.put("ok", true);
            } catch (EsException e) {
                d.put("ok", false);
                d.put("error", e.getMessage());
            }
            out.println(Json.write(d, 0));
        }
        return 0;
    }

    // ------------------------------------------------------------------ gallery
    static int gallery(String sub, List<String> a) {
        if (sub.equals("add")) {
            String label = opt(a, "--label");
            boolean whole = flag(a, "--whole-image");
            boolean json = flag(a, "--json");
            Recognizer.Options o = recOptions(a);
            noOptions(a);
            if (label == null) throw new EsException("gallery add needs --label L");
            if (a.size() < 2) throw new EsException("usage: gallery add BUNDLE PHOTO... --label L");
            Bundle b = Bundle.open(new File(a.remove(0)));
            loadNative(true);
            o.threads = o.threads == null ? 1 : o.threads;
            Recognizer rec = new Recognizer(b, o, Recognizer.LITERT);
            try {
                ImageIoDecoder dec = new ImageIoDecoder();
                List<RgbImage> imgs = new ArrayList<RgbImage>();
                for (File f : expandImages(a)) imgs.add(dec.decode(f, rec.maxImagePixels()));
                long[] ids = rec.addToGallery(imgs, label, whole);
                if (json) out.println(Json.write(Collections.singletonMap("ids", (Object) toList(ids)), 0));
                else for (long id : ids) out.println("added id " + id + " '" + label + "'");
            } finally {
                rec.close();
            }
            return 0;
        }
        if (sub.equals("remove")) {
            String label = opt(a, "--label");
            noOptions(a);
            if (a.isEmpty()) throw new EsException("usage: gallery remove BUNDLE ID... | --label L");
            Bundle b = Bundle.open(new File(a.remove(0)));
            loadNative(false);
            File idx = b.indexFile();
            final List<Long> ids = new ArrayList<Long>();
            for (String s : a) ids.add(parseId(s));
            final String lab = label;
            int n = GalleryIndex.edit(idx, new GalleryIndex.Edit<Integer>() {
                public Integer apply(GalleryIndex g) {
                    List<Long> all = new ArrayList<Long>(ids);
                    if (lab != null) for (long v : g.idsOfLabel(lab)) all.add(v);
                    long[] arr = new long[all.size()];
                    for (int i = 0; i < arr.length; i++) arr[i] = all.get(i);
                    return g.remove(arr);
                }
            });
            out.println("removed " + n + " item(s)");
            return 0;
        }
        if (sub.equals("list")) {
            noOptions(a);
            if (a.size() != 1) throw new EsException("usage: gallery list BUNDLE");
            Bundle b = Bundle.open(new File(a.get(0)));
            out.println(Json.write(GalleryIndex.open(b.indexFile()).items(), 0));
            return 0;
        }
        throw new EsException(USAGE);
    }

    static long parseId(String s) {
        try {
            return Long.parseLong(s);
        } catch (NumberFormatException e) {
            throw new EsException("remove: '" + s + "' is not an integer id");
        }
    }

    static List<Object> toList(long[] v) {
        List<Object> l = new ArrayList<Object>();
        for (long x : v) l.add(x);
        return l;
    }

    // ------------------------------------------------------------------ index
    static int index(String sub, List<String> a) {
        loadNative(false); // the kernel, and flock for edits (the lock Python's writers take)
        if (sub.equals("search")) {
            Integer k = intOpt(a, "--k", 1);
            Integer rr = intOpt(a, "--rerank", 0);
            flag(a, "--json");
            noOptions(a);
            if (a.size() != 2) throw new EsException("usage: index search INDEX QUERIES.npy [--k K] [--rerank R]");
            loadNative(false);
            GalleryIndex g = GalleryIndex.open(new File(a.get(0)));
            float[][] q = Npy.readF32(new File(a.get(1)));
            List<List<GalleryIndex.Match>> res = g.query(q, k == null ? 5 : k, rr == null ? 0 : rr);
            List<Object> rows = new ArrayList<Object>();
            for (List<GalleryIndex.Match> ms : res) {
                List<Object> l = new ArrayList<Object>();
                for (GalleryIndex.Match m : ms) {
                    Map<String, Object> d = new LinkedHashMap<String, Object>();
                    d.put("id", Json.unsigned(m.id));
                    d.put("label", m.label);
                    d.put("distance", (long) m.distance);
                    d.put("row", (long) m.row);
                    if (!Float.isNaN(m.score)) d.put("score", (double) m.score);
                    l.add(d);
                }
                rows.add(l);
            }
            Map<String, Object> doc = new LinkedHashMap<String, Object>();
            doc.put("kernel", g.kernel());
            doc.put("results", rows);
            out.println(Json.write(doc, 0));
            return 0;
        }
        if (sub.equals("add")) {
            String labels = opt(a, "--labels");
            String idsFile = opt(a, "--ids");
            noOptions(a);
            if (a.size() != 2 || labels == null) throw new EsException("usage: index add INDEX FEATURES.npy --labels FILE [--ids FILE]");
            final float[][] x = Npy.readF32(new File(a.get(1)));
            final List<String> lab = lines(new File(labels));
            final long[] ids;
            if (idsFile != null) {
                List<String> l = lines(new File(idsFile));
                ids = new long[l.size()];
                for (int i = 0; i < ids.length; i++) ids[i] = parseId(l.get(i).trim());
            } else ids = null;
            long[] added = GalleryIndex.edit(new File(a.get(0)), new GalleryIndex.Edit<long[]>() {
                public long[] apply(GalleryIndex g) {
                    return g.add(x, lab, ids);
                }
            });
            out.println(Json.write(Collections.singletonMap("ids", (Object) toList(added)), 0));
            return 0;
        }
        if (sub.equals("remove")) {
            noOptions(a);
            if (a.size() < 2) throw new EsException("usage: index remove INDEX ID...");
            final long[] ids = new long[a.size() - 1];
            for (int i = 1; i < a.size(); i++) ids[i - 1] = parseId(a.get(i));
            int n = GalleryIndex.edit(new File(a.get(0)), new GalleryIndex.Edit<Integer>() {
                public Integer apply(GalleryIndex g) {
                    return g.remove(ids);
                }
            });
            out.println("removed " + n + " item(s)");
            return 0;
        }
        if (sub.equals("compact")) {
            noOptions(a);
            int n = GalleryIndex.edit(new File(a.get(0)), new GalleryIndex.Edit<Integer>() {
                public Integer apply(GalleryIndex g) {
                    return g.compact();
                }
            });
            out.println("dropped " + n + " row(s)");
            return 0;
        }
        if (sub.equals("info")) {
            flag(a, "--json");
            noOptions(a);
            GalleryIndex g = GalleryIndex.open(new File(a.get(0)));
            Map<String, Object> d = new LinkedHashMap<String, Object>();
            d.put("format", "edge-shitu index 1." + g.minor);
            d.put("bits", (long) g.bits);
            d.put("dim", (long) g.dim);
            d.put("method", g.method == GalleryIndex.ITQ ? "itq" : "sign");
            d.put("count", (long) g.count());
            d.put("live", (long) g.liveCount());
            d.put("next_id", g.nextId);
            d.put("generation", g.generation);
            d.put("rerank_vectors", g.hasRerankVectors());
            out.println(Json.write(d, 0));
            return 0;
        }
        throw new EsException(USAGE);
    }

    static List<String> lines(File f) {
        try {
            List<String> l = new ArrayList<String>();
            for (String s : new String(Files.readAllBytes(f.toPath()), "UTF-8").split("\n", -1)) {
                String t = s.endsWith("\r") ? s.substring(0, s.length() - 1) : s;
                l.add(t);
            }
            while (!l.isEmpty() && l.get(l.size() - 1).isEmpty()) l.remove(l.size() - 1);
            return l;
        } catch (IOException e) {
            throw new EsException(f + ": cannot be read (" + e.getMessage() + ")");
        }
    }

    /** float32 .npy, 2-D (or 1-D: one row), C order. */
    static final class Npy {
        static float[][] readF32(File f) {
            byte[] raw;
            try {
                raw = Files.readAllBytes(f.toPath());
            } catch (IOException e) {
                throw new EsException(f + ": cannot be read (" + e.getMessage() + ")");
            }
            if (raw.length < 10 || raw[0] != (byte) 0x93 || raw[1] != 'N') throw new EsException(f + ": not a .npy file");
            int major = raw[6];
            ByteBuffer b = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN);
            int hl = major == 1 ? (b.getShort(8) & 0xFFFF) : b.getInt(8);
            int start = (major == 1 ? 10 : 12);
            String header = new String(raw, start, hl, java.nio.charset.StandardCharsets.ISO_8859_1);
            if (!header.contains("'<f4'") || header.contains("'fortran_order': True"))
                throw new EsException(f + ": expected a C-order float32 array (save it with np.save(f, x.astype(np.float32)))");
            String shape = header.substring(header.indexOf("'shape': (") + 10);
            shape = shape.substring(0, shape.indexOf(')'));
            String[] parts = shape.split(",");
            int rows = Integer.parseInt(parts[0].trim());
            int cols = parts.length > 1 && !parts[1].trim().isEmpty() ? Integer.parseInt(parts[1].trim()) : rows;
            if (parts.length == 1 || parts[1].trim().isEmpty()) rows = 1;
            float[][] x = new float[rows][cols];
            b.position(start + hl);
            for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) x[i][j] = b.getFloat();
            return x;
        }
    }
}
