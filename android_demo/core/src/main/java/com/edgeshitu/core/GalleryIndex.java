package com.edgeshitu.core;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.Charset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.zip.CRC32;

/**
 * The gallery index file (docs/index-format.md, format 1.2; 1.0 / 1.1 files read too): read
 * through a read-only memory map (the codes are searched in place), hashed, searched (JNI kernel
 * or pure Java, same results), re-ranked, edited (add / remove / compact) and written back by
 * atomic replacement under the lock file {@code .NAME.lock}. Every check of the Python reader,
 * each failure one line.
 */
public final class GalleryIndex {
    public static final int VERSION_MAJOR = 1, VERSION_MINOR = 2;
    static final byte[] MAGIC = {'E', 'S', 'H', 'I', 'D', 'X', '\r', '\n'};
    static final int HEADER = 128, ENTRY = 32, ALIGN = 64, MAX_SECTIONS = 1024;
    static final int CODES = 1, IDS = 2, DELETED = 3, LABEL_OF = 4, LABELS = 5, HASH_MEAN = 6, HASH_PROJ = 7, META = 8,
            RERANK_VECTORS = 9;
    static final String[] NAMES = {"", "CODES", "IDS", "DELETED", "LABEL_OF", "LABELS", "HASH_MEAN", "HASH_PROJ", "META", "RERANK_VECTORS"};
    static final int SECTION_OPTIONAL = 1, FLAG_L2 = 1;
    public static final int SIGN = 0, ITQ = 1;
    static final Charset UTF8 = Charset.forName("UTF-8");

    public int bits, dim, method, minor = VERSION_MINOR;
    public boolean normalize;
    public long nextId, generation;
    int count;
    ByteBuffer codes; // word planes, little-endian u64: word w of row r at (w * stride + r) * 8
    long[] ids;
    byte[] deleted;
    int[] labelOf;
    List<String> labels;
    float[] mean, proj; // proj: dim x bits, row-major
    byte[] vectors; // count x dim int8, or null
    Map<String, Object> meta;
    public File path;

    // ------------------------------------------------------------------ reading
    public static GalleryIndex open(File f) {
        String where = f.getPath();
        if (!f.exists()) throw new EsException(where + ": no such index file; build one with 'edge-shitu index build'");
        if (f.isDirectory()) throw new EsException(where + ": is a directory, not an index file");
        if (!f.isFile()) throw new EsException(where + ": not a regular file; pass an index file");
        ByteBuffer buf;
        try {
            RandomAccessFile raf = new RandomAccessFile(f, "r");
            try {
                long size = raf.length();
                if (size > Integer.MAX_VALUE) throw new EsException(where + ": larger than 2 GB; not supported here");
                buf = raf.getChannel().map(FileChannel.MapMode.READ_ONLY, 0, size);
            } finally {
                raf.close();
            }
        } catch (IOException e) {
            throw new EsException(where + ": cannot read the index (" + e.getMessage() + ")");
        }
        GalleryIndex g = parse(buf, where);
        g.path = f;
        return g;
    }

    static long crc(ByteBuffer b, int off, int len) {
        CRC32 c = new CRC32(); // CRC32.update(ByteBuffer) needs Android API 26: copy in chunks
        ByteBuffer s = b.duplicate();
        s.limit(off + len).position(off);
        byte[] chunk = new byte[Math.min(len, 1 << 16)];
        while (s.hasRemaining()) {
            int n = Math.min(chunk.length, s.remaining());
            s.get(chunk, 0, n);
            c.update(chunk, 0, n);
        }
        return c.getValue();
    }

    static int align(long n) {
        return (int) ((n + ALIGN - 1) / ALIGN * ALIGN);
    }

    private static EsException corrupt(String where, String what) {
        return new EsException(where + ": " + what + "; the index is corrupt, restore or rebuild it");
    }

    private static EsException unknown(String where, int major, int minor, String what) {
        if (minor > VERSION_MINOR)
            return new EsException(where + ": index format " + major + "." + minor + " uses " + what + ", which this edge-shitu (format "
                    + VERSION_MAJOR + "." + VERSION_MINOR + ") does not know: upgrade edge-shitu or rebuild the index");
        return corrupt(where, what + " in a format " + major + "." + minor + " file");
    }

    static String kindName(int k) {
        return k >= 1 && k < NAMES.length ? NAMES[k] : "kind " + (k & 0xFFFFFFFFL);
    }

    public static GalleryIndex parse(ByteBuffer buf0, String where) {
        ByteBuffer buf = buf0.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        int size = buf.capacity();
        boolean magicOk = size >= HEADER;
        for (int i = 0; i < 8 && i < size; i++) if (buf.get(i) != MAGIC[i]) magicOk = false;
        if (!magicOk) {
            boolean prefix = true;
            for (int i = 0; i < Math.min(size, 8); i++) if (buf.get(i) != MAGIC[i]) prefix = false;
            if (prefix) throw new EsException(where + ": " + size + " bytes, shorter than an index header; the file is truncated: restore or rebuild it");
            throw new EsException(where + ": not an edge-shitu index (bad magic); pass a file written by 'edge-shitu index build'");
        }
        if (crc(buf, 0, HEADER - 4) != (buf.getInt(HEADER - 4) & 0xFFFFFFFFL)) throw corrupt(where, "header CRC mismatch");
        int major = buf.getShort(8) & 0xFFFF, minor = buf.getShort(10) & 0xFFFF;
        long headerBytes = buf.getInt(12) & 0xFFFFFFFFL;
        long bits = buf.getInt(16) & 0xFFFFFFFFL, codeBytes = buf.getInt(20) & 0xFFFFFFFFL;
        long count = buf.getLong(24), live = buf.getLong(32), nextId = buf.getLong(40);
        long method = buf.getInt(48) & 0xFFFFFFFFL, dim = buf.getInt(52) & 0xFFFFFFFFL, nsec = buf.getInt(56) & 0xFFFFFFFFL;
        long flags = buf.getInt(60) & 0xFFFFFFFFL, tableOff = buf.getLong(64), fileBytes = buf.getLong(72), generation = buf.getLong(80);
        long tableCrc = buf.getInt(88) & 0xFFFFFFFFL;
        if (major != VERSION_MAJOR)
            throw new EsException(where + ": index format version " + major + "." + minor + "; this edge-shitu reads " + VERSION_MAJOR
                    + ".x: upgrade edge-shitu or rebuild the index");
        boolean newer = minor > VERSION_MINOR;
        if (headerBytes != HEADER || tableOff != HEADER)
            throw corrupt(where, "header size " + headerBytes + " / table offset " + tableOff + ", expected " + HEADER);
        boolean reservedSet = false;
        for (int i = 92; i < 124; i++) if (buf.get(i) != 0) reservedSet = true;
        if ((!newer && reservedSet) || (minor < 2 && tableCrc != 0)) throw corrupt(where, "reserved header bytes are not zero");
        if (fileBytes != size)
            throw new EsException(where + ": file is " + size + " bytes but its header says " + fileBytes + "; the file is truncated or was altered: restore or rebuild it");
        if (nsec > MAX_SECTIONS || HEADER + nsec * ENTRY > size) throw corrupt(where, "section table of " + nsec + " entries does not fit the file");
        if (minor >= 2 && crc(buf, HEADER, (int) nsec * ENTRY) != tableCrc) throw corrupt(where, "section table CRC mismatch");
        if ((flags & ~FLAG_L2) != 0) throw unknown(where, major, minor, "header flags 0x" + Long.toHexString(flags));
        if (bits % 64 != 0 || bits < 64 || bits > 4096 || codeBytes * 8 != bits || (method != 0 && method != 1) || dim == 0
                || count < 0 || live < 0 || live > count || (method == SIGN && dim != bits))
            throw corrupt(where, "inconsistent header (bits=" + bits + ", method=" + method + ", dim=" + dim + ", count=" + count + ", live=" + live + ")");
        // section table
        Map<Integer, int[]> sec = new HashMap<Integer, int[]>(); // kind -> {offset, length}
        long pos = HEADER + nsec * ENTRY;
        for (int i = 0; i < nsec; i++) {
            int e = HEADER + i * ENTRY;
            int kind = buf.getInt(e);
            long scrc = buf.getInt(e + 4) & 0xFFFFFFFFL, off = buf.getLong(e + 8), len = buf.getLong(e + 16);
            long sflags = buf.getInt(e + 24) & 0xFFFFFFFFL, sres = buf.getInt(e + 28) & 0xFFFFFFFFL;
            String name = kindName(kind);
            if ((minor < 2 && sflags != 0) || (!newer && sres != 0)) throw corrupt(where, "reserved bytes of section " + name + "'s table entry are not zero");
            if ((sflags & ~SECTION_OPTIONAL) != 0) throw unknown(where, major, minor, "section flags 0x" + Long.toHexString(sflags));
            if (off != align(pos) || len < 0 || len > size - off) throw corrupt(where, "section " + name + " out of place (offset " + off + ", length " + len + ")");
            for (long p = pos; p < off; p++) if (buf.get((int) p) != 0) throw corrupt(where, "non-zero padding before section " + name);
            if (crc(buf, (int) off, (int) len) != scrc) throw corrupt(where, "CRC mismatch in section " + name);
            pos = off + len;
            if (sec.containsKey(kind)) throw corrupt(where, "section " + name + " appears twice");
            if (kind >= 1 && kind <= 9) sec.put(kind, new int[] {(int) off, (int) len});
            else if ((sflags & SECTION_OPTIONAL) == 0) throw unknown(where, major, minor, "section kind " + (kind & 0xFFFFFFFFL) + " (not marked optional)");
            else sec.put(kind, new int[] {(int) off, (int) len}); // skipped, but counted for "appears twice"
        }
        if (pos != size) throw corrupt(where, (size - pos) + " bytes after the last section");
        GalleryIndex g = new GalleryIndex();
        g.bits = (int) bits;
        g.dim = (int) dim;
        g.method = (int) method;
        g.minor = minor;
        g.count = (int) count;
        g.normalize = (flags & FLAG_L2) != 0;
        g.nextId = nextId;
        g.generation = generation;
        if (count > Integer.MAX_VALUE / 8) throw corrupt(where, "count " + count + " too large");
        boolean hasHash = sec.containsKey(HASH_MEAN) || sec.containsKey(HASH_PROJ);
        if (method == SIGN && hasHash) throw corrupt(where, "a sign-hashed index with ITQ parameters");
        boolean hasVec = sec.containsKey(RERANK_VECTORS);
        if ((minor == 0 && hasVec) || (minor == 1 && !hasVec))
            throw corrupt(where, "format 1." + minor + " " + (hasVec ? "with" : "without") + " RERANK_VECTORS");
        int n = (int) count, words = g.bits / 64, stride = stride(n);
        int[] s = need(sec, CODES, (long) words * stride * 8, where);
        ByteBuffer c = buf.duplicate();
        c.limit(s[0] + s[1]).position(s[0]);
        g.codes = c.slice().order(ByteOrder.LITTLE_ENDIAN);
        s = need(sec, IDS, (long) n * 8, where);
        g.ids = new long[n];
        for (int i = 0; i < n; i++) g.ids[i] = buf.getLong(s[0] + 8 * i);
        s = need(sec, DELETED, (n + 7) / 8, where);
        g.deleted = new byte[(n + 7) / 8];
        for (int i = 0; i < g.deleted.length; i++) g.deleted[i] = buf.get(s[0] + i);
        s = need(sec, LABEL_OF, (long) n * 4, where);
        g.labelOf = new int[n];
        for (int i = 0; i < n; i++) g.labelOf[i] = buf.getInt(s[0] + 4 * i);
        s = need(sec, LABELS, -1, where);
        g.labels = decodeLabels(buf, s[0], s[1], where);
        if (n % 8 != 0 && ((g.deleted[g.deleted.length - 1] & 0xFF) >> (n % 8)) != 0) throw corrupt(where, "deletion marks set past the last row");
        for (int i = 0; i < n; i++)
            if ((g.labelOf[i] & 0xFFFFFFFFL) >= g.labels.size()) throw corrupt(where, "a row points at a missing label");
        if (method == ITQ) {
            s = need(sec, HASH_MEAN, dim * 4, where);
            g.mean = new float[g.dim];
            for (int i = 0; i < g.dim; i++) g.mean[i] = buf.getFloat(s[0] + 4 * i);
            s = need(sec, HASH_PROJ, dim * bits * 4, where);
            g.proj = new float[g.dim * g.bits];
            for (int i = 0; i < g.proj.length; i++) g.proj[i] = buf.getFloat(s[0] + 4 * i);
            for (float v : g.mean) if (Float.isNaN(v) || Float.isInfinite(v)) throw corrupt(where, "hashing parameters are not finite");
            for (float v : g.proj) if (Float.isNaN(v) || Float.isInfinite(v)) throw corrupt(where, "hashing parameters are not finite");
        }
        if (hasVec) {
            s = need(sec, RERANK_VECTORS, (long) n * dim, where);
            g.vectors = new byte[n * g.dim];
            ByteBuffer v = buf.duplicate();
            v.position(s[0]);
            v.get(g.vectors);
        }
        g.meta = readMeta(buf, sec.get(META), g.bits, where);
        if (g.liveCount() != live) throw corrupt(where, "live count " + live + " disagrees with the deletion marks");
        return g;
    }

    private static int[] need(Map<Integer, int[]> sec, int kind, long length, String where) {
        int[] s = sec.get(kind);
        if (s == null) throw corrupt(where, "required section " + NAMES[kind] + " missing");
        if (length >= 0 && s[1] != length) throw corrupt(where, "section " + NAMES[kind] + " is " + s[1] + " bytes, expected " + length);
        return s;
    }

    static List<String> decodeLabels(ByteBuffer buf, int off, int len, String where) {
        if (len < 4) throw corrupt(where, "LABELS section too short");
        long n = buf.getInt(off) & 0xFFFFFFFFL;
        long need = 4 + 4 * (n + 1);
        if (len < need) throw corrupt(where, "LABELS offsets truncated");
        long[] o = new long[(int) n + 1];
        for (int i = 0; i <= n; i++) o[i] = buf.getInt(off + 4 + 4 * i) & 0xFFFFFFFFL;
        long blob = len - need;
        boolean bad = o[0] != 0 || o[(int) n] != blob;
        for (int i = 0; i < n; i++) if (o[i + 1] < o[i]) bad = true;
        if (bad) throw corrupt(where, "LABELS offsets inconsistent");
        List<String> out = new ArrayList<String>();
        java.nio.charset.CharsetDecoder dec = UTF8.newDecoder();
        for (int i = 0; i < n; i++) {
            ByteBuffer b = buf.duplicate();
            b.limit((int) (off + need + o[i + 1])).position((int) (off + need + o[i]));
            try {
                out.add(dec.decode(b).toString());
            } catch (java.nio.charset.CharacterCodingException e) {
                throw new EsException(where + ": a label is not UTF-8; rebuild the index");
            }
        }
        return out;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> readMeta(ByteBuffer buf, int[] s, int bits, String where) {
        if (s == null) return new TreeMap<String, Object>();
        byte[] raw = new byte[s[1]];
        ByteBuffer b = buf.duplicate();
        b.position(s[0]);
        b.get(raw);
        Object m;
        try {
            m = Json.parse(UTF8.newDecoder().decode(ByteBuffer.wrap(raw)).toString());
        } catch (Exception e) {
            throw corrupt(where, "META section is not JSON");
        }
        if (!(m instanceof Map)) throw corrupt(where, "META section is not a JSON object");
        Object t = ((Map<String, Object>) m).get("cosine_of_distance");
        if (t != null) {
            boolean ok = t instanceof List && ((List<?>) t).size() == bits + 1;
            if (ok) for (Object v : (List<?>) t)
                if (!(v instanceof Number) || !(((Number) v).doubleValue() >= -1.0 && ((Number) v).doubleValue() <= 1.0)) ok = false;
            if (!ok) throw corrupt(where, "META's cosine_of_distance is not bits + 1 numbers in [-1, 1]");
        }
        return (Map<String, Object>) m;
    }

    static int stride(int count) {
        return (count + 7) / 8 * 8;
    }

    // ------------------------------------------------------------------ properties
    public int count() {
        return count;
    }

    public int words() {
        return bits / 64;
    }

    public boolean isDeleted(int row) {
        return ((deleted[row >> 3] >> (row & 7)) & 1) != 0;
    }

    public int liveCount() {
        int n = 0;
        for (int r = 0; r < count; r++) if (!isDeleted(r)) n++;
        return n;
    }

    public long id(int row) {
        return ids[row];
    }

    public String label(int row) {
        return labels.get(labelOf[row]);
    }

    public boolean hasRerankVectors() {
        return vectors != null;
    }

    public Map<String, Object> meta() {
        return meta;
    }

    /** The match score of a Hamming distance: META's cosine_of_distance, else cos(pi d / bits). */
    public double scoreOfDistance(int d) {
        Object t = meta == null ? null : meta.get("cosine_of_distance");
        if (t instanceof List && ((List<?>) t).size() == bits + 1)
            return ((Number) ((List<?>) t).get(Math.min(Math.max(d, 0), bits))).doubleValue();
        return Math.cos(Math.PI * d / bits);
    }

    /** word w of row r, as the file stores it (little-endian u64) */
    long word(int w, int r) {
        return codes.getLong((w * stride(count) + r) * 8);
    }

    // ------------------------------------------------------------------ hashing
    static float[] checkFeature(float[] x, int dim, String what) {
        if (x.length != dim)
            throw new EsException(what + ": rows have " + x.length + " values but the index expects " + dim + "; use features from the same extractor the index was built with");
        for (float v : x) if (Float.isNaN(v) || Float.isInfinite(v)) throw new EsException(what + ": contains NaN or infinite values; check the extractor output");
        return x;
    }

    /** z: the query's projection (its signs are the code bits). */
    public float[] project(float[] x0) {
        float[] x = checkFeature(x0, dim, "query features");
        if (normalize) {
            double ss = 0;
            for (float v : x) ss += (double) v * v;
            float nrm = Math.max((float) Math.sqrt(ss), 1e-12f);
            float[] y = new float[dim];
            for (int i = 0; i < dim; i++) y[i] = x[i] / nrm;
            x = y;
        }
        if (method == SIGN) return x.clone();
        float[] z = new float[bits];
        double[] acc = new double[bits];
        for (int i = 0; i < dim; i++) {
            float c = x[i] - mean[i];
            int o = i * bits;
            for (int j = 0; j < bits; j++) acc[j] += (double) c * proj[o + j];
        }
        for (int j = 0; j < bits; j++) z[j] = (float) acc[j];
        return z;
    }

    /** The packed code (MSB first) of a feature, as bytes. */
    public byte[] encode(float[] x) {
        float[] z = project(x);
        byte[] code = new byte[bits / 8];
        for (int j = 0; j < bits; j++) if (z[j] > 0) code[j >> 3] |= (byte) (0x80 >> (j & 7));
        return code;
    }

    static long[] codeWords(byte[] code) {
        ByteBuffer b = ByteBuffer.wrap(code).order(ByteOrder.LITTLE_ENDIAN);
        long[] w = new long[code.length / 8];
        for (int i = 0; i < w.length; i++) w[i] = b.getLong(8 * i);
        return w;
    }

    // ------------------------------------------------------------------ search
    /** Which kernel searches: "native-avx2" etc. when the JNI library is loaded, else "java". */
    public String kernel() {
        return Hamming.kernelName();
    }

    /** Top-k (distance, row) over live rows for packed query codes; rows padded with -1. */
    public void searchCodes(byte[][] queries, int k, int[][] dist, long[][] rows) {
        long[] q = new long[queries.length * words()];
        for (int i = 0; i < queries.length; i++) {
            if (queries[i].length != bits / 8) throw new EsException("query codes: expected rows of " + bits / 8 + " bytes, got " + queries[i].length);
            System.arraycopy(codeWords(queries[i]), 0, q, i * words(), words());
        }
        boolean anyDeleted = liveCount() != count;
        Hamming.topk(codes, count, stride(count), words(), q, queries.length, anyDeleted ? deleted : null, k, dist, rows);
    }

    /** One match of a query. */
    public static final class Match {
        public final long id;
        public final String label;
        public final int distance;
        public final float score; // NaN without re-ranking
        public final int row;

        Match(long id, String label, int distance, float score, int row) {
            this.id = id;
            this.label = label;
            this.distance = distance;
            this.score = score;
            this.row = row;
        }
    }

    public int capK(int k, String what) {
        if (k < 1) throw new EsException(what + "=" + k + ": must be at least 1");
        return Math.min(k, liveCount());
    }

    /** Best-first matches of each query (GalleryIndex.query in Python: k, then the re-rank shortlist). */
    public List<List<Match>> query(float[][] queries, int k0, int rerank0) {
        int k = capK(k0, "k");
        if (rerank0 < 0) throw new EsException("rerank=" + rerank0 + ": must be 0 (off) or a positive number of items");
        int rerank = Math.min(rerank0, liveCount());
        List<List<Match>> out = new ArrayList<List<Match>>();
        byte[][] codes = new byte[queries.length][];
        for (int i = 0; i < queries.length; i++) codes[i] = encode(queries[i]);
        if (k == 0) {
            for (int i = 0; i < queries.length; i++) out.add(new ArrayList<Match>());
            return out;
        }
        int shortlist = rerank > k ? rerank : k;
        int[][] dist = new int[queries.length][];
        long[][] rows = new long[queries.length][];
        searchCodes(codes, shortlist, dist, rows);
        for (int i = 0; i < queries.length; i++) {
            List<Match> ms = new ArrayList<Match>();
            if (rerank == 0) {
                for (int j = 0; j < k; j++) if (rows[i][j] >= 0) ms.add(match((int) rows[i][j], dist[i][j], Float.NaN));
            } else {
                ms = rerank(queries[i], dist[i], rows[i], k);
            }
            out.add(ms);
        }
        return out;
    }

    private Match match(int r, int d, float score) {
        return new Match(ids[r], label(r), d, score, r);
    }

    private List<Match> rerank(float[] x, int[] dist, long[] rows, int k) {
        final List<int[]> cand = new ArrayList<int[]>(); // {row, dist}
        for (int j = 0; j < rows.length; j++) if (rows[j] >= 0) cand.add(new int[] {(int) rows[j], dist[j]});
        final float[] score = new float[cand.size()];
        float[] z = vectors == null ? project(x) : null;
        double xn = 0;
        for (float v : x) xn += (double) v * v;
        float xnorm = (float) Math.sqrt(xn);
        for (int c = 0; c < cand.size(); c++) {
            int r = cand.get(c)[0];
            if (vectors != null) {
                double dot = 0, gn = 0;
                for (int i = 0; i < dim; i++) {
                    int g = vectors[r * dim + i];
                    dot += (double) g * x[i];
                    gn += (double) g * g;
                }
                score[c] = (float) dot / Math.max((float) Math.sqrt(gn) * xnorm, 1e-12f);
            } else {
                double s = 0;
                for (int j = 0; j < bits; j++) {
                    boolean bit = ((word(j / 64, r) >>> (8 * ((j % 64) / 8))) & (0x80 >> (j % 8))) != 0;
                    s += bit ? z[j] : -z[j];
                }
                score[c] = (float) s;
            }
        }
        Integer[] order = new Integer[cand.size()];
        for (int c = 0; c < order.length; c++) order[c] = c;
        Arrays.sort(order, new java.util.Comparator<Integer>() {
            public int compare(Integer a, Integer b) {
                if (score[a] != score[b]) return score[a] > score[b] ? -1 : 1;
                if (cand.get(a)[1] != cand.get(b)[1]) return cand.get(a)[1] < cand.get(b)[1] ? -1 : 1;
                return Integer.compare(cand.get(a)[0], cand.get(b)[0]);
            }
        });
        List<Match> ms = new ArrayList<Match>();
        for (int j = 0; j < Math.min(k, order.length); j++) {
            int c = order[j];
            ms.add(match(cand.get(c)[0], cand.get(c)[1], score[c]));
        }
        return ms;
    }

    // ------------------------------------------------------------------ edits
    Map<Long, Integer> liveIdRows() {
        Map<Long, Integer> m = new HashMap<Long, Integer>();
        for (int r = 0; r < count; r++) if (!isDeleted(r)) m.put(ids[r], r);
        return m;
    }

    /** int8 copies of features for re-ranking: round(x / max|x| * 127). */
    static byte[] quantizeRow(float[] x) {
        float peak = 0;
        for (float v : x) peak = Math.max(peak, Math.abs(v));
        byte[] out = new byte[x.length];
        for (int i = 0; i < x.length; i++) {
            double q = Math.rint(x[i] / Math.max(peak, 1e-30f) * 127f);
            out[i] = (byte) Math.max(-127, Math.min(127, q));
        }
        return out;
    }

    /** Appends items (features hashed with the stored parameters); returns their ids. */
    public long[] add(float[][] features, List<String> newLabels, long[] newIds) {
        int n = features.length;
        for (float[] f : features) checkFeature(f, dim, "features");
        if (newLabels.size() != n) throw new EsException("labels: " + newLabels.size() + " labels for " + n + " feature rows; give one label per row");
        for (String s : newLabels)
            if (s.indexOf('\n') >= 0 || s.indexOf('\r') >= 0) throw new EsException("labels: a label contains a line break; labels must be single lines");
        long[] assigned = new long[n];
        if (newIds == null) {
            for (int i = 0; i < n; i++) assigned[i] = nextId + i;
        } else {
            if (newIds.length != n) throw new EsException("ids: " + newIds.length + " ids for " + n + " feature rows; give one id per row");
            Set<Long> seen = new HashSet<Long>();
            Map<Long, Integer> live = liveIdRows();
            for (long v : newIds) {
                if (v < 0) throw new EsException("ids: must be integers between 0 and " + Long.MAX_VALUE + " (got " + v + ")");
                if (!seen.add(v)) throw new EsException("ids: id " + v + " given twice; ids must be unique");
                if (live.containsKey(v)) throw new EsException("ids: id " + v + " is already in the index; remove it first or pick another id");
            }
            assigned = newIds.clone();
        }
        int old = count, total = old + n, words = words();
        ByteBuffer planes = ByteBuffer.allocateDirect(words * stride(total) * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (int w = 0; w < words; w++)
            for (int r = 0; r < old; r++) planes.putLong((w * stride(total) + r) * 8, word(w, r));
        for (int i = 0; i < n; i++) {
            long[] cw = codeWords(encode(features[i]));
            for (int w = 0; w < words; w++) planes.putLong((w * stride(total) + old + i) * 8, cw[w]);
        }
        Map<String, Integer> labelIndex = new HashMap<String, Integer>();
        for (int i = labels.size() - 1; i >= 0; i--) labelIndex.put(labels.get(i), i);
        List<String> lab = new ArrayList<String>(labels);
        int[] lo = Arrays.copyOf(labelOf, total);
        for (int i = 0; i < n; i++) {
            String s = newLabels.get(i);
            Integer li = labelIndex.get(s);
            if (li == null) {
                li = lab.size();
                labelIndex.put(s, li);
                lab.add(s);
            }
            lo[old + i] = li;
        }
        long[] id2 = Arrays.copyOf(ids, total);
        System.arraycopy(assigned, 0, id2, old, n);
        byte[] del = Arrays.copyOf(deleted, (total + 7) / 8);
        if (vectors != null) {
            byte[] v2 = Arrays.copyOf(vectors, total * dim);
            for (int i = 0; i < n; i++) System.arraycopy(quantizeRow(features[i]), 0, v2, (old + i) * dim, dim);
            vectors = v2;
        }
        codes = planes;
        ids = id2;
        deleted = del;
        labelOf = lo;
        labels = lab;
        count = total;
        for (long v : assigned) nextId = Math.max(nextId, v + 1);
        generation++;
        return assigned;
    }

    /** Marks items deleted (all or nothing); returns how many. */
    public int remove(long[] which) {
        Map<Long, Integer> live = liveIdRows();
        List<Integer> rows = new ArrayList<Integer>();
        for (long v : which) {
            Integer r = live.remove(v);
            if (r == null) throw new EsException("remove: id " + v + " is not in the index (or was already removed); see 'edge-shitu index info' for the ids");
            rows.add(r);
        }
        if (rows.isEmpty()) return 0;
        deleted = deleted.clone();
        for (int r : rows) deleted[r >> 3] |= (byte) (1 << (r & 7));
        generation++;
        return rows.size();
    }

    /** Ids of the live items with this label. */
    public long[] idsOfLabel(String label) {
        List<Long> out = new ArrayList<Long>();
        for (int r = 0; r < count; r++) if (!isDeleted(r) && label(r).equals(label)) out.add(ids[r]);
        long[] a = new long[out.size()];
        for (int i = 0; i < a.length; i++) a[i] = out.get(i);
        return a;
    }

    /** label -> live ids, in storage order. */
    public Map<String, List<Long>> items() {
        Map<String, List<Long>> m = new java.util.LinkedHashMap<String, List<Long>>();
        for (int r = 0; r < count; r++) {
            if (isDeleted(r)) continue;
            List<Long> l = m.get(label(r));
            if (l == null) m.put(label(r), l = new ArrayList<Long>());
            l.add(ids[r]);
        }
        return m;
    }

    /** Drops deleted rows (ids kept); returns how many rows were dropped. */
    public int compact() {
        List<Integer> keep = new ArrayList<Integer>();
        for (int r = 0; r < count; r++) if (!isDeleted(r)) keep.add(r);
        int dropped = count - keep.size();
        if (dropped == 0) return 0;
        int n = keep.size(), words = words();
        ByteBuffer planes = ByteBuffer.allocateDirect(words * stride(n) * 8).order(ByteOrder.LITTLE_ENDIAN);
        long[] id2 = new long[n];
        int[] lo = new int[n];
        byte[] v2 = vectors == null ? null : new byte[n * dim];
        boolean[] used = new boolean[labels.size()];
        for (int i = 0; i < n; i++) {
            int r = keep.get(i);
            for (int w = 0; w < words; w++) planes.putLong((w * stride(n) + i) * 8, word(w, r));
            id2[i] = ids[r];
            lo[i] = labelOf[r];
            used[labelOf[r]] = true;
            if (v2 != null) System.arraycopy(vectors, r * dim, v2, i * dim, dim);
        }
        int[] remap = new int[labels.size()];
        List<String> lab = new ArrayList<String>();
        for (int i = 0; i < used.length; i++) if (used[i]) { remap[i] = lab.size(); lab.add(labels.get(i)); }
        for (int i = 0; i < n; i++) lo[i] = remap[lo[i]];
        codes = planes;
        ids = id2;
        labelOf = lo;
        labels = lab;
        vectors = v2;
        deleted = new byte[(n + 7) / 8];
        count = n;
        generation++;
        return dropped;
    }

    // ------------------------------------------------------------------ writing
    /** The file's bytes (format 1.2). */
    public byte[] toBytes() {
        List<int[]> kinds = new ArrayList<int[]>();
        List<byte[]> payloads = new ArrayList<byte[]>();
        int words = words(), st = stride(count);
        ByteBuffer cb = ByteBuffer.allocate(words * st * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (int w = 0; w < words; w++) for (int r = 0; r < count; r++) cb.putLong((w * st + r) * 8, word(w, r));
        add(kinds, payloads, CODES, cb.array());
        ByteBuffer b = ByteBuffer.allocate(count * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (long v : ids) b.putLong(v);
        add(kinds, payloads, IDS, b.array());
        add(kinds, payloads, DELETED, deleted.clone());
        b = ByteBuffer.allocate(count * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : labelOf) b.putInt(v);
        add(kinds, payloads, LABEL_OF, b.array());
        add(kinds, payloads, LABELS, encodeLabels(labels));
        if (method == ITQ) {
            b = ByteBuffer.allocate(dim * 4).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : mean) b.putFloat(v);
            add(kinds, payloads, HASH_MEAN, b.array());
            b = ByteBuffer.allocate(proj.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : proj) b.putFloat(v);
            add(kinds, payloads, HASH_PROJ, b.array());
        }
        if (vectors != null) add(kinds, payloads, RERANK_VECTORS, vectors.clone());
        if (meta != null && !meta.isEmpty()) add(kinds, payloads, META, PyJson.dumps(meta).getBytes(UTF8));
        int nsec = payloads.size();
        int tableEnd = HEADER + ENTRY * nsec;
        int[] offsets = new int[nsec];
        int off = align(tableEnd);
        ByteBuffer table = ByteBuffer.allocate(ENTRY * nsec).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < nsec; i++) {
            CRC32 c = new CRC32();
            c.update(payloads.get(i));
            table.putInt(kinds.get(i)[0]).putInt((int) c.getValue()).putLong(off).putLong(payloads.get(i).length).putInt(0).putInt(0);
            offsets[i] = off;
            off = align(off + payloads.get(i).length);
        }
        int fileBytes = offsets[nsec - 1] + payloads.get(nsec - 1).length;
        ByteBuffer out = ByteBuffer.allocate(fileBytes).order(ByteOrder.LITTLE_ENDIAN);
        CRC32 tc = new CRC32();
        tc.update(table.array());
        out.put(MAGIC).putShort((short) VERSION_MAJOR).putShort((short) VERSION_MINOR).putInt(HEADER).putInt(bits).putInt(bits / 8)
                .putLong(count).putLong(liveCount()).putLong(nextId).putInt(method).putInt(dim).putInt(nsec)
                .putInt(normalize ? FLAG_L2 : 0).putLong(HEADER).putLong(fileBytes).putLong(generation).putInt((int) tc.getValue());
        CRC32 hc = new CRC32();
        hc.update(out.array(), 0, HEADER - 4);
        out.putInt(HEADER - 4, (int) hc.getValue());
        out.position(HEADER);
        out.put(table.array());
        for (int i = 0; i < nsec; i++) {
            out.position(offsets[i]);
            out.put(payloads.get(i));
        }
        return out.array();
    }

    private static void add(List<int[]> kinds, List<byte[]> payloads, int kind, byte[] p) {
        kinds.add(new int[] {kind});
        payloads.add(p);
    }

    static byte[] encodeLabels(List<String> labels) {
        List<byte[]> blobs = new ArrayList<byte[]>();
        int total = 0;
        for (String s : labels) { byte[] b = s.getBytes(UTF8); blobs.add(b); total += b.length; }
        ByteBuffer b = ByteBuffer.allocate(4 + 4 * (labels.size() + 1) + total).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(labels.size());
        int o = 0;
        b.putInt(0);
        for (byte[] x : blobs) { o += x.length; b.putInt(o); }
        for (byte[] x : blobs) b.put(x);
        return b.array();
    }

    /** Writes atomically: a temporary file beside the target, fsync, rename, fsync of the folder. */
    public void save(File target) {
        if (minor > VERSION_MINOR) // its unknown (optional) sections would be dropped without a word
            throw new EsException((path != null ? path : target) + ": index format " + VERSION_MAJOR + "." + minor
                    + " was written by a newer edge-shitu; this one would drop what it does not know: edit it with that version");
        byte[] bytes = toBytes();
        File dir = target.getAbsoluteFile().getParentFile();
        File tmp = new File(dir, "." + target.getName() + ".tmp-" + Long.toHexString(new Random().nextLong() & 0xFFFFFFFFL));
        try {
            FileOutputStream out = new FileOutputStream(tmp);
            try {
                out.write(bytes);
                out.getFD().sync();
            } finally {
                out.close();
            }
            if (target.exists()) copyMode(target, tmp);
            if (!tmp.renameTo(target)) throw new IOException("cannot rename " + tmp + " to " + target);
            fsyncDir(dir);
        } catch (IOException e) {
            tmp.delete();
            throw new EsException(target + ": cannot write the index (" + e.getMessage() + ")");
        }
        path = target;
        minor = VERSION_MINOR;
    }

    /*
     * java.nio.file exists on the host JVM and on Android 8+ (API 26), not on API 23-25: called by
     * reflection, so the core still compiles against API 23; where it is missing, the folder is not
     * fsynced (the rename is atomic anyway) and the new file gets the default mode.
     */
    private static Object path(File f) throws Exception {
        return File.class.getMethod("toPath").invoke(f);
    }

    private static void copyMode(File from, File to) {
        try {
            Class<?> files = Class.forName("java.nio.file.Files");
            Class<?> pathClass = Class.forName("java.nio.file.Path");
            Class<?> optionArray = Class.forName("[Ljava.nio.file.LinkOption;");
            Object perms = files.getMethod("getPosixFilePermissions", pathClass, optionArray)
                    .invoke(null, path(from), java.lang.reflect.Array.newInstance(optionArray.getComponentType(), 0));
            files.getMethod("setPosixFilePermissions", pathClass, Set.class).invoke(null, path(to), perms);
        } catch (Throwable ignored) {
            // not a POSIX file system, or Android before API 26
        }
    }

    private static void fsyncDir(File dir) {
        try {
            Class<?> pathClass = Class.forName("java.nio.file.Path");
            Class<?> openOption = Class.forName("java.nio.file.OpenOption");
            Object read = Class.forName("java.nio.file.StandardOpenOption").getField("READ").get(null);
            Object options = java.lang.reflect.Array.newInstance(openOption, 1);
            java.lang.reflect.Array.set(options, 0, read);
            FileChannel d = (FileChannel) FileChannel.class.getMethod("open", pathClass, options.getClass()).invoke(null, path(dir), options);
            try {
                d.force(true);
            } finally {
                d.close();
            }
        } catch (Throwable ignored) {
            // a folder cannot be opened for fsync here (the rename is still atomic)
        }
    }

    /** An edit of an index file: lock {@code .NAME.lock}, open, change, save atomically, unlock. */
    public interface Edit<T> {
        T apply(GalleryIndex index);
    }

    public static <T> T edit(File file, Edit<T> change) {
        if (!file.exists()) throw new EsException(file + ": no such index file; build one with 'edge-shitu index build'");
        File lock = new File(file.getAbsoluteFile().getParentFile(), "." + file.getName() + ".lock");
        try {
            RandomAccessFile raf = new RandomAccessFile(lock, "rw");
            try {
                // flock, as the Python writers take it (docs/index-format.md), through the JNI library;
                // without it, Java's own lock (fcntl: excludes other Java/app writers, not Python's flock)
                boolean flocked = false;
                if (NativeHamming.available()) {
                    try {
                        int rc = NativeHamming.flock(raf.getFD(), 2);
                        if (rc != 0) throw new IOException("flock failed (errno " + (-rc) + ")");
                        flocked = true;
                    } catch (UnsatisfiedLinkError old) {
                        flocked = false; // a library built before flock was added
                    }
                }
                FileLock l = flocked ? null : raf.getChannel().lock();
                try {
                    GalleryIndex g = open(file);
                    T result = change.apply(g);
                    g.save(file);
                    return result;
                } finally {
                    if (l != null) l.release();
                    else NativeHamming.flock(raf.getFD(), 8);
                }
            } finally {
                raf.close();
            }
        } catch (IOException e) {
            throw new EsException(lock + ": cannot take the index lock (" + e.getMessage() + ")");
        }
    }
}
