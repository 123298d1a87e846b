package k2.peers.spark;

import org.apache.spark.sql.streaming.DataStreamReader;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;

/** The Kafka source, shared by both jobs. */
final class Kafka {
  private Kafka() {}

  static Dataset<Row> read(SparkSession spark, Args a, String topic) {
    DataStreamReader r =
        spark.readStream()
            .format("kafka")
            .option("kafka.bootstrap.servers", a.str("--brokers", "127.0.0.1:9092"))
            .option("subscribe", topic)
            .option("startingOffsets", a.str("--starting-offsets", "earliest"))
            .option("failOnDataLoss", "true");
    long max = a.lng("--max-offsets-per-trigger", 0);
    if (max > 0) {
      r = r.option("maxOffsetsPerTrigger", Long.toString(max));
    }
    long minPartitions = a.lng("--min-partitions", 0);
    if (minPartitions > 0) {
      r = r.option("minPartitions", Long.toString(minPartitions));
    }
    // Spark seeks before every poll of a task's consumer, so each poll is one fetch round trip of
    // at most max.poll.records (Kafka default 500) records.
    long maxPoll = a.lng("--max-poll-records", 0);
    if (maxPoll > 0) {
      r = r.option("kafka.max.poll.records", Long.toString(maxPoll));
    }
    return r.load();
  }
}
