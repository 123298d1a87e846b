package dev.k2stream.flinkpeer;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/** `--name value`, `--name=value` and bare boolean `--name` flags, checked against a known set. */
final class Args {
    private final Map<String, String> values = new LinkedHashMap<>();
    private final Map<String, List<String>> repeated = new LinkedHashMap<>();

    Args(String[] argv, int from, Set<String> known, Set<String> booleans, Set<String> multi) {
        for (int i = from; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + a + " (flags are --name value)");
            }
            String name = a.substring(2);
            String value = null;
            int eq = name.indexOf('=');
            if (eq >= 0) {
                value = name.substring(eq + 1);
                name = name.substring(0, eq);
            }
            if (!known.contains(name) && !booleans.contains(name) && !multi.contains(name)) {
                throw new IllegalArgumentException("unknown flag --" + name + "; known: " + describe(known, booleans, multi));
            }
            if (value == null) {
                if (booleans.contains(name)) {
                    boolean next = i + 1 < argv.length && (argv[i + 1].equals("true") || argv[i + 1].equals("false"));
                    value = next ? argv[++i] : "true";
                } else {
                    if (i + 1 >= argv.length) {
                        throw new IllegalArgumentException("flag --" + name + " needs a value");
                    }
                    value = argv[++i];
                }
            }
            if (multi.contains(name)) {
                repeated.computeIfAbsent(name, k -> new java.util.ArrayList<>()).add(value);
            } else {
                values.put(name, value);
            }
        }
    }

    private static String describe(Set<String> known, Set<String> booleans, Set<String> multi) {
        StringBuilder sb = new StringBuilder();
        for (String k : known) sb.append(" --").append(k);
        for (String k : booleans) sb.append(" --").append(k);
        for (String k : multi) sb.append(" --").append(k).append(" (repeatable)");
        return sb.toString().trim();
    }

    String str(String name, String dflt) {
        return values.getOrDefault(name, dflt);
    }

    List<String> list(String name) {
        return repeated.getOrDefault(name, List.of());
    }

    long lng(String name, long dflt, long min) {
        String v = values.get(name);
        if (v == null) return dflt;
        long x;
        try {
            x = Long.parseLong(v.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + name + " must be an integer, got " + v);
        }
        if (x < min) throw new IllegalArgumentException("--" + name + " must be >= " + min + ", got " + v);
        return x;
    }

    int integer(String name, int dflt, int min) {
        return Math.toIntExact(lng(name, dflt, min));
    }

    double dbl(String name, double dflt) {
        String v = values.get(name);
        if (v == null) return dflt;
        try {
            double x = Double.parseDouble(v.trim());
            if (!Double.isFinite(x)) throw new NumberFormatException();
            return x;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + name + " must be a finite number, got " + v);
        }
    }

    boolean bool(String name, boolean dflt) {
        String v = values.get(name);
        if (v == null) return dflt;
        if (v.equals("true")) return true;
        if (v.equals("false")) return false;
        throw new IllegalArgumentException("--" + name + " must be true or false, got " + v);
    }

    String choice(String name, String dflt, String... allowed) {
        String v = str(name, dflt);
        for (String a : allowed) if (a.equals(v)) return v;
        throw new IllegalArgumentException("--" + name + " must be one of " + String.join("|", allowed) + ", got " + v);
    }
}
