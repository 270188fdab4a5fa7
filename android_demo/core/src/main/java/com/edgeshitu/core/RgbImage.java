package com.edgeshitu.core;

/** An 8-bit RGB image, rows top to bottom, pixels left to right, 3 bytes each (HWC). */
public final class RgbImage {
    public final int width, height;
    public final byte[] rgb;

    public RgbImage(int width, int height, byte[] rgb) {
        if (width <= 0 || height <= 0) throw new EsException("image has zero width or height", 1);
        if (rgb.length != width * height * 3) throw new IllegalArgumentException("rgb length");
        this.width = width;
        this.height = height;
        this.rgb = rgb;
    }

    /** Pixels [x1, x2) x [y1, y2), like numpy's img[y1:y2, x1:x2]. */
    public RgbImage crop(int x1, int y1, int x2, int y2) {
        int w = x2 - x1, h = y2 - y1;
        byte[] out = new byte[w * h * 3];
        for (int y = 0; y < h; y++) System.arraycopy(rgb, ((y1 + y) * width + x1) * 3, out, y * w * 3, w * 3);
        return new RgbImage(w, h, out);
    }

    /** Pillow's exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 270, 7 transverse, 8 rotate 90. */
    public static RgbImage orient(RgbImage im, int o) {
        if (o <= 1) return im;
        int w = im.width, h = im.height;
        boolean swap = o >= 5;
        int ow = swap ? h : w, oh = swap ? w : h;
        byte[] out = new byte[im.rgb.length];
        for (int y = 0; y < oh; y++) {
            for (int x = 0; x < ow; x++) {
                int sx, sy;
                switch (o) {
                    case 2: sx = w - 1 - x; sy = y; break;
                    case 3: sx = w - 1 - x; sy = h - 1 - y; break;
                    case 4: sx = x; sy = h - 1 - y; break;
                    case 5: sx = y; sy = x; break;
                    case 6: sx = y; sy = h - 1 - x; break;
                    case 7: sx = w - 1 - y; sy = h - 1 - x; break;
                    default: sx = w - 1 - y; sy = x; break; // 8
                }
                System.arraycopy(im.rgb, (sy * w + sx) * 3, out, (y * ow + x) * 3, 3);
            }
        }
        return new RgbImage(ow, oh, out);
    }

    /** Reads a photo file as RGB (the app: Android's BitmapFactory; the host tool: ImageIO). */
    public interface Decoder {
        RgbImage decode(java.io.File file, long maxPixels);
    }
}
