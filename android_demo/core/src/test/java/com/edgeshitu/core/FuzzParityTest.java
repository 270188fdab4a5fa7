package com.edgeshitu.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assume.assumeTrue;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * Mutated golden files (bit flips, overwrites, truncations; raw and with every CRC recomputed),
 * written by tests/test_android.py with the Python reader's verdict: the Java reader accepts
 * exactly the files Python accepts, reads the same rows from them, and refuses the others in
 * one line.
 */
public class FuzzParityTest {
    @SuppressWarnings("unchecked")
    @Test
    public void javaAcceptsExactlyWhatPythonAccepts() throws Exception {
        String d = System.getProperty("fuzz.dir", "");
        assumeTrue("no mutated files given (-Dfuzz.dir, written by tests/test_android.py)", !d.isEmpty());
        File dir = new File(d);
        Map<String, Object> verdicts = (Map<String, Object>) Json.parse(new String(Files.readAllBytes(new File(dir, "verdicts.json").toPath()), "UTF-8"));
        int accepted = 0;
        List<String> wrong = new ArrayList<String>();
        for (Map.Entry<String, Object> e : verdicts.entrySet()) {
            Map<String, Object> v = (Map<String, Object>) e.getValue();
            byte[] raw = Files.readAllBytes(new File(dir, e.getKey()).toPath());
            GalleryIndex g = null;
            String err = null;
            try {
                g = GalleryIndex.parse(ByteBuffer.wrap(raw), e.getKey());
            } catch (EsException x) {
                err = x.getMessage();
                assertTrue(err, !err.contains("\n") && err.startsWith(e.getKey() + ": "));
            } catch (RuntimeException x) {
                wrong.add(e.getKey() + ": " + x);
                continue;
            }
            boolean ok = Boolean.TRUE.equals(v.get("ok"));
            if (ok != (g != null)) {
                wrong.add(e.getKey() + ": python " + (ok ? "accepts" : "refuses (" + v.get("error") + ")") + ", java " + (g != null ? "accepts" : "refuses (" + err + ")"));
                continue;
            }
            if (g == null) continue;
            accepted++;
            List<Object> ids = (List<Object>) v.get("ids");
            List<Object> labels = (List<Object>) v.get("labels");
            assertEquals(e.getKey(), ((Number) v.get("live")).intValue(), g.liveCount());
            assertEquals(e.getKey(), ids.size(), g.count());
            for (int r = 0; r < g.count(); r++) {
                assertEquals(e.getKey(), ((Number) ids.get(r)).longValue(), g.id(r));
                assertEquals(e.getKey(), labels.get(r), g.label(r));
            }
        }
        assertTrue(wrong.size() + " disagreements, e.g. " + (wrong.isEmpty() ? "" : wrong.subList(0, Math.min(5, wrong.size()))), wrong.isEmpty());
        assertTrue("some mutated files must still read", accepted > 0);
    }
}
