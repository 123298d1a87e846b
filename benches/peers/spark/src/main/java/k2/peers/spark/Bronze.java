package k2.peers.spark;

import static org.apache.spark.sql.functions.*;

import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.streaming.DataStreamWriter;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * Bronze: Binance spot trades from Kafka into the Iceberg table
 * {@code k2.market_data.spark_bronze_binance_trades}, partitioned by {@code days(event_time)}.
 *
 * <p>Same columns as K2's bronze trade table. Messages that do not parse (bad JSON, not a trade,
 * unsplittable symbol, bad decimal) are dropped: there is no dead-letter table on this side.
 */
final class Bronze {
  private Bronze() {}

  static final String DEFAULT_TABLE = "market_data.spark_bronze_binance_trades";

  /** Only the fields used ({@code E} and {@code M} are not). */
  static final StructType BINANCE_TRADE =
      new StructType()
          .add("e", DataTypes.StringType)
          .add("s", DataTypes.StringType)
          .add("t", DataTypes.LongType)
          .add("p", DataTypes.StringType)
          .add("q", DataTypes.StringType)
          .add("T", DataTypes.LongType)
          .add("m", DataTypes.BooleanType);

  /**
   * The same struct with names unique regardless of case: Spark resolves names case-insensitively,
   * so {@code t} and {@code T} would be ambiguous. A struct cast renames by position.
   */
  static final StructType BINANCE_TRADE_RENAMED =
      new StructType()
          .add("e", DataTypes.StringType)
          .add("s", DataTypes.StringType)
          .add("trade_id", DataTypes.LongType)
          .add("p", DataTypes.StringType)
          .add("q", DataTypes.StringType)
          .add("trade_ms", DataTypes.LongType)
          .add("m", DataTypes.BooleanType);

  static Map<String, Object> run(SparkSession spark, Args a) throws Exception {
    String table = Main.CATALOG + "." + a.str("--table", DEFAULT_TABLE);
    String checkpoint = a.required("--checkpoint-dir");
    createTable(spark, table, a);

    Dataset<Row> raw = Kafka.read(spark, a, a.required("--topic"));
    Dataset<Row> trades = parse(raw);
    long dedupMs = a.lng("--dedup-watermark-ms", 0);
    if (dedupMs > 0) {
      // Optional: drop re-sent messages whose event times are within the watermark delay.
      trades = trades.withWatermark("event_time", dedupMs + " milliseconds")
          .dropDuplicatesWithinWatermark("message_id");
    }

    DataStreamWriter<Row> w =
        trades.writeStream()
            .format("iceberg")
            .outputMode("append")
            .queryName("k2_spark_bronze")
            .trigger(Main.trigger(a))
            .option("checkpointLocation", checkpoint)
            // Write each task's rows straight into per-partition files (no sort).
            .option("fanout-enabled", a.str("--fanout", "true"));
    Map<String, Object> r = Main.runQuery(w, a, wr -> ((DataStreamWriter<?>) wr).toTable(table));

    // What the table holds now (all runs into this warehouse), read back through the catalog.
    long committed = spark.table(table).count();
    Map<String, Object> out = new LinkedHashMap<>(r);
    out.put("committed_rows", committed);
    out.put("table", table);
    if (!Main.isAvailableNow(a)) {
      out.put("latency_ms", Latency.produceToCommit(
              spark, table, (Long) r.get("run_start_ms"), a.lng("--latency-skip-s", 0) * 1000));
    }
    out.remove("run_start_ms");
    out.remove("run_end_ms");
    return out;
  }

  /** Kafka rows (key, value, topic, partition, offset, timestamp) -> bronze trade rows. */
  static Dataset<Row> parse(Dataset<Row> raw) {
    Dataset<Row> j =
        raw.select(
            from_json(col("value").cast("string"), BINANCE_TRADE).cast(BINANCE_TRADE_RENAMED).as("j"),
            col("topic"),
            col("partition"),
            col("offset"),
            col("timestamp"));
    Column s = col("j.s");
    Column price = col("j.p").try_cast(DataTypes.createDecimalType(38, 18));
    Column qty = col("j.q").try_cast(DataTypes.createDecimalType(38, 18));
    Dataset<Row> rows =
        j.select(
            concat(lit("binance:"), s, lit(":"), col("j.trade_id").cast("string")).as("message_id"),
            lit("binance").as("exchange"),
            Symbols.binance(s).as("symbol"),
            s.as("native_symbol"),
            col("j.trade_id").as("trade_id"),
            price.as("price"),
            qty.as("quantity"),
            when(col("j.m"), lit("sell")).otherwise(lit("buy")).as("side"),
            timestamp_millis(col("j.trade_ms")).as("event_time"),
            current_timestamp().as("ingest_time"),
            col("timestamp").as("kafka_timestamp"),
            col("topic").as("source_topic"),
            col("partition").as("source_partition"),
            col("offset").as("source_offset"),
            col("j.e").as("e"),
            col("j.m").as("m"));
    return rows.where(
            col("e").equalTo("trade")
                .and(col("symbol").isNotNull())
                .and(col("trade_id").isNotNull())
                .and(col("price").isNotNull())
                .and(col("quantity").isNotNull())
                .and(col("event_time").isNotNull())
                .and(col("m").isNotNull()))
        .drop("e", "m");
  }

  static void createTable(SparkSession spark, String table, Args a) {
    String ns = table.substring(0, table.lastIndexOf('.'));
    spark.sql("CREATE NAMESPACE IF NOT EXISTS " + ns);
    spark.sql(
        "CREATE TABLE IF NOT EXISTS " + table + " ("
            + " message_id STRING, exchange STRING, symbol STRING, native_symbol STRING,"
            + " trade_id BIGINT, price DECIMAL(38,18), quantity DECIMAL(38,18), side STRING,"
            + " event_time TIMESTAMP, ingest_time TIMESTAMP, kafka_timestamp TIMESTAMP,"
            + " source_topic STRING, source_partition INT, source_offset BIGINT)"
            + " USING iceberg PARTITIONED BY (days(event_time))"
            + " TBLPROPERTIES ("
            + "'format-version'='2',"
            + "'write.format.default'='parquet',"
            + "'write.parquet.compression-codec'='" + a.str("--codec", "snappy") + "',"
            + "'write.distribution-mode'='" + a.str("--distribution-mode", "none") + "',"
            + "'write.metadata.delete-after-commit.enabled'='true',"
            + "'write.metadata.previous-versions-max'='" + a.str("--keep-metadata", "100") + "')");
  }
}
