package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.StringWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.function.Consumer;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * oracle: a brute-force, single-threaded reference for the arbitrage job. Reads both input
 * topics completely, decodes them with the same decoder, and finds every Binance × Kraken
 * pair of the same symbol with |t_b − t_k| ≤ Δ (event time, ms; both bounds inclusive, as
 * Flink's {@code between(-Δ, +Δ)}) and its net spread. Prints the expected pair and alert
 * counts; with --alerts-topic also compares the alert ids found there (missing / extra).
 * Lateness is ignored: the oracle's answer is what a job that drops nothing must emit.
 */
final class Oracle {
    private Oracle() {}

    static final Set<String> FLAGS = Set.of("brokers", "binance-topic", "kraken-topic", "alerts-topic",
            "delta-ms", "threshold-bps", "fee-binance-bps", "fee-kraken-bps");

    static void run(Args a) throws Exception {
        String brokers = a.str("brokers", "127.0.0.1:9092");
        long delta = a.lng("delta-ms", 500, 0);
        double threshold = a.dbl("threshold-bps", 1.0);
        ArbitrageJob.Spread spread = new ArbitrageJob.Spread(a.dbl("fee-binance-bps", 2.0), a.dbl("fee-kraken-bps", 5.0), threshold);

        Map<String, List<Trade>> binance = new HashMap<>();
        Map<String, List<Trade>> kraken = new HashMap<>();
        long[] msgs = new long[2];
        readAll(brokers, a.str("binance-topic", "market.crypto.trades.binance"), r -> {
            msgs[0]++;
            Trade t = Decode.binance(r.value(), r.timestamp(), r.partition(), r.offset(), false);
            if (t != null) binance.computeIfAbsent(t.symbol, k -> new ArrayList<>()).add(t);
        });
        readAll(brokers, a.str("kraken-topic", "market.crypto.trades.kraken"), r -> {
            msgs[1]++;
            for (Trade t : Decode.kraken(r.value(), r.timestamp(), r.partition(), r.offset())) {
                kraken.computeIfAbsent(t.symbol, k -> new ArrayList<>()).add(t);
            }
        });
        long pairs = 0;
        Set<String> expected = new HashSet<>();
        Comparator<Trade> byTime = Comparator.comparingLong(Trade::eventMs);
        for (Map.Entry<String, List<Trade>> e : binance.entrySet()) {
            List<Trade> ks = kraken.getOrDefault(e.getKey(), List.of());
            ks.sort(byTime);
            long[] kt = ks.stream().mapToLong(Trade::eventMs).toArray();
            for (Trade b : e.getValue()) {
                long lo = b.eventMs() - delta, hi = b.eventMs() + delta;
                for (int i = lowerBound(kt, lo); i < kt.length && kt[i] <= hi; i++) {
                    pairs++;
                    Trade k = ks.get(i);
                    if (spread.alert(b, k)) expected.add(Alert.alertId(b.messageId, k.messageId));
                }
            }
        }
        long bCount = binance.values().stream().mapToLong(List::size).sum();
        long kCount = kraken.values().stream().mapToLong(List::size).sum();

        String alertsTopic = a.str("alerts-topic", null);
        long found = 0, missing = 0, extra = 0;
        if (alertsTopic != null) {
            Set<String> got = new HashSet<>();
            ObjectMapper om = new ObjectMapper();
            readAll(brokers, alertsTopic, r -> {
                try {
                    JsonNode n = om.readTree(r.value());
                    got.add(n.get("alert_id").asText());
                } catch (Exception ex) {
                    // counted as extra below
                    got.add("malformed:" + r.partition() + ":" + r.offset());
                }
            });
            found = got.size();
            for (String id : expected) if (!got.contains(id)) missing++;
            for (String id : got) if (!expected.contains(id)) extra++;
        }
        StringWriter sw = new StringWriter();
        try (JsonGenerator g = Decode.JSON.createGenerator(sw)) {
            g.writeStartObject();
            g.writeStringField("job", "oracle");
            g.writeNumberField("binance_messages", msgs[0]);
            g.writeNumberField("kraken_messages", msgs[1]);
            g.writeNumberField("binance_trades", bCount);
            g.writeNumberField("kraken_trades", kCount);
            g.writeNumberField("pairs", pairs);
            g.writeNumberField("alerts", expected.size());
            if (alertsTopic != null) {
                g.writeStringField("alerts_topic", alertsTopic);
                g.writeNumberField("distinct_alerts_in_topic", found);
                g.writeNumberField("missing", missing);
                g.writeNumberField("extra", extra);
            }
            g.writeEndObject();
        }
        Common.resultOut.println(sw);
        Common.resultOut.flush();
    }

    private static int lowerBound(long[] xs, long v) {
        int lo = 0, hi = xs.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (xs[mid] < v) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /** Every record of a topic, from the beginning to the end offsets found at start. */
    static void readAll(String brokers, String topic, Consumer<ConsumerRecord<byte[], byte[]>> f) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "5000");
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(30));
            if (infos != null) for (PartitionInfo i : infos) parts.add(new TopicPartition(topic, i.partition()));
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts);
            long deadline = System.currentTimeMillis() + 600_000;
            while (System.currentTimeMillis() < deadline) {
                boolean done = true;
                for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
                    if (c.position(e.getKey()) < e.getValue()) done = false;
                }
                if (done) break;
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) f.accept(r);
            }
        }
    }
}
