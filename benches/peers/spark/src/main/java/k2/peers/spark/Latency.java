package k2.peers.spark;

import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/**
 * Produce-to-visible latency of the rows committed during a run, the metric K2 reports: for each
 * row, the commit time of the Iceberg snapshot that added its data file minus its Kafka record
 * timestamp. Joins the rows' {@code _file} metadata column with the {@code entries} and
 * {@code snapshots} metadata tables.
 */
final class Latency {
  private Latency() {}

  static Map<String, Object> produceToCommit(
      SparkSession spark, String table, long sinceMs, long skipMs) {
    String sql =
        "WITH files AS ("
            + "  SELECT e.data_file.file_path AS path, s.committed_at AS committed_at"
            + "  FROM " + table + ".entries e JOIN " + table + ".snapshots s"
            + "    ON e.snapshot_id = s.snapshot_id"
            + "  WHERE e.status != 2 AND s.committed_at >= timestamp_millis(" + sinceMs + ")),"
            + " rows AS ("
            + "  SELECT unix_millis(d.kafka_timestamp) AS produce_ms,"
            + "         unix_millis(f.committed_at) AS commit_ms"
            + "  FROM " + table + " d JOIN files f ON d._file = f.path),"
            + " lat AS ("
            + "  SELECT commit_ms - produce_ms AS ms,"
            + "         produce_ms >= (SELECT min(produce_ms) FROM rows) + " + skipMs + " AS steady"
            + "  FROM rows)"
            + " SELECT count(*), percentile(ms, 0.5), percentile(ms, 0.99), max(ms), min(ms),"
            + "  count_if(steady), percentile(ms, 0.5) FILTER (WHERE steady),"
            + "  percentile(ms, 0.99) FILTER (WHERE steady), max(ms) FILTER (WHERE steady)"
            + " FROM lat";
    Row r = spark.sql(sql).first();
    Map<String, Object> m = stats(r, 0);
    if (skipMs > 0) {
      // The same after the first skipMs of produced data (JIT warm-up of a fresh JVM).
      m.put("steady_after_ms", skipMs);
      m.put("steady", stats(r, 5));
    }
    return m;
  }

  private static Map<String, Object> stats(Row r, int at) {
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("rows", r.getLong(at));
    m.put("p50", r.isNullAt(at + 1) ? null : Math.round(r.getDouble(at + 1)));
    m.put("p99", r.isNullAt(at + 2) ? null : Math.round(r.getDouble(at + 2)));
    m.put("max", r.isNullAt(at + 3) ? null : r.getLong(at + 3));
    if (at == 0) {
      m.put("min", r.isNullAt(4) ? null : r.getLong(4));
    }
    return m;
  }
}
