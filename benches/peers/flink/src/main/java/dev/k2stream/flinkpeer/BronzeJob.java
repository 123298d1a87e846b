package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonGenerator;
import java.io.StringWriter;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.table.data.DecimalData;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.runtime.typeutils.InternalTypeInfo;
import org.apache.flink.table.types.logical.RowType;
import org.apache.flink.util.Collector;
import org.apache.iceberg.DistributionMode;
import org.apache.iceberg.PartitionSpec;
import org.apache.iceberg.Schema;
import org.apache.iceberg.Snapshot;
import org.apache.iceberg.Table;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.catalog.Namespace;
import org.apache.iceberg.catalog.SupportsNamespaces;
import org.apache.iceberg.catalog.TableIdentifier;
import org.apache.iceberg.exceptions.AlreadyExistsException;
import org.apache.iceberg.flink.CatalogLoader;
import org.apache.iceberg.flink.FlinkSchemaUtil;
import org.apache.iceberg.flink.TableLoader;
import org.apache.iceberg.flink.sink.FlinkSink;
import org.apache.iceberg.flink.sink.IcebergSink;
import org.apache.iceberg.types.Types.NestedField;

/**
 * bronze: Binance topic (bounded: earliest .. the end offsets found at start) → decode →
 * [optional dedup by message_id] → Iceberg table partitioned by day(event_time),
 * committed once per completed checkpoint (exactly once).
 */
final class BronzeJob {
    private BronzeJob() {}

    static final Set<String> FLAGS = Common.union(
            Common.union(Common.ENV_FLAGS, Common.CATALOG_FLAGS),
            Set.of("binance-topic", "table", "group-id", "codec", "sink", "dedup-ttl-s", "max-poll-records", "target-file-mb"));
    static final Set<String> BOOLEANS = Common.union(Common.ENV_BOOLEANS, Set.of("fresh", "raw-local-fs"));

    /** The bronze table's columns (all required). */
    static Schema schema() {
        return new Schema(
                NestedField.required(1, "message_id", org.apache.iceberg.types.Types.StringType.get()),
                NestedField.required(2, "symbol", org.apache.iceberg.types.Types.StringType.get()),
                NestedField.required(3, "trade_id", org.apache.iceberg.types.Types.LongType.get()),
                NestedField.required(4, "price", org.apache.iceberg.types.Types.DecimalType.of(38, 18)),
                NestedField.required(5, "quantity", org.apache.iceberg.types.Types.DecimalType.of(38, 18)),
                NestedField.required(6, "side", org.apache.iceberg.types.Types.StringType.get()),
                NestedField.required(7, "event_time", org.apache.iceberg.types.Types.TimestampType.withZone()),
                NestedField.required(8, "kafka_timestamp", org.apache.iceberg.types.Types.TimestampType.withZone()),
                NestedField.required(9, "source_partition", org.apache.iceberg.types.Types.IntegerType.get()),
                NestedField.required(10, "source_offset", org.apache.iceberg.types.Types.LongType.get()));
    }

    static void run(Args a) throws Exception {
        String brokers = a.str("brokers", "127.0.0.1:9092");
        String topic = a.str("binance-topic", "market.crypto.trades.binance");
        String namespace = a.str("namespace", "market_data");
        String tableName = a.str("table", "flink_bronze_binance_trades");
        String codec = a.choice("codec", "snappy", "snappy", "zstd", "gzip", "uncompressed", "lz4");
        String sinkKind = a.choice("sink", "icebergsink", "icebergsink", "flinksink");
        long dedupTtlS = a.lng("dedup-ttl-s", 0, 0);
        int parallelism = a.integer("parallelism", 2, 1);
        long targetFileMb = a.lng("target-file-mb", 512, 1);
        boolean rawLocal = a.bool("raw-local-fs", true);

        CatalogLoader catalogLoader = Common.catalogLoader(a, rawLocal);
        TableIdentifier id = TableIdentifier.of(Namespace.of(namespace), tableName);
        Schema schema = schema();
        long rowsBefore;
        Catalog catalog = catalogLoader.loadCatalog();
        try {
            if (catalog instanceof SupportsNamespaces) {
                SupportsNamespaces ns = (SupportsNamespaces) catalog;
                if (!ns.namespaceExists(Namespace.of(namespace))) {
                    try {
                        ns.createNamespace(Namespace.of(namespace));
                    } catch (AlreadyExistsException ignored) {
                        // created meanwhile
                    }
                }
            }
            if (a.bool("fresh", false) && catalog.tableExists(id)) {
                catalog.dropTable(id, true);
            }
            if (!catalog.tableExists(id)) {
                Map<String, String> props = new HashMap<>();
                props.put("format-version", "2");
                props.put("write.format.default", "parquet");
                props.put("write.parquet.compression-codec", codec);
                props.put("write.target-file-size-bytes", Long.toString(targetFileMb << 20));
                // No shuffle before the writers: each writer takes its source split's rows.
                props.put("write.distribution-mode", "none");
                try {
                    catalog.createTable(id, schema, PartitionSpec.builderFor(schema).day("event_time").build(), props);
                } catch (AlreadyExistsException ignored) {
                    // created meanwhile
                }
            }
            rowsBefore = totalRecords(catalog.loadTable(id));
        } finally {
            Common.closeQuietly(catalog);
        }

        StreamExecutionEnvironment env = Common.env(a);
        KafkaSource<Raw> source = KafkaSource.<Raw>builder()
                .setBootstrapServers(brokers)
                .setTopics(topic)
                .setGroupId(a.str("group-id", "k2-flink-bronze"))
                .setStartingOffsets(OffsetsInitializer.earliest())
                .setBounded(OffsetsInitializer.latest())
                .setDeserializer(new Raw.Deserializer())
                .setProperty("max.poll.records", Long.toString(a.lng("max-poll-records", 500, 1)))
                .setProperty("client.id.prefix", "k2-flink-bronze")
                .build();
        RowType rowType = FlinkSchemaUtil.convert(schema);
        InternalTypeInfo<RowData> rowInfo = InternalTypeInfo.of(rowType);
        DataStream<RowData> rows = env.fromSource(source, WatermarkStrategy.noWatermarks(), "kafka-binance")
                .uid("kafka-binance")
                .flatMap(new Parse())
                .name("decode-binance")
                .uid("decode-binance")
                .returns(rowInfo);
        if (dedupTtlS > 0) {
            rows = rows.keyBy(new MessageIdKey(), Types.STRING)
                    .process(new Dedup(dedupTtlS))
                    .name("dedup-message-id")
                    .uid("dedup-message-id")
                    .returns(rowInfo);
        }
        TableLoader tableLoader = TableLoader.fromCatalog(catalogLoader, id);
        if (sinkKind.equals("flinksink")) {
            FlinkSink.forRowData(rows)
                    .tableLoader(tableLoader)
                    .distributionMode(DistributionMode.NONE)
                    .writeParallelism(parallelism)
                    .uidPrefix("iceberg")
                    .setSnapshotProperty("k2.engine", "flink")
                    .append();
        } else {
            IcebergSink.forRowData(rows)
                    .tableLoader(tableLoader)
                    .distributionMode(DistributionMode.NONE)
                    .writeParallelism(parallelism)
                    .uidSuffix("iceberg")
                    .setSnapshotProperty("k2.engine", "flink")
                    .append();
        }

        long t0 = System.nanoTime();
        JobExecutionResult result = env.execute("k2-flink-bronze");
        double wall = (System.nanoTime() - t0) / 1e9;

        long messages = counter(result, "messages");
        long malformed = counter(result, "malformed");
        long duplicates = counter(result, "duplicates");
        Catalog after = catalogLoader.loadCatalog();
        long rowsAfter;
        int snapshots;
        try {
            Table t = after.loadTable(id);
            rowsAfter = totalRecords(t);
            snapshots = 0;
            for (Snapshot s : t.snapshots()) snapshots++;
        } finally {
            Common.closeQuietly(after);
        }
        StringWriter sw = new StringWriter();
        try (JsonGenerator g = Decode.JSON.createGenerator(sw)) {
            g.writeStartObject();
            g.writeStringField("engine", "flink");
            g.writeStringField("job", "bronze");
            g.writeNumberField("messages", messages);
            g.writeNumberField("wall_s", Common.round3(wall));
            g.writeNumberField("committed_rows", rowsAfter - rowsBefore);
            g.writeNumberField("msgs_per_s", Math.round(messages / wall));
            g.writeNumberField("malformed", malformed);
            g.writeNumberField("duplicates", duplicates);
            g.writeNumberField("table_rows", rowsAfter);
            g.writeNumberField("snapshots", snapshots);
            g.writeNumberField("jvm_s", Common.round3(Common.jvmSeconds()));
            g.writeNumberField("net_runtime_s", Common.round3(result.getNetRuntime() / 1000.0));
            g.writeNumberField("parallelism", parallelism);
            g.writeNumberField("checkpoint_ms", a.lng("checkpoint-ms", 1000, 10));
            g.writeStringField("sink", sinkKind);
            g.writeStringField("table", namespace + "." + tableName);
            g.writeEndObject();
        }
        Common.resultOut.println(sw);
        Common.resultOut.flush();
    }

    static long totalRecords(Table t) {
        t.refresh();
        Snapshot s = t.currentSnapshot();
        if (s == null) return 0;
        String v = s.summary().get("total-records");
        return v == null ? 0 : Long.parseLong(v);
    }

    static long counter(JobExecutionResult r, String name) {
        Object v = r.getAccumulatorResult(name);
        return v instanceof Number ? ((Number) v).longValue() : 0;
    }

    /** Decodes Binance trade events into bronze rows; counts messages and malformed ones. */
    static final class Parse extends RichFlatMapFunction<Raw, RowData> {
        private static final long serialVersionUID = 1L;
        private transient LongCounter messages;
        private transient LongCounter malformed;

        @Override
        public void open(OpenContext ctx) {
            messages = new LongCounter();
            malformed = new LongCounter();
            getRuntimeContext().addAccumulator("messages", messages);
            getRuntimeContext().addAccumulator("malformed", malformed);
        }

        @Override
        public void flatMap(Raw raw, Collector<RowData> out) {
            messages.add(1L);
            Trade t = Decode.binance(raw.value, raw.kafkaMs, raw.partition, raw.offset, true);
            if (t == null) {
                malformed.add(1L);
                return;
            }
            GenericRowData row = new GenericRowData(10);
            row.setField(0, StringData.fromString(t.messageId));
            row.setField(1, StringData.fromString(t.symbol));
            row.setField(2, t.tradeId);
            row.setField(3, DecimalData.fromBigDecimal(t.priceDec, 38, 18));
            row.setField(4, DecimalData.fromBigDecimal(t.qtyDec, 38, 18));
            row.setField(5, StringData.fromString(t.side));
            row.setField(6, TimestampData.fromEpochMillis(Math.floorDiv(t.eventUs, 1000L), (int) Math.floorMod(t.eventUs, 1000L) * 1000));
            row.setField(7, TimestampData.fromEpochMillis(t.kafkaMs));
            row.setField(8, t.partition);
            row.setField(9, t.offset);
            out.collect(row);
        }
    }

    static final class MessageIdKey implements KeySelector<RowData, String> {
        private static final long serialVersionUID = 1L;

        @Override
        public String getKey(RowData r) {
            return r.getString(0).toString();
        }
    }

    /**
     * Optional dedup by message_id: keyed state with a processing-time TTL (Flink's state
     * TTL has no event-time mode). First occurrence passes, later ones are counted.
     */
    static final class Dedup extends KeyedProcessFunction<String, RowData, RowData> {
        private static final long serialVersionUID = 1L;
        private final long ttlSeconds;
        private transient ValueState<Boolean> seen;
        private transient LongCounter duplicates;

        Dedup(long ttlSeconds) {
            this.ttlSeconds = ttlSeconds;
        }

        @Override
        public void open(OpenContext ctx) {
            ValueStateDescriptor<Boolean> d = new ValueStateDescriptor<>("seen", Types.BOOLEAN);
            d.enableTimeToLive(StateTtlConfig.newBuilder(Duration.ofSeconds(ttlSeconds))
                    .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                    .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                    .build());
            seen = getRuntimeContext().getState(d);
            duplicates = new LongCounter();
            getRuntimeContext().addAccumulator("duplicates", duplicates);
        }

        @Override
        public void processElement(RowData row, Context ctx, Collector<RowData> out) throws Exception {
            if (seen.value() != null) {
                duplicates.add(1L);
                return;
            }
            seen.update(Boolean.TRUE);
            out.collect(row);
        }
    }
}
