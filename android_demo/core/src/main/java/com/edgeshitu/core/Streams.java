package com.edgeshitu.core;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;

/** Stream plumbing shared by the core and the app. */
public final class Streams {
    private Streams() {}

    /** Copies in to its end into out, bufSize bytes at a time (closes neither). */
    public static void pump(InputStream in, OutputStream out, int bufSize) throws IOException {
        byte[] buf = new byte[bufSize];
        int n;
        while ((n = in.read(buf)) > 0) out.write(buf, 0, n);
    }
}
