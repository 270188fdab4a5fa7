package com.edgeshitu.core;

/**
 * A .tflite model run by LiteRT's C API through the project's small native engine
 * (android_demo/app/src/main/cpp/esengine.c, library {@code libesengine.so}). The engine opens
 * LiteRT itself ({@code libLiteRt.so}: on a phone the one of LiteRT's Maven package, on the host
 * the one of the ai-edge-litert wheel), so the code the tests run is the code the phone runs.
 */
public final class LiteRt implements Model {
    private static volatile String loadError = "the native engine (libesengine.so) is not loaded";
    private static volatile boolean ready = false;

    private static final String[] STAGES = {"", "loading LiteRT", "creating the environment", "loading the model",
        "reading its signature", "reading a tensor", "reading a tensor type", "setting options", "compiling the model",
        "reading buffer requirements", "creating a tensor buffer", "too many open models", "reading its tensor types (only float32 inputs and outputs are supported)",
        "reading its inputs/outputs", "locking a tensor buffer", "running the model", "checking input sizes"};

    /**
     * Loads the engine library and LiteRT. engine: a path (host) or a library name (Android);
     * litert: the path or soname of libLiteRt.so. Returns null, or why it failed (one line).
     */
    public static synchronized String load(String engine, String litert) {
        if (ready) return null;
        try {
            if (engine.indexOf('/') >= 0) System.load(engine); else System.loadLibrary(engine);
        } catch (Throwable t) {
            loadError = "cannot load the inference engine " + engine + " (" + t.getMessage() + ")";
            return loadError;
        }
        String e;
        try {
            e = nativeLoad(litert);
        } catch (Throwable t) {
            e = t.toString();
        }
        if (e != null) {
            loadError = "cannot load LiteRT " + litert + " (" + e + ")";
            return loadError;
        }
        ready = true;
        return null;
    }

    public static boolean ready() {
        return ready;
    }

    public static String loadError() {
        return loadError;
    }

    private int handle;
    private final String path;
    private final int[][] inShapes, outShapes;
    private final String[] inNames, outNames;

    public LiteRt(String path, int threads) {
        this.path = path;
        if (!ready) throw new EsException(loadError + ": cannot run " + path);
        int[] st = new int[2];
        handle = nativeOpen(path, threads, st);
        if (handle == 0) throw new EsException(path + ": LiteRT failed " + stage(st[1]) + " (status " + st[0] + "); is this a .tflite file of this bundle?");
        int ni = nativeCount(handle, false), no = nativeCount(handle, true);
        inShapes = new int[ni][];
        outShapes = new int[no][];
        inNames = new String[ni];
        outNames = new String[no];
        for (int i = 0; i < ni; i++) { inShapes[i] = nativeShape(handle, false, i); inNames[i] = nativeName(handle, false, i); }
        for (int i = 0; i < no; i++) { outShapes[i] = nativeShape(handle, true, i); outNames[i] = nativeName(handle, true, i); }
    }

    private static String stage(int s) {
        return s >= 0 && s < STAGES.length ? STAGES[s] : "at stage " + s;
    }

    public int[][] inputShapes() {
        return inShapes;
    }

    public int[][] outputShapes() {
        return outShapes;
    }

    public String[] outputNames() {
        return outNames;
    }

    static int elements(int[] shape) {
        int n = 1;
        for (int d : shape) n *= Math.max(d, 1);
        return n;
    }

    public float[][] run(float[][] inputs) {
        float[][] out = new float[outShapes.length][];
        for (int i = 0; i < out.length; i++) out[i] = new float[elements(outShapes[i])];
        int[] st = new int[2];
        int rc = nativeRun(handle, inputs, out, st);
        if (rc != 0) throw new EsException(path + ": LiteRT failed " + stage(st[1]) + " (status " + st[0] + ")", 1);
        return out;
    }

    public synchronized void close() {
        if (handle != 0) nativeClose(handle);
        handle = 0;
    }

    static native String nativeLoad(String litert);

    static native int nativeOpen(String path, int threads, int[] status);

    static native int nativeCount(int h, boolean out);

    static native int[] nativeShape(int h, boolean out, int i);

    static native String nativeName(int h, boolean out, int i);

    static native int nativeRun(int h, float[][] inputs, float[][] outputs, int[] status);

    static native void nativeClose(int h);
}
