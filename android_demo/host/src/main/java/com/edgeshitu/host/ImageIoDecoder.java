package com.edgeshitu.host;

import com.edgeshitu.core.EsException;
import com.edgeshitu.core.RgbImage;

import java.awt.image.BufferedImage;
import java.awt.image.DataBufferByte;
import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.util.Iterator;
import javax.imageio.ImageIO;
import javax.imageio.ImageReader;
import javax.imageio.stream.ImageInputStream;

/**
 * Photos on the host JVM: ImageIO (its JPEG decoder is IJG libjpeg's islow IDCT with fancy
 * upsampling, the same arithmetic as the libjpeg-turbo in Pillow), EXIF rotation applied like
 * Pillow's exif_transpose, grey replicated, transparency flattened on white. The app decodes with
 * Android's BitmapFactory instead (android_demo/app). Each failure is one line naming the file.
 */
public final class ImageIoDecoder implements RgbImage.Decoder {
    public RgbImage decode(File f, long maxPixels) {
        if (!f.exists()) throw new EsException("image " + f + " does not exist: check the path", 1);
        if (f.isDirectory()) throw new EsException("image " + f + " is a directory, not an image file", 1);
        if (!f.isFile()) throw new EsException("image " + f + " is not a regular file, not an image file: pass a photo file", 1);
        if (!f.canRead()) throw new EsException("image " + f + " cannot be read (permission denied): check permissions", 1);
        if (f.length() == 0) throw new EsException("image " + f + " is empty (0 bytes): re-copy or remove it", 1);
        BufferedImage img;
        try {
            ImageInputStream in = ImageIO.createImageInputStream(f);
            if (in == null) throw new EsException("image " + f + " cannot be read", 1);
            try {
                Iterator<ImageReader> it = ImageIO.getImageReaders(in);
                if (!it.hasNext()) {
                    if (isWebp(f))
                        throw new EsException("image " + f + " is a WebP file, which this JVM cannot decode (ImageIO has no WebP reader; the Android app decodes it): convert it to JPEG or PNG", 1);
                    throw new EsException("image " + f + " is not a readable image (unknown or corrupt format)", 1);
                }
                ImageReader r = it.next();
                try {
                    r.setInput(in);
                    long w = r.getWidth(0), h = r.getHeight(0);
                    if (w * h > maxPixels)
                        throw new EsException(String.format(java.util.Locale.ROOT, "image %s is %dx%d (%.1f megapixels), above the %s-megapixel decoding budget: downscale it (the budget is the board's max_image_pixels)",
                                f, w, h, w * h / 1e6, trim(maxPixels / 1e6)), 1);
                    img = r.read(0);
                } finally {
                    r.dispose();
                }
            } finally {
                in.close();
            }
        } catch (IOException e) {
            throw new EsException("image " + f + " is truncated or corrupt (" + e.getMessage() + "): re-copy or remove it", 1);
        } catch (RuntimeException e) {
            if (e instanceof EsException) throw e;
            throw new EsException("image " + f + " is truncated or corrupt (" + e + "): re-copy or remove it", 1);
        }
        if (img == null) throw new EsException("image " + f + " is not a readable image (unknown or corrupt format)", 1);
        RgbImage rgb = toRgb(img);
        return RgbImage.orient(rgb, exifOrientation(f));
    }

    static boolean isWebp(File f) {
        try {
            RandomAccessFile in = new RandomAccessFile(f, "r");
            try {
                byte[] b = new byte[12];
                in.readFully(b);
                return b[0] == 'R' && b[1] == 'I' && b[2] == 'F' && b[3] == 'F' && b[8] == 'W' && b[9] == 'E' && b[10] == 'B' && b[11] == 'P';
            } finally {
                in.close();
            }
        } catch (IOException e) {
            return false;
        }
    }

    static String trim(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : Double.toString(v);
    }

    static RgbImage toRgb(BufferedImage img) {
        int w = img.getWidth(), h = img.getHeight();
        byte[] out = new byte[w * h * 3];
        int type = img.getType();
        if (type == BufferedImage.TYPE_3BYTE_BGR) {
            byte[] src = ((DataBufferByte) img.getRaster().getDataBuffer()).getData();
            for (int i = 0; i < w * h; i++) {
                out[3 * i] = src[3 * i + 2];
                out[3 * i + 1] = src[3 * i + 1];
                out[3 * i + 2] = src[3 * i];
            }
        } else if (type == BufferedImage.TYPE_BYTE_GRAY) {
            byte[] src = ((DataBufferByte) img.getRaster().getDataBuffer()).getData();
            for (int i = 0; i < w * h; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = src[i];
        } else {
            boolean alpha = img.getColorModel().hasAlpha();
            int[] px = img.getRGB(0, 0, w, h, null, 0, w);
            for (int i = 0; i < w * h; i++) {
                int p = px[i], a = alpha ? (p >>> 24) : 255;
                for (int c = 0; c < 3; c++) {
                    int v = (p >> (16 - 8 * c)) & 0xFF;
                    out[3 * i + c] = (byte) (a == 255 ? v : (v * a + 255 * (255 - a) + 127) / 255);
                }
            }
        }
        return new RgbImage(w, h, out);
    }

    /** EXIF orientation tag (1..8) of a JPEG, 1 when absent. */
    static int exifOrientation(File f) {
        try {
            RandomAccessFile in = new RandomAccessFile(f, "r");
            try {
                if (in.readUnsignedShort() != 0xFFD8) return 1;
                while (true) {
                    int marker = in.readUnsignedShort();
                    if ((marker & 0xFF00) != 0xFF00 || marker == 0xFFDA) return 1;
                    int len = in.readUnsignedShort();
                    if (marker == 0xFFE1 && len > 16) {
                        byte[] b = new byte[len - 2];
                        in.readFully(b);
                        if (b[0] != 'E' || b[1] != 'x' || b[2] != 'i' || b[3] != 'f') continue;
                        int t = 6;
                        boolean le = b[t] == 'I';
                        int ifd = (int) u32(b, t + 4, le);
                        int n = u16(b, t + ifd, le);
                        for (int i = 0; i < n; i++) {
                            int e = t + ifd + 2 + 12 * i;
                            if (e + 12 > b.length) return 1;
                            if (u16(b, e, le) == 0x0112) {
                                int v = u16(b, e + 8, le);
                                return v >= 1 && v <= 8 ? v : 1;
                            }
                        }
                        return 1;
                    }
                    in.seek(in.getFilePointer() + len - 2);
                }
            } finally {
                in.close();
            }
        } catch (IOException | RuntimeException e) {
            return 1;
        }
    }

    private static int u16(byte[] b, int o, boolean le) {
        return le ? (b[o] & 0xFF) | (b[o + 1] & 0xFF) << 8 : (b[o] & 0xFF) << 8 | (b[o + 1] & 0xFF);
    }

    private static long u32(byte[] b, int o, boolean le) {
        return le ? (u16(b, o, true) | (long) u16(b, o + 2, true) << 16) : ((long) u16(b, o, false) << 16 | u16(b, o + 2, false));
    }

}
