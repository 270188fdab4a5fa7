package com.edgeshitu.demo;

import android.app.Activity;
import android.os.Bundle;
import android.view.View;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;

import com.edgeshitu.core.EsException;
import com.edgeshitu.core.GalleryIndex;
import com.edgeshitu.core.Recognizer;
import com.edgeshitu.core.RgbImage;

import java.io.File;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * The gallery of the open bundle: add the current photo's main object under a label (embedded on
 * the phone, appended to the index atomically under its lock), remove items by label or id.
 */
public class GalleryActivity extends Activity {
    TextView status;
    LinearLayout list;
    EditText label;

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        status = new TextView(this);
        root.addView(status);
        LinearLayout row = new LinearLayout(this);
        label = new EditText(this);
        label.setHint("label, e.g. 新品_柠檬茶");
        row.addView(label, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1f));
        Button add = new Button(this);
        add.setText("Add current photo");
        add.setOnClickListener(new View.OnClickListener() {
            public void onClick(View v) { addCurrent(); }
        });
        row.addView(add);
        root.addView(row);
        ScrollView scroll = new ScrollView(this);
        list = new LinearLayout(this);
        list.setOrientation(LinearLayout.VERTICAL);
        scroll.addView(list);
        root.addView(scroll);
        setContentView(root);
        refresh();
    }

    void say(final String msg) {
        runOnUiThread(new Runnable() {
            public void run() { status.setText(msg); }
        });
    }

    void refresh() {
        list.removeAllViews();
        Recognizer r = Engine.recognizer;
        GalleryIndex index = r != null ? r.index : Engine.galleryOnly;
        if (index == null) {
            status.setText(Engine.inferenceProblem != null ? Engine.inferenceProblem : "open a bundle first");
            return;
        }
        Map<String, List<Long>> items = index.items();
        status.setText(index.liveCount() + " items, " + items.size() + " labels (" + Engine.bundleDir.getName() + ")"
                + (r == null ? "; adding needs LiteRT" : ""));
        for (final Map.Entry<String, List<Long>> e : items.entrySet()) {
            LinearLayout row = new LinearLayout(this);
            TextView t = new TextView(this);
            t.setText(e.getKey() + "  " + e.getValue());
            row.addView(t, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1f));
            Button rm = new Button(this);
            rm.setText("Remove");
            rm.setOnClickListener(new View.OnClickListener() {
                public void onClick(View v) { remove(e.getValue()); }
            });
            row.addView(rm);
            list.addView(row);
        }
    }

    void addCurrent() {
        final Recognizer r = Engine.recognizer;
        final RgbImage img = Engine.lastImage;
        final String l = label.getText().toString().trim();
        if (r == null || img == null) { say("open a bundle and recognize a photo first"); return; }
        if (l.isEmpty()) { say("type a label first"); return; }
        inBackground("could not add: ", new Edit() {
            public String run() {
                long[] ids;
                synchronized (Engine.class) {
                    ids = r.addToGallery(Collections.singletonList(img), l, false);
                }
                return "added id " + ids[0] + " '" + l + "'";
            }
        });
    }

    void remove(final List<Long> ids) {
        final Recognizer r = Engine.recognizer;
        if (r == null && Engine.galleryOnly == null) return;
        inBackground("could not remove: ", new Edit() {
            public String run() {
                long[] a = new long[ids.size()];
                for (int i = 0; i < a.length; i++) a[i] = ids.get(i);
                int n;
                synchronized (Engine.class) {
                    if (r != null) {
                        n = r.removeFromGallery(a);
                    } else {
                        final long[] which = a;
                        File f = Engine.galleryOnly.path;
                        n = GalleryIndex.edit(f, new GalleryIndex.Edit<Integer>() {
                            public Integer apply(GalleryIndex g) { return g.remove(which); }
                        });
                        Engine.galleryOnly = GalleryIndex.open(f);
                    }
                }
                return "removed " + n + " item(s)";
            }
        });
    }

    /** A gallery edit run off the UI thread; returns the line to show. */
    private interface Edit {
        String run();
    }

    /** Runs the edit on a new thread, shows its line and refreshes the list; failures give one line. */
    private void inBackground(final String failure, final Edit edit) {
        new Thread(new Runnable() {
            public void run() {
                try {
                    String done = edit.run();
                    say(done);
                    runOnUiThread(new Runnable() { public void run() { refresh(); } });
                } catch (EsException e) {
                    say(e.getMessage());
                } catch (Throwable t) {
                    say(failure + t);
                }
            }
        }).start();
    }
}
