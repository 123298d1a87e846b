package k2.peers.spark;

import java.io.File;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.streaming.DataStreamWriter;
import org.apache.spark.sql.streaming.SourceProgress;
import org.apache.spark.sql.streaming.StreamingQuery;
import org.apache.spark.sql.streaming.StreamingQueryProgress;
import org.apache.spark.sql.streaming.Trigger;

/**
 * Entry point of the Spark peer of the K2 benchmark.
 *
 * <p>{@code bronze}: Kafka (Binance trades) -> parse -> Iceberg table, see {@link Bronze}.
 * {@code arbitrage}: Binance x Kraken stream-stream join -> alerts on Kafka, see {@link Arbitrage}.
 *
 * <p>The result of a run is one JSON object written to {@code --result-file} (run.sh prints it).
 */
public final class Main {
  static final String CATALOG = "k2";

  private Main() {}

  public static void main(String[] argv) throws Exception {
    Args a = Args.parse(argv);
    long jvmStartMs = ManagementFactory.getRuntimeMXBean().getStartTime();
    SparkSession spark = session(a);
    Map<String, Object> result;
    switch (a.job) {
      case "bronze":
        result = Bronze.run(spark, a);
        break;
      case "arbitrage":
        result = Arbitrage.run(spark, a);
        break;
      default:
        throw new IllegalArgumentException("unknown job " + a.job + " (bronze|arbitrage)");
    }
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("engine", "spark");
    out.put("job", a.job);
    out.putAll(result);
    out.put("startup_s", round3(((Long) result.remove("query_start_ms") - jvmStartMs) / 1000.0));
    out.remove("query_start_ms");
    out.put("spark_version", spark.version());
    out.put("iceberg_version", org.apache.iceberg.IcebergBuild.version());
    String json = Json.write(out);
    String resultFile = a.str("--result-file", "");
    if (!resultFile.isEmpty()) {
      Files.writeString(Path.of(resultFile), json + "\n", StandardCharsets.UTF_8);
    }
    System.out.println("K2_RESULT " + json);
    spark.stop();
  }

  static SparkSession session(Args a) {
    String warehouse = new File(a.required("--warehouse")).getAbsolutePath();
    new File(warehouse).mkdirs();
    String cat = "spark.sql.catalog." + CATALOG;
    SparkSession.Builder b =
        SparkSession.builder()
            .appName("k2-spark-peer-" + a.job)
            .master(a.str("--master", "local[2]"))
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", a.str("--shuffle-partitions", "2"))
            // Keep every progress report of the run: the result is computed from them.
            .config("spark.sql.streaming.numRecentProgressUpdates", "1000000")
            .config("spark.sql.streaming.stateStore.providerClass",
                a.str("--state-store", "hdfs").equals("rocksdb")
                    ? "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
                    : "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider")
            .config("spark.sql.extensions",
                "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
            .config(cat, "org.apache.iceberg.spark.SparkCatalog")
            .config(cat + ".type", "jdbc")
            .config(cat + ".uri", "jdbc:sqlite:" + warehouse + "/catalog.db")
            .config(cat + ".warehouse", "file://" + warehouse)
            // Re-read the table after the run instead of a cached copy.
            .config(cat + ".cache-enabled", "false");
    return b.getOrCreate();
  }

  /** available-now, or a processing-time interval in ms. */
  static Trigger trigger(Args a) {
    String t = a.str("--trigger", "available-now");
    if (t.equals("available-now")) {
      return Trigger.AvailableNow();
    }
    return Trigger.ProcessingTime(Long.parseLong(t.replace("ms", "")), TimeUnit.MILLISECONDS);
  }

  static boolean isAvailableNow(Args a) {
    return a.str("--trigger", "available-now").equals("available-now");
  }

  /**
   * Starts {@code writer}, runs it to the end (available-now) or for {@code --seconds} (processing
   * time, then stops between two micro-batches), and returns the run's numbers.
   */
  static Map<String, Object> runQuery(DataStreamWriter<?> writer, Args a, StartFn start)
      throws Exception {
    long startMs = System.currentTimeMillis();
    StreamingQuery q = start.start(writer);
    long endMs;
    if (isAvailableNow(a)) {
      q.awaitTermination();
      endMs = System.currentTimeMillis();
    } else {
      long seconds = a.lng("--seconds", 60);
      q.awaitTermination(seconds * 1000);
      if (q.exception().isDefined()) {
        throw q.exception().get();
      }
      // Graceful stop: let the running micro-batch finish (and commit) first.
      long deadline = System.currentTimeMillis() + 120_000;
      while (q.status().isTriggerActive() && System.currentTimeMillis() < deadline) {
        Thread.sleep(5);
      }
      q.stop();
      endMs = System.currentTimeMillis();
    }
    if (q.exception().isDefined()) {
      throw q.exception().get();
    }
    StreamingQueryProgress[] progress = q.recentProgress();
    long input = 0;
    long batches = 0;
    long maxBatchMs = 0;
    long sumBatchMs = 0;
    long slowBatches = 0;
    long interval = isAvailableNow(a) ? Long.MAX_VALUE : Long.parseLong(a.str("--trigger", "0"));
    List<Long> batchMs = new ArrayList<>();
    String behind = null;
    Map<String, Long> phaseSum = new java.util.TreeMap<>();
    for (StreamingQueryProgress p : progress) {
      if (p.numInputRows() <= 0) {
        continue;
      }
      input += p.numInputRows();
      batches++;
      for (Map.Entry<String, Long> e : p.durationMs().entrySet()) {
        phaseSum.merge(e.getKey(), e.getValue(), Long::sum);
      }
      Long ms = p.durationMs().get("triggerExecution");
      if (ms != null) {
        maxBatchMs = Math.max(maxBatchMs, ms);
        sumBatchMs += ms;
        batchMs.add(ms);
        if (ms > interval) {
          slowBatches++;
        }
      }
      for (SourceProgress s : p.sources()) {
        Object m = s.metrics().get("maxOffsetsBehindLatest");
        if (m != null) {
          behind = String.valueOf(m);
        }
      }
    }
    Map<String, Object> r = new LinkedHashMap<>();
    r.put("query_start_ms", startMs);
    r.put("messages", input);
    double wall = (endMs - startMs) / 1000.0;
    r.put("wall_s", round3(wall));
    r.put("msg_per_s", wall > 0 ? Math.round(input / wall) : 0);
    r.put("trigger", a.str("--trigger", "available-now"));
    r.put("shuffle_partitions", Integer.parseInt(a.str("--shuffle-partitions", "2")));
    r.put("batches", batches);
    r.put("avg_batch_ms", batches > 0 ? sumBatchMs / batches : 0);
    batchMs.sort(null);
    r.put("p50_batch_ms", batchMs.isEmpty() ? 0 : batchMs.get(batchMs.size() / 2));
    r.put("max_batch_ms", maxBatchMs);
    // Where a batch's time goes on average (Spark's durationMs: addBatch = run the job and
    // commit to the sink, walCommit/commitOffsets = checkpoint writes, queryPlanning, ...).
    Map<String, Object> phases = new LinkedHashMap<>();
    for (Map.Entry<String, Long> e : phaseSum.entrySet()) {
      phases.put(e.getKey(), batches > 0 ? e.getValue() / batches : 0);
    }
    r.put("avg_phase_ms", phases);
    if (!isAvailableNow(a)) {
      r.put("batches_over_interval", slowBatches);
      r.put("last_max_offsets_behind", behind == null ? null : Long.parseLong(behind));
    }
    r.put("run_start_ms", startMs);
    r.put("run_end_ms", endMs);
    return r;
  }

  interface StartFn {
    StreamingQuery start(DataStreamWriter<?> w) throws Exception;
  }

  static double round3(double v) {
    return Math.round(v * 1000.0) / 1000.0;
  }

  static String fmt(String f, Object... args) {
    return String.format(Locale.ROOT, f, args);
  }
}
