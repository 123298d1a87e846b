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

  static Map<String, Object> produceToCommit(SparkSession spark, String table, long sinceMs) {
    String sql =
        "WITH files AS ("
            + "  SELECT e.data_file.file_path AS path, s.committed_at AS committed_at"
            + "  FROM " + table + ".entries e JOIN " + table + ".snapshots s"
            + "    ON e.snapshot_id = s.snapshot_id"
            + "  WHERE e.status != 2 AND s.committed_at >= timestamp_millis(" + sinceMs + ")),"
            + " lat AS ("
            + "  SELECT unix_millis(f.committed_at) - unix_millis(d.kafka_timestamp) AS ms"
            + "  FROM " + table + " d JOIN files f ON d._file = f.path)"
            + " SELECT count(*), percentile(ms, 0.5), percentile(ms, 0.99), max(ms), min(ms) FROM lat";
    Row r = spark.sql(sql).first();
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("rows", r.getLong(0));
    m.put("p50", r.isNullAt(1) ? null : Math.round(r.getDouble(1)));
    m.put("p99", r.isNullAt(2) ? null : Math.round(r.getDouble(2)));
    m.put("max", r.isNullAt(3) ? null : r.getLong(3));
    m.put("min", r.isNullAt(4) ? null : r.getLong(4));
    return m;
  }
}
