package com.edgeshitu.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;
import static org.junit.Assume.assumeTrue;

import java.io.File;
import java.nio.file.Files;
import java.util.List;
import java.util.Map;
import org.junit.Before;
import org.junit.Test;

/**
 * The golden index files of tests/golden_files.py (the same files the Python and C readers are
 * tested against): every readable one gives Python's search results bit for bit, with the C
 * kernel (JNI) and in pure Java; the 1.2 files are written back byte for byte; a file of an
 * unknown required section is refused, saying to upgrade.
 */
public class GoldenIndexTest {
    File dir;
    Map<String, Object> expected;

    @SuppressWarnings("unchecked")
    @Before
    public void setUp() throws Exception {
        String d = System.getProperty("golden.dir", "");
        assumeTrue("golden files not given (-Dgolden.dir, written by tests/golden_files.py)", !d.isEmpty());
        dir = new File(d);
        expected = (Map<String, Object>) Json.parse(new String(Files.readAllBytes(new File(dir, "expected.json").toPath()), "UTF-8"));
        String lib = System.getProperty("jni.hamming", "");
        if (!lib.isEmpty() && new File(lib).exists()) NativeHamming.load(new File(lib).getAbsolutePath());
        if (!System.getProperty("jni.required", "").isEmpty())
            assertTrue("the JNI kernel " + lib + " did not load: " + NativeHamming.whyNot(), NativeHamming.available());
    }

    static byte[] hex(String s) {
        byte[] b = new byte[s.length() / 2];
        for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        return b;
    }

    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b) s.append(String.format("%02x", x & 0xFF));
        return s.toString();
    }

    @SuppressWarnings("unchecked")
    void checkFile(String name, Map<String, Object> e) {
        GalleryIndex g = GalleryIndex.open(new File(dir, name));
        List<Object> qhex = (List<Object>) e.get("query_codes_hex");
        int k = ((Number) e.get("k")).intValue();
        if (e.containsKey("queries")) { // the Java hash of the float queries gives Python's codes
            List<Object> qs = (List<Object>) e.get("queries");
            for (int i = 0; i < qs.size(); i++) assertEquals(name + " query " + i, qhex.get(i), hex(g.encode(floats((List<Object>) qs.get(i)))));
        }
        byte[][] codes = new byte[qhex.size()][];
        for (int i = 0; i < codes.length; i++) codes[i] = hex((String) qhex.get(i));
        for (boolean java : new boolean[] {true, false}) {
            if (!java && !NativeHamming.available()) continue;
            Hamming.forceJava(java);
            try {
                int[][] dist = new int[codes.length][];
                long[][] rows = new long[codes.length][];
                g.searchCodes(codes, k, dist, rows);
                for (int i = 0; i < codes.length; i++) {
                    List<Object> ed = (List<Object>) ((List<Object>) e.get("distances")).get(i);
                    List<Object> er = (List<Object>) ((List<Object>) e.get("rows")).get(i);
                    for (int j = 0; j < k; j++) {
                        assertEquals(name + " dist " + (java ? "java" : "native"), ((Number) ed.get(j)).intValue(), dist[i][j]);
                        assertEquals(name + " row " + (java ? "java" : "native"), ((Number) er.get(j)).longValue(), rows[i][j]);
                    }
                }
            } finally {
                Hamming.forceJava(false);
            }
        }
        if (e.containsKey("rerank")) {
            List<Object> qs = (List<Object>) e.get("queries");
            float[][] q = new float[qs.size()][];
            for (int i = 0; i < q.length; i++) q[i] = floats((List<Object>) qs.get(i));
            List<List<GalleryIndex.Match>> res = g.query(q, k, ((Number) e.get("rerank")).intValue());
            for (int i = 0; i < q.length; i++) {
                List<Object> er = (List<Object>) ((List<Object>) e.get("rerank_rows")).get(i);
                List<Object> es = (List<Object>) ((List<Object>) e.get("rerank_scores")).get(i);
                for (int j = 0; j < k; j++) {
                    assertEquals(name + " rerank row", ((Number) er.get(j)).longValue(), res.get(i).get(j).row);
                    assertEquals(name + " rerank score", ((Number) es.get(j)).doubleValue(), res.get(i).get(j).score, 2e-6);
                }
            }
        }
    }

    static float[] floats(List<Object> l) {
        float[] f = new float[l.size()];
        for (int i = 0; i < f.length; i++) f[i] = ((Number) l.get(i)).floatValue();
        return f;
    }

    @SuppressWarnings("unchecked")
    @Test
    public void everyReadableGoldenFileGivesPythonsResults() {
        assertTrue(expected.size() >= 7);
        for (Map.Entry<String, Object> en : expected.entrySet()) checkFile(en.getKey(), (Map<String, Object>) en.getValue());
    }

    @Test
    public void currentVersionFilesAreWrittenBackByteForByte() throws Exception {
        for (String name : new String[] {"sign512.esidx", "itq128.esidx", "itq128_rerank.esidx"}) {
            byte[] raw = Files.readAllBytes(new File(dir, name).toPath());
            assertArrayEquals(name, raw, GalleryIndex.open(new File(dir, name)).toBytes());
        }
    }

    @Test
    public void oldVersionsReadAndUpgradeOnWrite() throws Exception {
        String[][] pairs = {{"sign512_v1.0.esidx", "sign512.esidx"}, {"itq128_v1.0.esidx", "itq128.esidx"}, {"itq128_rerank_v1.1.esidx", "itq128_rerank.esidx"}};
        for (String[] p : pairs) {
            GalleryIndex old = GalleryIndex.open(new File(dir, p[0]));
            assertTrue(p[0], old.minor < 2);
            assertArrayEquals(p[0] + " rewritten as 1.2", Files.readAllBytes(new File(dir, p[1]).toPath()), old.toBytes());
        }
    }

    @Test
    public void unknownRequiredSectionIsRefusedSayingUpgrade() {
        try {
            GalleryIndex.open(new File(dir, "future1.3_required.esidx"));
            fail("read a file with an unknown required section");
        } catch (EsException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("upgrade"));
            assertTrue(e.getMessage(), !e.getMessage().contains("\n"));
        }
    }

    @Test
    public void aNewerMinorFileReadsButIsNotRewritten() throws Exception {
        File f = new File(dir, "future1.3_optional.esidx");
        byte[] before = Files.readAllBytes(f.toPath());
        GalleryIndex g = GalleryIndex.open(f);
        assertEquals(3, g.minor);
        try {
            g.remove(new long[] {g.id(0)});
            g.save(f);
            fail("rewrote a 1.3 file");
        } catch (EsException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("newer edge-shitu"));
        }
        assertArrayEquals(before, Files.readAllBytes(f.toPath()));
    }

    @Test
    public void anyFlippedByteIsRefusedInOneLine() throws Exception {
        byte[] raw = Files.readAllBytes(new File(dir, "itq128_rerank.esidx").toPath());
        int refused = 0;
        for (int pos = 0; pos < raw.length; pos += 7) {
            byte[] b = raw.clone();
            b[pos] ^= 0x10;
            try {
                GalleryIndex.parse(java.nio.ByteBuffer.wrap(b), "x.esidx");
            } catch (EsException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("x.esidx: ") && !e.getMessage().contains("\n"));
                refused++;
            }
        }
        assertEquals("every flipped byte refused", (raw.length + 6) / 7, refused);
    }
}
