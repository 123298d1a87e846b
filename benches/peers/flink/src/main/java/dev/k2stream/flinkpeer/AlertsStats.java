package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.StringWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.record.TimestampType;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * alerts-stats: reads an alerts topic from the beginning to its end (read_committed),
 * checks every alert (fields, alert_id = FNV-1a of the two message ids) and prints one JSON
 * line: counts and latency percentiles of (record timestamp - produce_ms), which is
 * arrival latency when the topic uses LogAppendTime, and of (detected_ms - produce_ms).
 */
final class AlertsStats {
    private AlertsStats() {}

    static final Set<String> FLAGS = Set.of("brokers", "alerts-topic", "isolation");
    static final Set<String> BOOLEANS = Set.of("timeline");
    static final String[] FIELDS = {
        "alert_id", "symbol", "buy_exchange", "sell_exchange", "buy_price", "sell_price", "spread_bps",
        "binance_message_id", "kraken_message_id", "binance_event_ms", "kraken_event_ms", "produce_ms", "detected_ms",
    };

    static void run(Args a) throws Exception {
        String topic = a.str("alerts-topic", "flink.arbitrage.alerts");
        boolean timeline = a.bool("timeline", false);
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, a.str("brokers", "127.0.0.1:9092"));
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, a.choice("isolation", "read_committed", "read_committed", "read_uncommitted"));
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "5000");
        ObjectMapper om = new ObjectMapper();
        long records = 0, bad = 0, badId = 0, logAppend = 0;
        Set<String> ids = new HashSet<>();
        java.util.TreeMap<String, Long> bySymbol = new java.util.TreeMap<>();
        // produce second -> arrival latencies, for --timeline
        java.util.TreeMap<Long, List<Long>> perSecond = new java.util.TreeMap<>();
        List<Long> arrival = new ArrayList<>();
        List<Long> detect = new ArrayList<>();
        long minProduce = Long.MAX_VALUE, maxProduce = Long.MIN_VALUE;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(30));
            if (infos != null) for (PartitionInfo i : infos) parts.add(new TopicPartition(topic, i.partition()));
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts);
            long deadline = System.currentTimeMillis() + 300_000;
            while (!parts.isEmpty() && !caughtUp(c, end) && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                    records++;
                    if (r.timestampType() == TimestampType.LOG_APPEND_TIME) logAppend++;
                    JsonNode n;
                    try {
                        n = om.readTree(r.value());
                    } catch (Exception e) {
                        bad++;
                        continue;
                    }
                    boolean ok = n.isObject() && n.size() == FIELDS.length;
                    for (String f : FIELDS) ok &= n.has(f);
                    if (!ok) {
                        bad++;
                        continue;
                    }
                    String id = n.get("alert_id").asText();
                    String want = Alert.alertId(n.get("binance_message_id").asText(), n.get("kraken_message_id").asText());
                    if (!id.equals(want) || r.key() == null || !id.equals(new String(r.key(), java.nio.charset.StandardCharsets.UTF_8))) {
                        badId++;
                    }
                    ids.add(id);
                    bySymbol.merge(n.get("symbol").asText(), 1L, Long::sum);
                    long produce = n.get("produce_ms").asLong();
                    minProduce = Math.min(minProduce, produce);
                    maxProduce = Math.max(maxProduce, produce);
                    arrival.add(r.timestamp() - produce);
                    perSecond.computeIfAbsent(produce / 1000, k -> new ArrayList<>()).add(r.timestamp() - produce);
                    detect.add(n.get("detected_ms").asLong() - produce);
                }
            }
        }
        StringWriter sw = new StringWriter();
        try (JsonGenerator g = Decode.JSON.createGenerator(sw)) {
            g.writeStartObject();
            g.writeStringField("topic", topic);
            g.writeNumberField("records", records);
            g.writeNumberField("distinct_alert_ids", ids.size());
            g.writeNumberField("malformed", bad);
            g.writeNumberField("bad_alert_id", badId);
            g.writeNumberField("log_append_time_records", logAppend);
            g.writeObjectFieldStart("by_symbol");
            for (var e : bySymbol.entrySet()) g.writeNumberField(e.getKey(), e.getValue());
            g.writeEndObject();
            if (!arrival.isEmpty()) {
                g.writeNumberField("produce_span_s", Common.round3((maxProduce - minProduce) / 1000.0));
                percentiles(g, "arrival_latency_ms", arrival);
                percentiles(g, "detect_latency_ms", detect);
                if (timeline) {
                    long first = perSecond.firstKey();
                    g.writeArrayFieldStart("timeline");
                    for (var e : perSecond.entrySet()) {
                        long[] v = e.getValue().stream().mapToLong(Long::longValue).sorted().toArray();
                        g.writeStartObject();
                        g.writeNumberField("s", e.getKey() - first);
                        g.writeNumberField("alerts", v.length);
                        g.writeNumberField("arrival_p50_ms", v[v.length / 2]);
                        g.writeNumberField("arrival_max_ms", v[v.length - 1]);
                        g.writeEndObject();
                    }
                    g.writeEndArray();
                }
            }
            g.writeEndObject();
        }
        Common.resultOut.println(sw);
        Common.resultOut.flush();
    }

    private static boolean caughtUp(KafkaConsumer<byte[], byte[]> c, Map<TopicPartition, Long> end) {
        for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
            if (c.position(e.getKey()) < e.getValue()) return false;
        }
        return true;
    }

    private static void percentiles(JsonGenerator g, String name, List<Long> xs) throws java.io.IOException {
        long[] v = xs.stream().mapToLong(Long::longValue).toArray();
        Arrays.sort(v);
        double mean = Arrays.stream(v).average().orElse(0);
        g.writeObjectFieldStart(name);
        g.writeNumberField("min", v[0]);
        g.writeNumberField("p50", v[(int) Math.min(v.length - 1, Math.floor(v.length * 0.50))]);
        g.writeNumberField("p90", v[(int) Math.min(v.length - 1, Math.floor(v.length * 0.90))]);
        g.writeNumberField("p99", v[(int) Math.min(v.length - 1, Math.floor(v.length * 0.99))]);
        g.writeNumberField("max", v[v.length - 1]);
        g.writeNumberField("mean", Common.round3(mean));
        g.writeEndObject();
    }
}
