package com.edgeshitu.core;

import java.math.BigDecimal;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * {@code json.dumps(obj, ensure_ascii=False, sort_keys=True)} as Python writes it (", " and ": "
 * separators, floats as Python's repr), so an index META section edited on a phone keeps the
 * bytes a Python edit would give.
 */
final class PyJson {
    private PyJson() {}

    static String dumps(Object v) {
        StringBuilder b = new StringBuilder();
        write(b, v);
        return b.toString();
    }

    @SuppressWarnings("unchecked")
    private static void write(StringBuilder b, Object v) {
        if (v == null) b.append("null");
        else if (v instanceof Boolean) b.append(((Boolean) v) ? "true" : "false");
        else if (v instanceof String) quote(b, (String) v);
        else if (v instanceof Double || v instanceof Float) b.append(repr(((Number) v).doubleValue()));
        else if (v instanceof Number) b.append(((Number) v).longValue());
        else if (v instanceof Map) {
            Map<String, Object> m = new TreeMap<String, Object>((Map<String, Object>) v); // code point order == Python's for the BMP
            b.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : m.entrySet()) {
                if (!first) b.append(", ");
                first = false;
                quote(b, e.getKey());
                b.append(": ");
                write(b, e.getValue());
            }
            b.append('}');
        } else if (v instanceof List) {
            b.append('[');
            boolean first = true;
            for (Object o : (List<Object>) v) {
                if (!first) b.append(", ");
                first = false;
                write(b, o);
            }
            b.append(']');
        } else throw new IllegalArgumentException("not JSON: " + v.getClass());
    }

    private static void quote(StringBuilder b, String t) {
        Json.quote(b, t, true);
    }

    /** Python's float repr: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16 (repr). */
    static String repr(double d) {
        if (Double.isNaN(d)) return "NaN";
        if (Double.isInfinite(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == 0) return (1 / d < 0) ? "-0.0" : "0.0";
        BigDecimal bd = new BigDecimal(shortest(d)).stripTrailingZeros();
        String digits = bd.unscaledValue().abs().toString();
        int exp = digits.length() - 1 - bd.scale(); // decimal exponent of the first digit
        String sign = d < 0 ? "-" : "";
        if (exp >= -4 && exp < 16) {
            String plain = bd.abs().toPlainString();
            if (plain.indexOf('.') < 0) plain += ".0";
            return sign + plain;
        }
        String mant = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
        return sign + mant + "e" + (exp < 0 ? "-" : "+") + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
    }

    /** The shortest decimal that reads back as d (Double.toString is not always shortest before JDK 19). */
    private static String shortest(double d) {
        String s = Double.toString(d);
        BigDecimal full = new BigDecimal(s);
        for (int p = 1; p <= 17; p++) {
            BigDecimal r = full.round(new java.math.MathContext(p, java.math.RoundingMode.HALF_EVEN));
            if (r.doubleValue() == d) return r.toString();
        }
        return s;
    }
}
