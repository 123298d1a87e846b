package k2.peers.spark;

import static org.apache.spark.sql.functions.*;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import org.apache.kafka.clients.admin.AdminClient;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.api.java.UDF0;
import org.apache.spark.sql.api.java.UDF2;
import org.apache.spark.sql.expressions.UserDefinedFunction;
import org.apache.spark.sql.streaming.DataStreamWriter;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.StructType;

/**
 * Arbitrage: Binance x Kraken stream-stream inner join by symbol with event times within
 * +-{@code --delta-ms}, net spread after taker fees, alerts as JSON to a Kafka topic.
 *
 * <p>Mirrors K2's {@code src/operators/arbitrage.rs}: buy on the cheaper venue (Binance on a tie),
 * {@code spread_bps = (sell*(1-sell_fee) - buy*(1+buy_fee)) / buy * 1e4} rounded to 0.001 bps,
 * alert when strictly above the threshold, {@code alert_id} = FNV-1a 64 of
 * {@code "<binance message_id>|<kraken message_id>"} in 16 hex digits, record key = alert_id.
 *
 * <p>Runs as micro-batches: Spark's real-time mode cannot join two streams. The Kafka sink is at
 * least once (a batch replayed after a crash re-sends its alerts, with the same alert_id).
 */
final class Arbitrage {
  private Arbitrage() {}

  static final DecimalType DEC = DataTypes.createDecimalType(38, 18);

  static final StructType KRAKEN_TRADE =
      new StructType()
          .add("symbol", DataTypes.StringType)
          .add("side", DataTypes.StringType)
          .add("price", DEC)
          .add("qty", DEC)
          .add("ord_type", DataTypes.StringType)
          .add("trade_id", DataTypes.LongType)
          .add("timestamp", DataTypes.StringType);

  static final StructType KRAKEN_MESSAGE =
      new StructType()
          .add("channel", DataTypes.StringType)
          .add("type", DataTypes.StringType)
          .add("data", DataTypes.createArrayType(KRAKEN_TRADE));

  /** FNV-1a 64 over the UTF-8 bytes of "b|k", 16 lower-case hex digits (K2's Alert::id_of). */
  static String alertId(String binance, String kraken) {
    long h = 0xcbf29ce484222325L;
    byte[] bytes = (binance + "|" + kraken).getBytes(StandardCharsets.UTF_8);
    for (byte b : bytes) {
      h ^= (b & 0xff);
      h *= 0x100000001b3L;
    }
    return String.format("%016x", h);
  }

  static Map<String, Object> run(SparkSession spark, Args a) throws Exception {
    String brokers = a.str("--brokers", "127.0.0.1:9092");
    String binanceTopic = a.str("--binance-topic", "market.crypto.trades.binance");
    String krakenTopic = a.str("--kraken-topic", "market.crypto.trades.kraken");
    String alertsTopic = a.str("--alerts-topic", "spark.arbitrage.alerts");
    long deltaMs = a.lng("--delta-ms", 500);
    long watermarkMs = a.lng("--watermark-ms", 2000);
    double binanceFee = a.dbl("--binance-fee-bps", 2.0) / 1e4;
    double krakenFee = a.dbl("--kraken-fee-bps", 5.0) / 1e4;
    double threshold = a.dbl("--threshold-bps", 1.0);
    ensureAlertsTopic(brokers, alertsTopic, (int) a.lng("--alerts-partitions", 4));

    UserDefinedFunction fnv =
        udf((UDF2<String, String, String>) Arbitrage::alertId, DataTypes.StringType);
    UserDefinedFunction nowMs =
        udf((UDF0<Long>) System::currentTimeMillis, DataTypes.LongType).asNondeterministic();

    Dataset<Row> binance =
        Bronze.parse(Kafka.read(spark, a, binanceTopic))
            .select(
                col("message_id").as("b_id"),
                col("symbol").as("b_symbol"),
                col("price").cast("double").as("b_price"),
                col("event_time").as("b_time"),
                col("kafka_timestamp").as("b_kafka"));
    Dataset<Row> kraken = krakenTrades(Kafka.read(spark, a, krakenTopic));
    binance = binance.withWatermark("b_time", watermarkMs + " milliseconds");
    kraken = kraken.withWatermark("k_time", watermarkMs + " milliseconds");
    if (a.flag("--dedup")) {
      // Drop re-sent trades (same message id) seen within the watermark delay, as K2 does
      // before its join; off by default.
      binance = binance.dropDuplicatesWithinWatermark("b_id");
      kraken = kraken.dropDuplicatesWithinWatermark("k_id");
    }

    // Spark's symmetric hash join looks a row up by the equi-join key and tests the time range
    // on every stored row of that key: by symbol alone that is quadratic in a large micro-batch
    // (a backlog). So the key also has a time bucket of width delta: a Binance row in bucket B
    // can only pair with Kraken rows in buckets B-1..B+1, and each Kraken row is stored under
    // those three buckets, so every pair within delta still meets exactly once.
    // --join-buckets false keeps the plain symbol key (to measure what the buckets save).
    boolean buckets = !a.str("--join-buckets", "true").equals("false");
    binance =
        binance.withColumn(
            "b_bucket",
            buckets ? floor(unix_millis(col("b_time")).divide(deltaMs)) : lit(0L));
    kraken =
        kraken.withColumn(
            "k_bucket",
            buckets
                ? explode(
                    array(
                        floor(unix_millis(col("k_time")).divide(deltaMs)).minus(1),
                        floor(unix_millis(col("k_time")).divide(deltaMs)),
                        floor(unix_millis(col("k_time")).divide(deltaMs)).plus(1)))
                : lit(0L));
    String delta = "interval " + deltaMs + " milliseconds";
    Column cond =
        col("b_symbol").equalTo(col("k_symbol"))
            .and(col("b_bucket").equalTo(col("k_bucket")))
            .and(expr("k_time >= b_time - " + delta))
            .and(expr("k_time <= b_time + " + delta));
    Dataset<Row> pairs = binance.join(kraken, cond, "inner");

    Column pb = col("b_price");
    Column pk = col("k_price");
    Column buyBinance = pb.leq(pk);
    Column buyP = when(buyBinance, pb).otherwise(pk);
    Column sellP = when(buyBinance, pk).otherwise(pb);
    Column buyFee = when(buyBinance, lit(binanceFee)).otherwise(lit(krakenFee));
    Column sellFee = when(buyBinance, lit(krakenFee)).otherwise(lit(binanceFee));
    Column spread =
        sellP.multiply(lit(1.0).minus(sellFee))
            .minus(buyP.multiply(lit(1.0).plus(buyFee)))
            .divide(buyP)
            .multiply(lit(1e4));

    Dataset<Row> alerts =
        pairs
            .where(pb.gt(0).and(pk.gt(0)))
            .withColumn("raw_spread", spread)
            .where(col("raw_spread").gt(lit(threshold)))
            .select(
                fnv.apply(col("b_id"), col("k_id")).as("alert_id"),
                col("b_symbol").as("symbol"),
                when(buyBinance, lit("binance")).otherwise(lit("kraken")).as("buy_exchange"),
                when(buyBinance, lit("kraken")).otherwise(lit("binance")).as("sell_exchange"),
                buyP.as("buy_price"),
                sellP.as("sell_price"),
                round(col("raw_spread").multiply(1000)).divide(1000).as("spread_bps"),
                col("b_id").as("binance_message_id"),
                col("k_id").as("kraken_message_id"),
                unix_millis(col("b_time")).as("binance_event_ms"),
                unix_millis(col("k_time")).as("kraken_event_ms"),
                greatest(unix_millis(col("b_kafka")), unix_millis(col("k_kafka"))).as("produce_ms"),
                nowMs.apply().as("detected_ms"));

    Dataset<Row> out =
        alerts.select(col("alert_id").as("key"), to_json(struct(col("*"))).as("value"));
    DataStreamWriter<Row> w =
        out.writeStream()
            .format("kafka")
            .outputMode("append")
            .queryName("k2_spark_arbitrage")
            .trigger(Main.trigger(a))
            .option("checkpointLocation", a.required("--checkpoint-dir"))
            .option("kafka.bootstrap.servers", brokers)
            .option("topic", alertsTopic)
            .option("kafka.linger.ms", a.str("--linger-ms", "0"));
    Map<String, Object> r = Main.runQuery(w, a, wr -> wr.start());

    Map<String, Object> res = new LinkedHashMap<>(r);
    res.putAll(alertStats(spark, brokers, alertsTopic, (Long) r.get("run_start_ms")));
    res.put("alerts_topic", alertsTopic);
    res.put("delta_ms", deltaMs);
    res.put("watermark_ms", watermarkMs);
    res.remove("run_start_ms");
    res.remove("run_end_ms");
    return res;
  }

  /** Kraken v2 trade messages -> one row per trade in {@code data}. */
  static Dataset<Row> krakenTrades(Dataset<Row> raw) {
    Dataset<Row> msgs =
        raw.select(
            from_json(col("value").cast("string"), KRAKEN_MESSAGE).as("j"),
            col("timestamp").as("k_kafka"));
    Dataset<Row> trades =
        msgs.where(col("j.channel").equalTo("trade"))
            .select(explode(col("j.data")).as("d"), col("k_kafka"));
    Column native_ = col("d.symbol");
    return trades
        .select(
            concat(lit("kraken:"), native_, lit(":"), col("d.trade_id").cast("string")).as("k_id"),
            Symbols.kraken(native_).as("k_symbol"),
            col("d.price").cast("double").as("k_price"),
            col("d.timestamp").try_cast(DataTypes.TimestampType).as("k_time"),
            col("k_kafka"))
        .where(
            col("k_id").isNotNull()
                .and(col("k_symbol").isNotNull())
                .and(col("k_price").isNotNull())
                .and(col("k_time").isNotNull()));
  }

  /**
   * Creates the alerts topic if missing, with LogAppendTime like K2's arbitrage job, so that a
   * record's timestamp is its arrival at the broker.
   */
  static void ensureAlertsTopic(String brokers, String topic, int partitions) throws Exception {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    try (AdminClient admin = AdminClient.create(p)) {
      Set<String> names = admin.listTopics().names().get();
      if (names.contains(topic)) {
        return;
      }
      NewTopic t =
          new NewTopic(topic, partitions, (short) 1)
              .configs(Map.of("message.timestamp.type", "LogAppendTime"));
      try {
        admin.createTopics(List.of(t)).all().get();
      } catch (java.util.concurrent.ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException)) {
          throw e;
        }
      }
    }
  }

  /**
   * Reads back the alerts this run published (broker timestamp at or after the run's start):
   * count, distinct alert ids, and produce-to-alert latency (alert's broker append time minus the
   * later of the two trades' Kafka timestamps) and detection latency (detected_ms - produce_ms).
   */
  static Map<String, Object> alertStats(
      SparkSession spark, String brokers, String topic, long sinceMs) {
    Dataset<Row> rows =
        spark.read()
            .format("kafka")
            .option("kafka.bootstrap.servers", brokers)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("endingOffsets", "latest")
            .load()
            .where(col("timestamp").geq(timestamp_millis(lit(sinceMs))))
            .select(
                col("timestamp"),
                from_json(
                        col("value").cast("string"),
                        new StructType()
                            .add("alert_id", DataTypes.StringType)
                            .add("produce_ms", DataTypes.LongType)
                            .add("detected_ms", DataTypes.LongType))
                    .as("a"));
    rows.createOrReplaceTempView("k2_alerts_run");
    Row r =
        spark.sql(
                "SELECT count(*), count(DISTINCT a.alert_id),"
                    + " percentile(unix_millis(timestamp) - a.produce_ms, 0.5),"
                    + " percentile(unix_millis(timestamp) - a.produce_ms, 0.99),"
                    + " max(unix_millis(timestamp) - a.produce_ms),"
                    + " percentile(a.detected_ms - a.produce_ms, 0.5),"
                    + " percentile(a.detected_ms - a.produce_ms, 0.99)"
                    + " FROM k2_alerts_run")
            .first();
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("alerts", r.getLong(0));
    m.put("distinct_alerts", r.getLong(1));
    Map<String, Object> lat = new LinkedHashMap<>();
    lat.put("p50", r.isNullAt(2) ? null : Math.round(r.getDouble(2)));
    lat.put("p99", r.isNullAt(3) ? null : Math.round(r.getDouble(3)));
    lat.put("max", r.isNullAt(4) ? null : r.getLong(4));
    m.put("latency_ms", lat);
    Map<String, Object> det = new LinkedHashMap<>();
    det.put("p50", r.isNullAt(5) ? null : Math.round(r.getDouble(5)));
    det.put("p99", r.isNullAt(6) ? null : Math.round(r.getDouble(6)));
    m.put("detect_latency_ms", det);
    return m;
  }
}
