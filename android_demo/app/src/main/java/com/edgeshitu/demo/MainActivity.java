package com.edgeshitu.demo;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.DialogInterface;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.Canvas;
import android.graphics.Color;
import android.graphics.Paint;
import android.net.Uri;
import android.os.Bundle;
import android.provider.MediaStore;
import android.view.View;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;

import com.edgeshitu.core.EsException;
import com.edgeshitu.core.Recognizer;
import com.edgeshitu.core.RgbImage;
import com.edgeshitu.core.Streams;

import java.io.File;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.List;
import java.util.Locale;

/**
 * Pick a bundle, then a photo (or a camera shot): detect -> embed -> search -> boxes with labels.
 * Every failure (bad bundle, unreadable photo, no LiteRT in this build) is a message on screen;
 * the app keeps running and nothing is written.
 */
public class MainActivity extends Activity {
    static final int PICK = 1, CAMERA = 2;
    TextView status, results;
    ImageView view;

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        Engine.init();
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        LinearLayout buttons = new LinearLayout(this);
        buttons.addView(button("Bundle", new View.OnClickListener() {
            public void onClick(View v) { chooseBundle(); }
        }));
        buttons.addView(button("Photo", new View.OnClickListener() {
            public void onClick(View v) {
                Intent i = new Intent(Intent.ACTION_GET_CONTENT);
                i.setType("image/*");
                startActivityForResult(Intent.createChooser(i, "Photo"), PICK);
            }
        }));
        buttons.addView(button("Camera", new View.OnClickListener() {
            public void onClick(View v) {
                Intent i = new Intent(MediaStore.ACTION_IMAGE_CAPTURE);
                if (i.resolveActivity(getPackageManager()) != null) startActivityForResult(i, CAMERA);
                else say("no camera app on this device");
            }
        }));
        buttons.addView(button("Gallery", new View.OnClickListener() {
            public void onClick(View v) { startActivity(new Intent(MainActivity.this, GalleryActivity.class)); }
        }));
        root.addView(buttons);
        status = new TextView(this);
        root.addView(status);
        ScrollView scroll = new ScrollView(this);
        LinearLayout inner = new LinearLayout(this);
        inner.setOrientation(LinearLayout.VERTICAL);
        view = new ImageView(this);
        view.setAdjustViewBounds(true);
        inner.addView(view);
        results = new TextView(this);
        inner.addView(results);
        scroll.addView(inner);
        root.addView(scroll);
        setContentView(root);
        if (Engine.inferenceProblem != null) say(Engine.inferenceProblem);
        else if (Engine.recognizer == null) openFirstBundle();
        else say("bundle " + Engine.bundleDir.getName());
    }

    Button button(String text, View.OnClickListener l) {
        Button b = new Button(this);
        b.setText(text);
        b.setOnClickListener(l);
        return b;
    }

    void say(final String msg) {
        runOnUiThread(new Runnable() {
            public void run() { status.setText(msg); }
        });
    }

    void openFirstBundle() {
        List<File> all = Engine.bundles(this);
        if (all.isEmpty()) {
            say("No bundle yet. Push one: adb push BUNDLE " + Engine.bundlesDir(this) + "/NAME");
            return;
        }
        openBundle(all.get(0));
    }

    void chooseBundle() {
        final List<File> all = Engine.bundles(this);
        if (all.isEmpty()) {
            say("No bundle in " + Engine.bundlesDir(this) + " (adb push BUNDLE " + Engine.bundlesDir(this) + "/NAME)");
            return;
        }
        String[] names = new String[all.size()];
        for (int i = 0; i < names.length; i++) names[i] = all.get(i).getName();
        new AlertDialog.Builder(this).setTitle("Bundle").setItems(names, new DialogInterface.OnClickListener() {
            public void onClick(DialogInterface d, int which) { openBundle(all.get(which)); }
        }).show();
    }

    void openBundle(final File dir) {
        say("opening " + dir.getName() + " ...");
        new Thread(new Runnable() {
            public void run() {
                try {
                    Recognizer r = Engine.open(dir);
                    say("bundle " + dir.getName() + ": " + r.artifactKind + ", " + r.index.liveCount() + " gallery items, search " + r.index.kernel());
                } catch (EsException e) {
                    say(e.getMessage());
                } catch (Throwable t) {
                    say("cannot open " + dir.getName() + ": " + t);
                }
            }
        }).start();
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (result != RESULT_OK || data == null) return;
        if (request == PICK && data.getData() != null) recognizeUri(data.getData());
        if (request == CAMERA && data.getExtras() != null && data.getExtras().get("data") instanceof Bitmap)
            recognizeImage(BitmapDecoder.fromBitmap((Bitmap) data.getExtras().get("data")));
    }

    void recognizeUri(final Uri uri) {
        new Thread(new Runnable() {
            public void run() {
                try {
                    File tmp = new File(getCacheDir(), "photo");
                    InputStream in = getContentResolver().openInputStream(uri);
                    if (in == null) throw new EsException("cannot read " + uri, 1);
                    OutputStream out = new FileOutputStream(tmp);
                    try {
                        Streams.pump(in, out, 1 << 16);
                    } finally {
                        out.close();
                        in.close();
                    }
                    long budget = Engine.recognizer != null ? Engine.recognizer.maxImagePixels() : 40000000L;
                    recognizeImage(new BitmapDecoder().decode(tmp, budget));
                } catch (EsException e) {
                    say(e.getMessage());
                } catch (Throwable t) {
                    say("cannot read the photo: " + t);
                }
            }
        }).start();
    }

    void recognizeImage(final RgbImage img) {
        Engine.lastImage = img;
        final Recognizer r = Engine.recognizer;
        if (r == null) {
            say(Engine.inferenceProblem != null ? Engine.inferenceProblem : "open a bundle first");
            show(BitmapDecoder.toBitmap(img), "");
            return;
        }
        new Thread(new Runnable() {
            public void run() {
                try {
                    Recognizer.Result res;
                    synchronized (Engine.class) {
                        res = r.recognize(img);
                    }
                    Bitmap bm = BitmapDecoder.toBitmap(img).copy(Bitmap.Config.ARGB_8888, true);
                    draw(bm, res);
                    StringBuilder s = new StringBuilder();
                    for (Recognizer.Recognized o : res.objects)
                        s.append(String.format(Locale.ROOT, "%s  %.3f  id %d  [%d, %d, %d, %d]  %s%n", o.label, o.score, o.id,
                                o.box[0], o.box[1], o.box[2], o.box[3], o.source));
                    say(String.format(Locale.ROOT, "%d object(s) in %.0f ms", res.objects.size(), res.timingsMs.get("total")));
                    show(bm, s.toString());
                } catch (EsException e) {
                    say(e.getMessage());
                } catch (Throwable t) {
                    say("recognition failed: " + t);
                }
            }
        }).start();
    }

    void show(final Bitmap bm, final String text) {
        runOnUiThread(new Runnable() {
            public void run() {
                view.setImageBitmap(bm);
                results.setText(text);
            }
        });
    }

    static void draw(Bitmap bm, Recognizer.Result res) {
        Canvas c = new Canvas(bm);
        float unit = Math.max(bm.getWidth(), bm.getHeight()) / 400f;
        Paint box = new Paint();
        box.setStyle(Paint.Style.STROKE);
        box.setStrokeWidth(2 * unit);
        box.setColor(Color.rgb(0, 200, 80));
        Paint bg = new Paint();
        bg.setColor(Color.argb(180, 0, 120, 40));
        Paint text = new Paint(Paint.ANTI_ALIAS_FLAG);
        text.setColor(Color.WHITE);
        text.setTextSize(10 * unit);
        for (Recognizer.Recognized o : res.objects) {
            c.drawRect(o.box[0], o.box[1], o.box[2], o.box[3], box);
            String label = String.format(Locale.ROOT, "%s %.2f", o.label, o.score);
            float w = text.measureText(label);
            float y = Math.max(o.box[1], 12 * unit);
            c.drawRect(o.box[0], y - 12 * unit, o.box[0] + w + 4 * unit, y, bg);
            c.drawText(label, o.box[0] + 2 * unit, y - 3 * unit, text);
        }
    }
}
