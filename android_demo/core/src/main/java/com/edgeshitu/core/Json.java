package com.edgeshitu.core;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small JSON reader/writer (no dependency, Android and the host alike). Objects keep their key
 * order (LinkedHashMap), integers are Long, other numbers Double, so the manifest checks can tell
 * 2 from 2.0 like the Python reader does.
 */
public final class Json {
    private final String s;
    private int i;

    private Json(String s) {
        this.s = s;
    }

    public static Object parse(String text) {
        Json p = new Json(text);
        p.ws();
        Object v = p.value(0);
        p.ws();
        if (p.i != p.s.length()) throw p.err("extra data after the JSON value");
        return v;
    }

    private IllegalArgumentException err(String what) {
        int line = 1, col = 1;
        for (int k = 0; k < Math.min(i, s.length()); k++) {
            if (s.charAt(k) == '\n') { line++; col = 1; } else col++;
        }
        return new IllegalArgumentException(what + ": line " + line + " column " + col + " (char " + i + ")");
    }

    private void ws() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') i++; else break;
        }
    }

    private Object value(int depth) {
        if (depth > 200) throw err("nested too deeply");
        if (i >= s.length()) throw err("Expecting value");
        char c = s.charAt(i);
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') return string();
        if (s.startsWith("true", i)) { i += 4; return Boolean.TRUE; }
        if (s.startsWith("false", i)) { i += 5; return Boolean.FALSE; }
        if (s.startsWith("null", i)) { i += 4; return null; }
        if (s.startsWith("NaN", i)) { i += 3; return Double.NaN; }
        if (s.startsWith("Infinity", i)) { i += 8; return Double.POSITIVE_INFINITY; }
        if (s.startsWith("-Infinity", i)) { i += 9; return Double.NEGATIVE_INFINITY; }
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        throw err("Expecting value");
    }

    private Map<String, Object> object(int depth) {
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        i++;
        ws();
        if (i < s.length() && s.charAt(i) == '}') { i++; return m; }
        while (true) {
            ws();
            if (i >= s.length() || s.charAt(i) != '"') throw err("Expecting property name enclosed in double quotes");
            String k = string();
            ws();
            if (i >= s.length() || s.charAt(i) != ':') throw err("Expecting ':' delimiter");
            i++;
            ws();
            m.put(k, value(depth + 1));
            ws();
            if (i < s.length() && s.charAt(i) == ',') { i++; continue; }
            if (i < s.length() && s.charAt(i) == '}') { i++; return m; }
            throw err("Expecting ',' delimiter");
        }
    }

    private List<Object> array(int depth) {
        List<Object> a = new ArrayList<Object>();
        i++;
        ws();
        if (i < s.length() && s.charAt(i) == ']') { i++; return a; }
        while (true) {
            ws();
            a.add(value(depth + 1));
            ws();
            if (i < s.length() && s.charAt(i) == ',') { i++; continue; }
            if (i < s.length() && s.charAt(i) == ']') { i++; return a; }
            throw err("Expecting ',' delimiter");
        }
    }

    private String string() {
        StringBuilder b = new StringBuilder();
        i++;
        while (true) {
            if (i >= s.length()) throw err("Unterminated string");
            char c = s.charAt(i++);
            if (c == '"') return b.toString();
            if (c == '\\') {
                if (i >= s.length()) throw err("Unterminated string");
                char e = s.charAt(i++);
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) throw err("Invalid \\uXXXX escape");
                        try {
                            b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        } catch (NumberFormatException x) {
                            throw err("Invalid \\uXXXX escape");
                        }
                        i += 4;
                        break;
                    default: throw err("Invalid \\escape");
                }
            } else if (c < 0x20) {
                throw err("Invalid control character");
            } else {
                b.append(c);
            }
        }
    }

    private Object number() {
        int start = i;
        if (s.charAt(i) == '-') i++;
        boolean frac = false;
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c >= '0' && c <= '9') i++;
            else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') { frac = true; i++; }
            else break;
        }
        String t = s.substring(start, i);
        try {
            if (!frac) {
                try {
                    return Long.parseLong(t);
                } catch (NumberFormatException big) {
                    return Double.parseDouble(t);
                }
            }
            return Double.parseDouble(t);
        } catch (NumberFormatException x) {
            i = start;
            throw err("Invalid number");
        }
    }

    // ------------------------------------------------------------------ writing
    public static String write(Object v, int indent) {
        StringBuilder b = new StringBuilder();
        write(b, v, indent, 0);
        return b.toString();
    }

    private static void nl(StringBuilder b, int indent, int level) {
        if (indent <= 0) return;
        b.append('\n');
        for (int k = 0; k < indent * level; k++) b.append(' ');
    }

    @SuppressWarnings("unchecked")
    private static void write(StringBuilder b, Object v, int indent, int level) {
        if (v == null) b.append("null");
        else if (v instanceof String) quote(b, (String) v);
        else if (v instanceof Boolean) b.append(v.toString());
        else if (v instanceof Double || v instanceof Float) b.append(num(((Number) v).doubleValue()));
        else if (v instanceof java.math.BigInteger) b.append(v.toString());
        else if (v instanceof Number) b.append(((Number) v).longValue());
        else if (v instanceof Map) {
            Map<String, Object> m = (Map<String, Object>) v;
            if (m.isEmpty()) { b.append("{}"); return; }
            b.append('{');
            Iterator<Map.Entry<String, Object>> it = m.entrySet().iterator();
            while (it.hasNext()) {
                Map.Entry<String, Object> e = it.next();
                nl(b, indent, level + 1);
                quote(b, e.getKey());
                b.append(indent > 0 ? ": " : ":");
                write(b, e.getValue(), indent, level + 1);
                if (it.hasNext()) b.append(indent > 0 ? "," : ",");
            }
            nl(b, indent, level);
            b.append('}');
        } else if (v instanceof List) {
            List<Object> a = (List<Object>) v;
            if (a.isEmpty()) { b.append("[]"); return; }
            b.append('[');
            for (int k = 0; k < a.size(); k++) {
                nl(b, indent, level + 1);
                write(b, a.get(k), indent, level + 1);
                if (k + 1 < a.size()) b.append(',');
            }
            nl(b, indent, level);
            b.append(']');
        } else throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON");
    }

    /** A stored u64 id as JSON writes it (ids above 2^63 - 1 only come from foreign files). */
    public static Object unsigned(long v) {
        return v >= 0 ? (Object) v : java.math.BigInteger.valueOf(v).add(java.math.BigInteger.ONE.shiftLeft(64));
    }

    /** Like Python's repr of a float: shortest form that reads back the same. */
    public static String num(double d) {
        if (Double.isNaN(d)) return "NaN";
        if (Double.isInfinite(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == Math.rint(d) && Math.abs(d) < 1e16) {
            String t = Long.toString((long) d);
            return (d == 0 && 1 / d < 0 ? "-" : "") + t + ".0";
        }
        return Double.toString(d);
    }

    private static void quote(StringBuilder b, String t) {
        quote(b, t, false);
    }

    /** The characters quote escapes by name, and their escapes; \b and \f (the last two) only when asked. */
    private static final String NAMED = "\"\\\n\r\t\b\f";
    private static final String[] NAMED_ESCAPES = {"\\\"", "\\\\", "\\n", "\\r", "\\t", "\\b", "\\f"};

    /** A JSON string literal; other control characters as \\u00XX; {@code shortBf}: \b and \f as Python writes them. */
    static void quote(StringBuilder b, String t, boolean shortBf) {
        b.append('"');
        for (int k = 0; k < t.length(); k++) {
            char c = t.charAt(k);
            int e = NAMED.indexOf(c);
            if (e >= 0 && (e < 5 || shortBf)) b.append(NAMED_ESCAPES[e]);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        b.append('"');
    }
}
