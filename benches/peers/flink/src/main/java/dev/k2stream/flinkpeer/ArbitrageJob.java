package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFilterFunction;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaSinkBuilder;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.co.ProcessJoinFunction;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * arbitrage: Binance and Kraken topics (unbounded) → decode → event-time watermarks per
 * Kafka partition (bounded out-of-orderness, idleness) → keyBy(symbol) → interval join
 * Binance × Kraken within ±Δ → net spread after both fees → alerts above the threshold to
 * a Kafka topic (JSON, key alert_id).
 */
final class ArbitrageJob {
    private ArbitrageJob() {}

    static final Set<String> FLAGS = Common.union(Common.ENV_FLAGS, Set.of(
            "binance-topic", "kraken-topic", "alerts-topic", "start", "seconds", "delta-ms", "threshold-bps",
            "fee-binance-bps", "fee-kraken-bps", "out-of-orderness-ms", "idle-ms", "delivery", "group-id", "progress-s",
            "linger-ms"));

    static void run(Args a) throws Exception {
        String brokers = a.str("brokers", "127.0.0.1:9092");
        String binanceTopic = a.str("binance-topic", "market.crypto.trades.binance");
        String krakenTopic = a.str("kraken-topic", "market.crypto.trades.kraken");
        String alertsTopic = a.str("alerts-topic", "flink.arbitrage.alerts");
        String start = a.choice("start", "latest", "latest", "earliest");
        long seconds = a.lng("seconds", 0, 0);
        long deltaMs = a.lng("delta-ms", 500, 0);
        double thresholdBps = a.dbl("threshold-bps", 1.0);
        double feeB = a.dbl("fee-binance-bps", 2.0);
        double feeK = a.dbl("fee-kraken-bps", 5.0);
        long oooMs = a.lng("out-of-orderness-ms", 2000, 0);
        long idleMs = a.lng("idle-ms", 0, 0);
        String delivery = a.choice("delivery", "at-least-once", "at-least-once", "exactly-once");
        String group = a.str("group-id", "k2-flink-arbitrage");
        int parallelism = a.integer("parallelism", 2, 1);
        long progressS = a.lng("progress-s", 0, 0);
        // The alert producer's linger.ms; -1 keeps kafka-clients' default (5 ms since Kafka 4.0).
        long lingerMs = a.lng("linger-ms", -1, -1);

        StreamExecutionEnvironment env = Common.env(a);
        OffsetsInitializer startAt = start.equals("earliest") ? OffsetsInitializer.earliest() : OffsetsInitializer.latest();

        WatermarkStrategy<Trade> wm = WatermarkStrategy.<Trade>forBoundedOutOfOrderness(Duration.ofMillis(oooMs))
                .withTimestampAssigner((t, recordTs) -> t.eventMs());
        if (idleMs > 0) wm = wm.withIdleness(Duration.ofMillis(idleMs));

        DataStream<Trade> binance = env.fromSource(source(brokers, binanceTopic, group, startAt, true), wm, "kafka-binance")
                .uid("kafka-binance")
                .filter(new Count("binance_trades"))
                .name("count-binance")
                .uid("count-binance");
        DataStream<Trade> kraken = env.fromSource(source(brokers, krakenTopic, group, startAt, false), wm, "kafka-kraken")
                .uid("kafka-kraken")
                .filter(new Count("kraken_trades"))
                .name("count-kraken")
                .uid("count-kraken");

        DataStream<Alert> alerts = binance.keyBy(new SymbolKey(), Types.STRING)
                .intervalJoin(kraken.keyBy(new SymbolKey(), Types.STRING))
                .between(Duration.ofMillis(-deltaMs), Duration.ofMillis(deltaMs))
                .process(new Spread(feeB, feeK, thresholdBps))
                .name("interval-join-spread")
                .uid("interval-join-spread")
                .returns(TypeInformation.of(Alert.class));

        KafkaSinkBuilder<Alert> sinkBuilder = KafkaSink.<Alert>builder()
                .setBootstrapServers(brokers)
                .setRecordSerializer(new AlertSerializer(alertsTopic))
                .setDeliveryGuarantee(delivery.equals("exactly-once") ? DeliveryGuarantee.EXACTLY_ONCE : DeliveryGuarantee.AT_LEAST_ONCE)
                .setTransactionalIdPrefix("k2-flink-arb-" + Long.toHexString(System.nanoTime()))
                // Below the broker's transaction.max.timeout.ms (15 min); Flink's default is 1 h.
                .setProperty("transaction.timeout.ms", "600000")
                .setProperty("client.id", "k2-flink-alerts");
        if (lingerMs >= 0) {
            sinkBuilder.setProperty("linger.ms", Long.toString(lingerMs));
        }
        KafkaSink<Alert> sink = sinkBuilder.build();
        alerts.sinkTo(sink).name("kafka-alerts").uid("kafka-alerts");

        long t0 = System.nanoTime();
        JobClient client = env.executeAsync("k2-flink-arbitrage");
        // Tell a harness on stderr when the job is ready: its first checkpoint has completed,
        // so every task runs and the sources hold their partitions (the job runs in this JVM,
        // so an operator can signal main through a static latch).
        while (!Count.FIRST_CHECKPOINT.await(100, TimeUnit.MILLISECONDS)) {
            if (client.getJobStatus().get().isGloballyTerminalState()) break;
        }
        System.err.printf("arbitrage: job RUNNING, first checkpoint done after %.1f s (JVM up %.1f s)%n",
                (System.nanoTime() - t0) / 1e9, Common.jvmSeconds());
        CountDownLatch stop = new CountDownLatch(1);
        CountDownLatch done = new CountDownLatch(1);
        // SIGTERM/SIGINT: stop the job gracefully, then let the JVM exit.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.countDown();
            try {
                done.await(90, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "stop-on-signal"));
        Thread watcher = new Thread(() -> {
            try {
                client.getJobExecutionResult().get();
            } catch (Exception ignored) {
                // reported below
            }
            stop.countDown();
        }, "job-watcher");
        watcher.setDaemon(true);
        watcher.start();
        // Progress on stderr every --progress-s seconds (0: none): the job's accumulators.
        long deadline = seconds > 0 ? t0 + TimeUnit.SECONDS.toNanos(seconds) : Long.MAX_VALUE;
        long tick = progressS > 0 ? TimeUnit.SECONDS.toNanos(progressS) : Long.MAX_VALUE;
        while (true) {
            long now = System.nanoTime();
            long wait = Math.min(deadline - now, tick);
            if (wait <= 0 || stop.await(wait, TimeUnit.NANOSECONDS)) break;
            if (progressS > 0) {
                try {
                    Map<String, Object> acc = client.getAccumulators().get(10, TimeUnit.SECONDS);
                    System.err.printf("arbitrage: t=%.1f s binance_trades=%s kraken_trades=%s pairs=%s alerts=%s%n",
                            (System.nanoTime() - t0) / 1e9, acc.get("binance_trades"), acc.get("kraken_trades"),
                            acc.get("pairs"), acc.get("alerts"));
                } catch (Exception e) {
                    // progress is best effort
                }
            }
        }
        Path savepoints = Common.checkpointDir(a).resolve("savepoint");
        boolean stoppedClean = false;
        if (!client.getJobStatus().get().isGloballyTerminalState()) {
            try {
                // Graceful stop: a final savepoint, so an exactly-once sink commits its last transaction.
                client.stopWithSavepoint(false, savepoints.toUri().toString(), SavepointFormatType.CANONICAL)
                        .get(120, TimeUnit.SECONDS);
                stoppedClean = true;
            } catch (Exception e) {
                System.err.println("stop-with-savepoint failed (" + e + "); cancelling");
                client.cancel().get(60, TimeUnit.SECONDS);
            }
        }
        JobExecutionResult result = null;
        try {
            result = client.getJobExecutionResult().get(120, TimeUnit.SECONDS);
        } catch (Exception e) {
            System.err.println("job ended abnormally: " + e);
        }
        double wall = (System.nanoTime() - t0) / 1e9;

        StringWriter sw = new StringWriter();
        try (JsonGenerator g = Decode.JSON.createGenerator(sw)) {
            g.writeStartObject();
            g.writeStringField("engine", "flink");
            g.writeStringField("job", "arbitrage");
            g.writeNumberField("wall_s", Common.round3(wall));
            g.writeNumberField("binance_trades", result == null ? -1 : BronzeJob.counter(result, "binance_trades"));
            g.writeNumberField("kraken_trades", result == null ? -1 : BronzeJob.counter(result, "kraken_trades"));
            g.writeNumberField("pairs", result == null ? -1 : BronzeJob.counter(result, "pairs"));
            g.writeNumberField("alerts", result == null ? -1 : BronzeJob.counter(result, "alerts"));
            g.writeBooleanField("stopped_with_savepoint", stoppedClean);
            g.writeNumberField("parallelism", parallelism);
            g.writeNumberField("checkpoint_ms", a.lng("checkpoint-ms", 1000, 10));
            g.writeNumberField("delta_ms", deltaMs);
            g.writeNumberField("threshold_bps", thresholdBps);
            g.writeStringField("delivery", delivery);
            g.writeStringField("alerts_topic", alertsTopic);
            g.writeEndObject();
        }
        Common.resultOut.println(sw);
        Common.resultOut.flush();
        done.countDown();
    }

    static KafkaSource<Trade> source(String brokers, String topic, String group, OffsetsInitializer startAt, boolean isBinance) {
        return KafkaSource.<Trade>builder()
                .setBootstrapServers(brokers)
                .setTopics(topic)
                .setGroupId(group)
                .setStartingOffsets(startAt)
                .setDeserializer(new TradeDeserializer(isBinance))
                // Pick up partitions of topics created after the job started.
                .setProperty("partition.discovery.interval.ms", "5000")
                .setProperty("client.id.prefix", "k2-flink-arb-" + (isBinance ? "binance" : "kraken"))
                .build();
    }

    /** Decodes each Kafka record into its trades (a Kraken message may hold several). */
    static final class TradeDeserializer implements KafkaRecordDeserializationSchema<Trade> {
        private static final long serialVersionUID = 1L;
        private final boolean binance;

        TradeDeserializer(boolean binance) {
            this.binance = binance;
        }

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> r, Collector<Trade> out) {
            if (binance) {
                Trade t = Decode.binance(r.value(), r.timestamp(), r.partition(), r.offset(), false);
                if (t != null) out.collect(lean(t));
            } else {
                for (Trade t : Decode.kraken(r.value(), r.timestamp(), r.partition(), r.offset())) out.collect(lean(t));
            }
        }

        /**
         * Only what the join and the alert need crosses the keyBy shuffle: the price text is
         * normalized once per trade here (not once per alert), unused strings are dropped.
         */
        private static Trade lean(Trade t) {
            t.priceText = Alert.plainNumber(t.priceText);
            t.qtyText = null;
            t.side = null;
            t.exchange = null;
            return t;
        }

        @Override
        public TypeInformation<Trade> getProducedType() {
            return TypeInformation.of(Trade.class);
        }
    }

    static final class SymbolKey implements KeySelector<Trade, String> {
        private static final long serialVersionUID = 1L;

        @Override
        public String getKey(Trade t) {
            return t.symbol;
        }
    }

    /** Counts records into an accumulator and passes them on; signals the first checkpoint. */
    static final class Count extends RichFilterFunction<Trade> implements CheckpointListener {
        private static final long serialVersionUID = 1L;
        /** Counted down when any Count subtask sees its first completed checkpoint. */
        static final CountDownLatch FIRST_CHECKPOINT = new CountDownLatch(1);
        private final String name;
        private transient LongCounter counter;

        Count(String name) {
            this.name = name;
        }

        @Override
        public void open(OpenContext ctx) {
            counter = new LongCounter();
            getRuntimeContext().addAccumulator(name, counter);
        }

        @Override
        public boolean filter(Trade t) {
            counter.add(1L);
            return true;
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            FIRST_CHECKPOINT.countDown();
        }
    }

    /**
     * For a pair (b, k): buy where it is cheaper, sell on the other exchange, net of both
     * fees: {@code ((sell*(1-fee_sell)) - (buy*(1+fee_buy))) / buy * 1e4}. Emits if above the
     * threshold.
     */
    static final class Spread extends ProcessJoinFunction<Trade, Trade, Alert> {
        private static final long serialVersionUID = 1L;
        private final double feeB;
        private final double feeK;
        private final double thresholdBps;
        private transient LongCounter pairs;
        private transient LongCounter alerts;

        Spread(double feeBinanceBps, double feeKrakenBps, double thresholdBps) {
            this.feeB = feeBinanceBps / 1e4;
            this.feeK = feeKrakenBps / 1e4;
            this.thresholdBps = thresholdBps;
        }

        @Override
        public void open(OpenContext ctx) {
            pairs = new LongCounter();
            alerts = new LongCounter();
            getRuntimeContext().addAccumulator("pairs", pairs);
            getRuntimeContext().addAccumulator("alerts", alerts);
        }

        /** The net spread of a pair in bps, buying on the cheaper exchange. */
        double spreadBps(Trade b, Trade k) {
            return b.price < k.price
                    ? ((k.price * (1 - feeK)) - (b.price * (1 + feeB))) / b.price * 1e4
                    : ((b.price * (1 - feeB)) - (k.price * (1 + feeK))) / k.price * 1e4;
        }

        /** Whether the pair alerts; a non-finite spread (a zero price) never does. */
        boolean alert(Trade b, Trade k) {
            double spread = spreadBps(b, k);
            return spread > thresholdBps && !Double.isInfinite(spread);
        }

        @Override
        public void processElement(Trade b, Trade k, Context ctx, Collector<Alert> out) {
            pairs.add(1L);
            boolean buyBinance = b.price < k.price;
            double spread = spreadBps(b, k);
            // Not finite (a zero price) never alerts.
            if (!(spread > thresholdBps) || Double.isInfinite(spread)) return;
            alerts.add(1L);
            Alert a = new Alert();
            a.alertId = Alert.alertId(b.messageId, k.messageId);
            a.symbol = b.symbol;
            a.buyExchange = buyBinance ? "binance" : "kraken";
            a.sellExchange = buyBinance ? "kraken" : "binance";
            a.buyPrice = buyBinance ? b.priceText : k.priceText;
            a.sellPrice = buyBinance ? k.priceText : b.priceText;
            a.spreadBps = spread;
            a.binanceMessageId = b.messageId;
            a.krakenMessageId = k.messageId;
            a.binanceEventMs = b.eventMs();
            a.krakenEventMs = k.eventMs();
            a.produceMs = Math.max(b.kafkaMs, k.kafkaMs);
            a.detectedMs = System.currentTimeMillis();
            out.collect(a);
        }
    }

    /** Alert → Kafka record: key alert_id, value the alert JSON, timestamp left to Kafka. */
    static final class AlertSerializer implements KafkaRecordSerializationSchema<Alert> {
        private static final long serialVersionUID = 1L;
        private final String topic;
        private transient ByteArrayOutputStream buf;

        AlertSerializer(String topic) {
            this.topic = topic;
        }

        @Override
        public ProducerRecord<byte[], byte[]> serialize(Alert a, KafkaSinkContext ctx, Long timestamp) {
            if (buf == null) buf = new ByteArrayOutputStream(512);
            try {
                return new ProducerRecord<>(topic, null, null, a.alertId.getBytes(StandardCharsets.UTF_8), a.toJson(buf));
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
    }
}
