package com.edgeshitu.demo;

import android.content.Context;

import com.edgeshitu.core.Bundle;
import com.edgeshitu.core.EsException;
import com.edgeshitu.core.GalleryIndex;
import com.edgeshitu.core.LiteRt;
import com.edgeshitu.core.NativeHamming;
import com.edgeshitu.core.Recognizer;
import com.edgeshitu.core.RgbImage;

import java.io.File;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * What the screens share: the native libraries, the opened bundle (a {@link Recognizer} of the
 * pure-Java core) and the last photo. Bundles live in the app's external files folder:
 * {@code adb push BUNDLE /sdcard/Android/data/com.edgeshitu.demo/files/bundles/NAME}.
 */
final class Engine {
    private Engine() {}

    private static boolean initialised;
    /** null when LiteRT is usable; else what to tell the user (the offline APK has no LiteRT). */
    static String inferenceProblem;
    static Recognizer recognizer;
    static File bundleDir;
    static RgbImage lastImage;
    /** The open bundle's index when recognition is off (no LiteRT): the gallery can still be listed and edited. */
    static GalleryIndex galleryOnly;

    static synchronized void init() {
        if (initialised) return;
        initialised = true;
        NativeHamming.load("eshamming_jni"); // the Java search is used when it is missing
        try {
            System.loadLibrary("LiteRt"); // from LiteRT's Maven package (Gradle build)
        } catch (Throwable t) {
            inferenceProblem = "LiteRT is not part of this build (the APK assembled offline cannot include it): "
                    + "recognition is off. Build the app with Gradle (android_demo/README.md) to get LiteRT.";
            return;
        }
        String e = LiteRt.load("esengine", "libLiteRt.so");
        if (e != null) inferenceProblem = e;
    }

    static File bundlesDir(Context c) {
        File base = c.getExternalFilesDir(null);
        if (base == null) base = c.getFilesDir();
        File d = new File(base, "bundles");
        d.mkdirs();
        return d;
    }

    static List<File> bundles(Context c) {
        List<File> out = new ArrayList<File>();
        File[] kids = bundlesDir(c).listFiles();
        if (kids != null) {
            Arrays.sort(kids);
            for (File k : kids) if (new File(k, "manifest.json").isFile()) out.add(k);
        }
        return out;
    }

    /** Opens a bundle; throws EsException (one line) for a bad one. The previous one stays closed. */
    static synchronized Recognizer open(File dir) {
        if (recognizer != null) recognizer.close();
        recognizer = null;
        galleryOnly = null;
        bundleDir = null;
        Bundle b = Bundle.open(dir);
        if (inferenceProblem != null) { // no LiteRT: check the bundle all the same and offer its gallery
            String kind = "tflite:" + (b.runtime().get("precision") instanceof String ? b.runtime().get("precision") : "int8");
            b.verifiedFile("rec", b.artifact("rec", kind));
            if (b.hasDetector()) b.verifiedFile("det", b.artifact("det", kind));
            File f = b.indexFile();
            if (!f.exists()) throw new EsException(f + ": no such index file; the bundle has no gallery: re-copy the bundle (" + dir + ")");
            galleryOnly = GalleryIndex.open(f);
            bundleDir = dir;
            throw new EsException("bundle " + dir.getName() + " checked (" + galleryOnly.liveCount() + " gallery items). " + inferenceProblem);
        }
        Recognizer.Options o = new Recognizer.Options();
        if (b.runtime().get("precision") == null) o.precision = "int8";
        recognizer = new Recognizer(b, o, Recognizer.LITERT);
        bundleDir = dir;
        return recognizer;
    }
}
