package k2.peers.spark;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Command-line flags of the Spark peer: {@code <job> [--flag value | --switch]...}. */
final class Args {
  final String job;
  private final Map<String, String> values = new LinkedHashMap<>();

  private static final List<String> SWITCHES = List.of("--help");

  private Args(String job) {
    this.job = job;
  }

  static Args parse(String[] argv) {
    if (argv.length == 0 || argv[0].startsWith("--")) {
      throw new IllegalArgumentException("usage: <bronze|arbitrage> [--flag value]...");
    }
    Args a = new Args(argv[0]);
    List<String> rest = new ArrayList<>(List.of(argv).subList(1, argv.length));
    for (int i = 0; i < rest.size(); i++) {
      String k = rest.get(i);
      if (!k.startsWith("--")) {
        throw new IllegalArgumentException("unexpected argument: " + k);
      }
      int eq = k.indexOf('=');
      if (eq > 0) {
        a.values.put(k.substring(0, eq), k.substring(eq + 1));
      } else if (SWITCHES.contains(k) || i + 1 >= rest.size() || rest.get(i + 1).startsWith("--")) {
        a.values.put(k, "true");
      } else {
        a.values.put(k, rest.get(++i));
      }
    }
    return a;
  }

  String str(String key, String dflt) {
    return values.getOrDefault(key, dflt);
  }

  String required(String key) {
    String v = values.get(key);
    if (v == null || v.isEmpty()) {
      throw new IllegalArgumentException("missing " + key);
    }
    return v;
  }

  long lng(String key, long dflt) {
    String v = values.get(key);
    return v == null ? dflt : Long.parseLong(v);
  }

  double dbl(String key, double dflt) {
    String v = values.get(key);
    return v == null ? dflt : Double.parseDouble(v);
  }

  boolean flag(String key) {
    String v = values.get(key);
    return v != null && !v.equals("false");
  }

  boolean has(String key) {
    return values.containsKey(key);
  }

  @Override
  public String toString() {
    return job + " " + values;
  }
}
