package dev.k2stream.flinkpeer;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/** A Kafka record's value and position, undecoded (a Flink POJO). */
public class Raw {
    public byte[] value;
    public long kafkaMs;
    public int partition;
    public long offset;

    public Raw() {}

    /** Emits every record as a {@link Raw}; decoding happens in the next (chained) operator. */
    public static final class Deserializer implements KafkaRecordDeserializationSchema<Raw> {
        private static final long serialVersionUID = 1L;

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Raw> out) {
            Raw r = new Raw();
            r.value = record.value();
            r.kafkaMs = record.timestamp();
            r.partition = record.partition();
            r.offset = record.offset();
            out.collect(r);
        }

        @Override
        public TypeInformation<Raw> getProducedType() {
            return TypeInformation.of(Raw.class);
        }
    }
}
