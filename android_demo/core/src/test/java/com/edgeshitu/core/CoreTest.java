package com.edgeshitu.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** The pure-Java core without models: JSON, resize, NMS, manifest checks, index edits. */
public class CoreTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void jsonRoundTripKeepsIntegersAndUnicode() {
        Object v = Json.parse("{\"a\": [1, 2.0, -3e-2, true, null], \"标签\": \"雪碧\\n\\u00e9\"}");
        Map<?, ?> m = (Map<?, ?>) v;
        assertEquals(Long.valueOf(1), ((List<?>) m.get("a")).get(0));
        assertEquals(Double.valueOf(2.0), ((List<?>) m.get("a")).get(1));
        assertEquals("雪碧\né", m.get("标签"));
        assertEquals(v, Json.parse(Json.write(v, 1)));
        assertEquals("{\"a\": [1, 0.0001, 1e-05, 1e+16, 0.5], \"b\": {\"c\": \"雪\"}}",
                PyJson.dumps(Json.parse("{\"b\": {\"c\": \"雪\"}, \"a\": [1, 0.0001, 0.00001, 1e16, 0.5]}")));
    }

    static RgbImage ramp(int w, int h, long seed) {
        byte[] b = new byte[w * h * 3];
        new Random(seed).nextBytes(b);
        return new RgbImage(w, h, b);
    }

    @Test
    public void resizeKeepsConstantImagesAndSizes() {
        byte[] b = new byte[37 * 23 * 3];
        Arrays.fill(b, (byte) 200);
        RgbImage c = new RgbImage(37, 23, b);
        for (int interp = 0; interp <= 4; interp++) {
            RgbImage r = Resize.toSize(c, 224, 224, interp);
            for (byte x : r.rgb) assertEquals("interp " + interp, 200, x & 0xFF);
            RgbImage s = Resize.toSize(c, 11, 7, interp);
            for (byte x : s.rgb) assertEquals("down interp " + interp, 200, x & 0xFF);
        }
        RgbImage f = Resize.byFactors(ramp(1200, 802, 1), 640.0 / 1200, 640.0 / 802, Resize.CUBIC);
        assertEquals(640, f.width);
        assertEquals(640, f.height);
    }

    @Test
    public void nmsKeepsTheBestOfOverlapsPerClass() {
        float[] boxes = {0, 0, 10, 10, 1, 1, 10, 10, 20, 20, 30, 30};
        float[][] scores = {{0.9f, 0.8f, 0.7f}, {0.1f, 0.95f, 0.0f}};
        List<float[]> out = Detection.nms(boxes, scores, 0.05f, 0.5, 1000, 100, -1);
        assertEquals(3, out.size());
        assertArrayEquals(new float[] {1, 0.95f, 1, 1, 10, 10}, out.get(0), 0f);
        assertArrayEquals(new float[] {0, 0.9f, 0, 0, 10, 10}, out.get(1), 0f);
        assertArrayEquals(new float[] {0, 0.7f, 20, 20, 30, 30}, out.get(2), 0f);
    }

    @Test
    public void picodetDecodeIsTheExpectationOfTheBins() {
        Detection.Head h = new Detection.Head();
        h.scores = Arrays.asList("s");
        h.dists = Arrays.asList("d");
        h.strides = new int[] {8};
        h.grids = new int[][] {{1, 2}};
        h.numClasses = 1;
        h.regMax = 1;
        h.cellOffset = 0.5;
        // cell 0: uniform bins (expectation 0.5 -> 4 px); cell 1: all mass on bin 1 (-> 8 px)
        float[] d = {0, 0, 0, 0, 0, 0, 0, 0, -100, 0, -100, 0, -100, 0, -100, 0};
        float[][] out = Detection.decodePicodet(new float[][] {{0.3f, 0.6f}, d}, h);
        assertArrayEquals(new float[] {0, 0, 8, 8, 4, -4, 20, 12}, out[0], 1e-4f);
        assertArrayEquals(new float[] {0.3f, 0.6f}, out[1], 0f);
    }

    static File bundle(File dir, String manifest) throws Exception {
        dir.mkdirs();
        Files.write(new File(dir, "manifest.json").toPath(), manifest.getBytes("UTF-8"));
        return dir;
    }

    static final String GOOD = "{\"format\": \"edge-shitu-bundle\", \"format_version\": [1, 0], \"board\": {}, \"index\": {\"file\": \"gallery.esidx\"},"
            + " \"rec\": {\"feature_dim\": 32, \"preprocess\": {\"kind\": \"rec\", \"size\": [224, 224]},"
            + " \"artifacts\": [{\"kind\": \"tflite:fp32\", \"file\": \"rec/m.tflite\", \"sha256\": \"" + repeat("0", 64) + "\", \"bytes\": 3}]}}";

    static String repeat(String s, int n) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < n; i++) b.append(s);
        return b.toString();
    }

    void refused(String manifest, String... words) throws Exception {
        File d = bundle(tmp.newFolder(), manifest);
        try {
            Bundle.open(d);
            fail("accepted " + manifest);
        } catch (EsException e) {
            assertTrue(e.getMessage(), !e.getMessage().contains("\n"));
            for (String w : words) assertTrue(e.getMessage() + " lacks " + w, e.getMessage().contains(w));
        }
    }

    @Test
    public void manifestChecksNameTheKey() throws Exception {
        Bundle.open(bundle(tmp.newFolder(), GOOD));
        refused(GOOD.replace("[1, 0]", "[2, 0]"), "bundle format 2.0", "upgrade");
        refused(GOOD.replace("\"feature_dim\": 32", "\"feature_dim\": 2.0"), "rec.feature_dim");
        refused(GOOD.replace("gallery.esidx", "../x.esidx"), "index.file", "'..'");
        refused(GOOD.replace("\"size\": [224, 224]", "\"size\": [224, 224], \"bogus\": 1"), "rec.preprocess", "newer");
        refused(GOOD.replace("}}", "}, \"runtime\": {\"threads\": \"four\"}}"), "runtime.threads", "\"four\"");
        refused("{not json", "not valid JSON");
    }

    @Test
    public void wrongChecksumIsRefusedBeforeLoading() throws Exception {
        File d = bundle(tmp.newFolder(), GOOD);
        new File(d, "rec").mkdirs();
        Files.write(new File(d, "rec/m.tflite").toPath(), new byte[] {1, 2, 3});
        Bundle b = Bundle.open(d);
        try {
            b.verifiedFile("rec", b.artifact("rec", "tflite:fp32"));
            fail("accepted a wrong checksum");
        } catch (EsException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("sha256 does not match"));
        }
    }

    static GalleryIndex tinySignIndex() {
        GalleryIndex g = new GalleryIndex();
        g.bits = 64;
        g.dim = 64;
        g.method = GalleryIndex.SIGN;
        g.normalize = true;
        g.codes = java.nio.ByteBuffer.allocateDirect(0).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        g.ids = new long[0];
        g.deleted = new byte[0];
        g.labelOf = new int[0];
        g.labels = new ArrayList<String>();
        g.meta = new java.util.TreeMap<String, Object>();
        return g;
    }

    @Test
    public void editsAddRemoveCompactAndSaveAtomically() throws Exception {
        GalleryIndex g = tinySignIndex();
        Random r = new Random(5);
        float[][] x = new float[10][64];
        for (float[] row : x) for (int i = 0; i < 64; i++) row[i] = (float) r.nextGaussian();
        List<String> labels = new ArrayList<String>();
        for (int i = 0; i < 10; i++) labels.add(i % 2 == 0 ? "雪碧" : "可乐");
        long[] ids = g.add(x, labels, null);
        assertArrayEquals(new long[] {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, ids);
        File f = new File(tmp.getRoot(), "g.esidx");
        g.save(f);
        GalleryIndex.edit(f, new GalleryIndex.Edit<Integer>() {
            public Integer apply(GalleryIndex h) {
                return h.remove(new long[] {3, 4});
            }
        });
        GalleryIndex h = GalleryIndex.open(f);
        assertEquals(8, h.liveCount());
        List<List<GalleryIndex.Match>> m = h.query(new float[][] {x[5], x[4]}, 1, 0);
        assertEquals(5, m.get(0).get(0).id);
        assertEquals(0, m.get(0).get(0).distance);
        assertTrue(m.get(1).get(0).id != 4);
        try {
            h.remove(new long[] {4});
            fail("removed a removed id");
        } catch (EsException e) {
            assertTrue(e.getMessage().contains("not in the index"));
        }
        assertEquals(2, h.compact());
        assertEquals(8, h.count());
        assertEquals(10, h.nextId);
        String[] left = tmp.getRoot().list();
        Arrays.sort(left);
        assertArrayEquals(new String[] {".g.esidx.lock", "g.esidx"}, left); // no temporary file left
    }
}
