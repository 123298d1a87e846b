//! Table schemas, and the conversion of K2 records into Arrow batches.
//!
//! Each table's rows implement [`TableRow`]: the Iceberg schema, the partition
//! (always `day(...)` of a timestamp column, so daily partitions stay small and
//! prunable), and the columnar conversion. The Arrow schema is derived from the
//! Iceberg one, so Parquet field ids always match the table.

use crate::record::{Alert, DeadLetter, Trade};
use arrow_array::builder::{
    Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use std::sync::Arc;

/// Context a row needs to be written that it does not carry itself.
#[derive(Clone, Debug)]
pub struct RowContext {
    /// Topic names, indexed by [`crate::record::SourcePosition::topic`].
    pub topics: Arc<Vec<String>>,
}

/// A record type that can be written to an Iceberg table.
pub trait TableRow: timely::ExchangeData + Clone {
    /// The table's Iceberg schema.
    fn schema() -> Schema;
    /// The id of the timestamp column that `day(...)` partitions by.
    fn partition_source_id() -> i32;
    /// The row's partition: days since the Unix epoch of that column.
    fn partition_day(&self) -> i32;
    /// When the source message was produced (Kafka timestamp), ms: used for
    /// the produce-to-commit latency.
    fn produce_ms(&self) -> i64;
    /// Builds one Arrow batch from `rows`, in `schema` (derived from [`Self::schema`]).
    fn to_batch(rows: &[Self], ctx: &RowContext, schema: &SchemaRef) -> RecordBatch;
}

fn day_of_us(us: i64) -> i32 {
    us.div_euclid(86_400_000_000) as i32
}

fn req(id: i32, name: &str, t: PrimitiveType) -> Arc<NestedField> {
    Arc::new(NestedField::required(id, name, Type::Primitive(t)))
}

fn opt(id: i32, name: &str, t: PrimitiveType) -> Arc<NestedField> {
    Arc::new(NestedField::optional(id, name, Type::Primitive(t)))
}

fn decimal() -> PrimitiveType {
    PrimitiveType::Decimal {
        precision: 38,
        scale: crate::record::DECIMAL_SCALE,
    }
}

/// Typed column builders that finish with the exact Arrow type of the schema
/// (time zones and decimal precision come from the table, not from here).
fn finish(schema: &SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(col, field)| {
            if col.data_type() == field.data_type() {
                col
            } else {
                arrow_cast_same_layout(col, field.data_type())
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).expect("row conversion matches the table schema")
}

/// Re-labels an array whose physical layout already matches `to` (timestamp
/// time zone, decimal precision/scale).
fn arrow_cast_same_layout(col: ArrayRef, to: &DataType) -> ArrayRef {
    let data = col
        .to_data()
        .into_builder()
        .data_type(to.clone())
        .build()
        .expect("same physical layout");
    arrow_array::make_array(data)
}

impl TableRow for Trade {
    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                req(1, "message_id", PrimitiveType::String),
                req(2, "exchange", PrimitiveType::String),
                req(3, "symbol", PrimitiveType::String),
                req(4, "native_symbol", PrimitiveType::String),
                req(5, "trade_id", PrimitiveType::Long),
                req(6, "price", decimal()),
                req(7, "quantity", decimal()),
                req(8, "side", PrimitiveType::String),
                req(9, "event_time", PrimitiveType::Timestamptz),
                req(10, "ingest_time", PrimitiveType::Timestamptz),
                req(11, "kafka_timestamp", PrimitiveType::Timestamptz),
                req(12, "source_topic", PrimitiveType::String),
                req(13, "source_partition", PrimitiveType::Int),
                req(14, "source_offset", PrimitiveType::Long),
            ])
            .build()
            .expect("valid trade schema")
    }
    fn partition_source_id() -> i32 {
        9
    }
    fn partition_day(&self) -> i32 {
        day_of_us(self.event_us)
    }
    fn produce_ms(&self) -> i64 {
        self.source.kafka_ts_ms
    }
    fn to_batch(rows: &[Self], ctx: &RowContext, schema: &SchemaRef) -> RecordBatch {
        let n = rows.len();
        let mut message_id = StringBuilder::with_capacity(n, n * 24);
        let mut exchange = StringBuilder::with_capacity(n, n * 7);
        let mut symbol = StringBuilder::with_capacity(n, n * 8);
        let mut native = StringBuilder::with_capacity(n, n * 8);
        let mut trade_id = Int64Builder::with_capacity(n);
        let mut price = Decimal128Builder::with_capacity(n);
        let mut qty = Decimal128Builder::with_capacity(n);
        let mut side = StringBuilder::with_capacity(n, n * 4);
        let mut event = TimestampMicrosecondBuilder::with_capacity(n);
        let mut ingest = TimestampMicrosecondBuilder::with_capacity(n);
        let mut kafka_ts = TimestampMicrosecondBuilder::with_capacity(n);
        let mut topic = StringBuilder::with_capacity(n, n * 28);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        for r in rows {
            message_id.append_value(&r.message_id);
            exchange.append_value(r.exchange.name());
            symbol.append_value(&r.symbol);
            native.append_value(&r.native_symbol);
            trade_id.append_value(r.trade_id as i64);
            price.append_value(r.price.0);
            qty.append_value(r.quantity.0);
            side.append_value(r.side.name());
            event.append_value(r.event_us);
            ingest.append_value(r.source.ingest_us);
            kafka_ts.append_value(r.source.kafka_ts_ms * 1000);
            topic.append_value(
                ctx.topics
                    .get(r.source.topic as usize)
                    .map(String::as_str)
                    .unwrap_or("?"),
            );
            partition.append_value(r.source.partition);
            offset.append_value(r.source.offset);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(message_id.finish()),
            Arc::new(exchange.finish()),
            Arc::new(symbol.finish()),
            Arc::new(native.finish()),
            Arc::new(trade_id.finish()),
            Arc::new(price.finish()),
            Arc::new(qty.finish()),
            Arc::new(side.finish()),
            Arc::new(event.finish()),
            Arc::new(ingest.finish()),
            Arc::new(kafka_ts.finish()),
            Arc::new(topic.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
        ];
        finish(schema, columns)
    }
}

impl TableRow for DeadLetter {
    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                req(1, "source_topic", PrimitiveType::String),
                req(2, "source_partition", PrimitiveType::Int),
                req(3, "source_offset", PrimitiveType::Long),
                req(4, "reason", PrimitiveType::String),
                opt(5, "raw_key", PrimitiveType::Binary),
                req(6, "raw_payload", PrimitiveType::Binary),
                req(7, "kafka_timestamp", PrimitiveType::Timestamptz),
                req(8, "ingest_time", PrimitiveType::Timestamptz),
            ])
            .build()
            .expect("valid dead-letter schema")
    }
    fn partition_source_id() -> i32 {
        7
    }
    fn partition_day(&self) -> i32 {
        day_of_us(self.source.kafka_ts_ms * 1000)
    }
    fn produce_ms(&self) -> i64 {
        self.source.kafka_ts_ms
    }
    fn to_batch(rows: &[Self], ctx: &RowContext, schema: &SchemaRef) -> RecordBatch {
        let n = rows.len();
        let mut topic = StringBuilder::with_capacity(n, n * 28);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut reason = StringBuilder::with_capacity(n, n * 40);
        let mut key = LargeBinaryBuilder::with_capacity(n, n * 8);
        let mut payload = LargeBinaryBuilder::with_capacity(n, n * 128);
        let mut kafka_ts = TimestampMicrosecondBuilder::with_capacity(n);
        let mut ingest = TimestampMicrosecondBuilder::with_capacity(n);
        for r in rows {
            topic.append_value(
                ctx.topics
                    .get(r.source.topic as usize)
                    .map(String::as_str)
                    .unwrap_or("?"),
            );
            partition.append_value(r.source.partition);
            offset.append_value(r.source.offset);
            reason.append_value(&r.reason);
            key.append_option(r.key.as_deref());
            payload.append_value(&r.payload);
            kafka_ts.append_value(r.source.kafka_ts_ms * 1000);
            ingest.append_value(r.source.ingest_us);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(topic.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(reason.finish()),
            Arc::new(key.finish()),
            Arc::new(payload.finish()),
            Arc::new(kafka_ts.finish()),
            Arc::new(ingest.finish()),
        ];
        finish(schema, columns)
    }
}

impl TableRow for Alert {
    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                req(1, "alert_id", PrimitiveType::String),
                req(2, "symbol", PrimitiveType::String),
                req(3, "buy_exchange", PrimitiveType::String),
                req(4, "sell_exchange", PrimitiveType::String),
                req(5, "buy_price", decimal()),
                req(6, "sell_price", decimal()),
                req(7, "spread_bps", PrimitiveType::Double),
                req(8, "binance_message_id", PrimitiveType::String),
                req(9, "kraken_message_id", PrimitiveType::String),
                req(10, "binance_event_time", PrimitiveType::Timestamptz),
                req(11, "kraken_event_time", PrimitiveType::Timestamptz),
                req(12, "produce_time", PrimitiveType::Timestamptz),
                req(13, "detected_time", PrimitiveType::Timestamptz),
            ])
            .build()
            .expect("valid alert schema")
    }
    fn partition_source_id() -> i32 {
        10
    }
    fn partition_day(&self) -> i32 {
        day_of_us(self.binance_event_us)
    }
    fn produce_ms(&self) -> i64 {
        self.produce_ms
    }
    fn to_batch(rows: &[Self], _ctx: &RowContext, schema: &SchemaRef) -> RecordBatch {
        let n = rows.len();
        let mut id = StringBuilder::with_capacity(n, n * 16);
        let mut symbol = StringBuilder::with_capacity(n, n * 8);
        let mut buy = StringBuilder::with_capacity(n, n * 7);
        let mut sell = StringBuilder::with_capacity(n, n * 7);
        let mut buy_price = Decimal128Builder::with_capacity(n);
        let mut sell_price = Decimal128Builder::with_capacity(n);
        let mut spread = Float64Builder::with_capacity(n);
        let mut bid = StringBuilder::with_capacity(n, n * 24);
        let mut kid = StringBuilder::with_capacity(n, n * 24);
        let mut bt = TimestampMicrosecondBuilder::with_capacity(n);
        let mut kt = TimestampMicrosecondBuilder::with_capacity(n);
        let mut pt = TimestampMicrosecondBuilder::with_capacity(n);
        let mut dt = TimestampMicrosecondBuilder::with_capacity(n);
        for r in rows {
            id.append_value(&r.alert_id);
            symbol.append_value(&r.symbol);
            buy.append_value(r.buy_exchange.name());
            sell.append_value(r.sell_exchange.name());
            buy_price.append_value(r.buy_price.0);
            sell_price.append_value(r.sell_price.0);
            spread.append_value(r.spread_bps());
            bid.append_value(&r.binance_message_id);
            kid.append_value(&r.kraken_message_id);
            bt.append_value(r.binance_event_us);
            kt.append_value(r.kraken_event_us);
            pt.append_value(r.produce_ms * 1000);
            dt.append_value(r.detected_us);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(symbol.finish()),
            Arc::new(buy.finish()),
            Arc::new(sell.finish()),
            Arc::new(buy_price.finish()),
            Arc::new(sell_price.finish()),
            Arc::new(spread.finish()),
            Arc::new(bid.finish()),
            Arc::new(kid.finish()),
            Arc::new(bt.finish()),
            Arc::new(kt.finish()),
            Arc::new(pt.finish()),
            Arc::new(dt.finish()),
        ];
        finish(schema, columns)
    }
}
