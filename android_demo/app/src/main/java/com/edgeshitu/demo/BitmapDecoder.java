package com.edgeshitu.demo;

import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.media.ExifInterface;

import com.edgeshitu.core.EsException;
import com.edgeshitu.core.RgbImage;

import java.io.File;
import java.io.IOException;

/** Photos on the phone: BitmapFactory (JPEG, PNG, WebP, ...), EXIF rotation, transparency on white. */
final class BitmapDecoder implements RgbImage.Decoder {
    public RgbImage decode(File f, long maxPixels) {
        if (!f.isFile()) throw new EsException("image " + f + " does not exist: check the path", 1);
        if (f.length() == 0) throw new EsException("image " + f + " is empty (0 bytes): re-copy or remove it", 1);
        BitmapFactory.Options o = new BitmapFactory.Options();
        o.inJustDecodeBounds = true;
        BitmapFactory.decodeFile(f.getPath(), o);
        if (o.outWidth <= 0 || o.outHeight <= 0) throw new EsException("image " + f + " is not a readable image (unknown or corrupt format)", 1);
        if ((long) o.outWidth * o.outHeight > maxPixels)
            throw new EsException("image " + f + " is " + o.outWidth + "x" + o.outHeight + ", above the decoding budget of " + maxPixels + " pixels: downscale it", 1);
        o = new BitmapFactory.Options();
        o.inPreferredConfig = Bitmap.Config.ARGB_8888;
        o.inPremultiplied = false;
        Bitmap bm = BitmapFactory.decodeFile(f.getPath(), o);
        if (bm == null) throw new EsException("image " + f + " is truncated or corrupt: re-copy or remove it", 1);
        int orientation = 1;
        try {
            orientation = new ExifInterface(f.getPath()).getAttributeInt(ExifInterface.TAG_ORIENTATION, 1);
        } catch (IOException e) {
            orientation = 1;
        }
        RgbImage img = fromBitmap(bm);
        bm.recycle();
        return RgbImage.orient(img, orientation);
    }

    static RgbImage fromBitmap(Bitmap bm) {
        int w = bm.getWidth(), h = bm.getHeight();
        int[] px = new int[w * h];
        bm.getPixels(px, 0, w, 0, 0, w, h);
        byte[] rgb = new byte[w * h * 3];
        for (int i = 0; i < px.length; i++) {
            int p = px[i], a = p >>> 24;
            for (int c = 0; c < 3; c++) {
                int v = (p >> (16 - 8 * c)) & 0xFF;
                rgb[3 * i + c] = (byte) (a == 255 ? v : (v * a + 255 * (255 - a) + 127) / 255);
            }
        }
        return new RgbImage(w, h, rgb);
    }

    static Bitmap toBitmap(RgbImage img) {
        int[] px = new int[img.width * img.height];
        for (int i = 0; i < px.length; i++)
            px[i] = 0xFF000000 | (img.rgb[3 * i] & 0xFF) << 16 | (img.rgb[3 * i + 1] & 0xFF) << 8 | (img.rgb[3 * i + 2] & 0xFF);
        return Bitmap.createBitmap(px, img.width, img.height, Bitmap.Config.ARGB_8888);
    }
}
