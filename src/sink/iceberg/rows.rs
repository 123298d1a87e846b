//! Row types of Iceberg tables: a struct and `#[derive(TableRow)]` (see
//! `k2-derive`) give a table its schema, its Arrow conversion and its
//! partition, in the dataflow's own file or crate.
//!
//! * [`Column`]: a Rust type that is one column (its Iceberg type, its Arrow
//!   builder). Strings, integers, floats, booleans, [`Decimal`] (as
//!   `decimal(38, 18)`), exchanges and sides, bytes, [`Micros`]
//!   (`timestamptz`), and `Option` of any of them (a nullable column).
//! * [`Columns`]: a struct's columns, in order (derived).
//! * [`TableRow`]: a table's row: its columns, its partition (`day` or `hour`
//!   of a timestamp column, or none) and the Kafka produce time its input
//!   had (for the produce-to-visible latency).
//! * [`TableDecl`]: a table of a dataflow, by name and row type.
//!
//! Rows are written by column *name* into the table's current schema (see
//! [`super::writer`]): a nullable column that another tool added is
//! written as nulls, and a column K2 knows but the table lacks is added.

use crate::decimal::Decimal;
use crate::record::{Exchange, Side};
pub use arrow_array::ArrayRef;
pub use arrow_array::builder::ArrayBuilder;
use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use iceberg::spec::{NestedField, PrimitiveType, Schema};
pub use iceberg::spec::{Transform, Type as IcebergType};
use std::sync::Arc;

/// Context a row needs to be written that it does not carry itself.
#[derive(Clone, Debug)]
pub struct RowContext {
    /// Topic names, indexed by [`crate::record::SourcePosition::topic`].
    pub topics: Arc<Vec<String>>,
}

/// A point in time, µs since the Unix epoch: a `timestamptz` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

/// A Rust type that is one column of a table.
pub trait Column {
    /// The Arrow builder of the column.
    type Builder: ArrayBuilder;
    /// Whether the column is nullable.
    const OPTIONAL: bool = false;
    /// The Iceberg type.
    fn iceberg_type() -> IcebergType;
    /// An empty builder for `capacity` rows.
    fn builder(capacity: usize) -> Self::Builder;
    /// Appends this value.
    fn append(&self, builder: &mut Self::Builder, ctx: &RowContext);
    /// Appends a null (for `Option<Self>`).
    fn append_null(builder: &mut Self::Builder);
}

/// The columns of a struct, in order (`#[derive(Columns)]` or
/// `#[derive(TableRow)]`).
pub trait Columns {
    /// Appends `(name, type, nullable)` of each column to `out`.
    fn declare(out: &mut Vec<(&'static str, IcebergType, bool)>);
    /// Appends each column of `rows`, as an Arrow array, to `out`.
    fn append(rows: &[&Self], ctx: &RowContext, out: &mut Vec<ArrayRef>);
}

/// A record type that can be written to an Iceberg table; derive it.
pub trait TableRow: Columns + timely::ExchangeData + Clone {
    /// The partition: a transform of one column, by name.
    fn partitioning() -> Option<(&'static str, Transform)>;
    /// The row's partition value (days or hours since the Unix epoch).
    fn partition(&self) -> Option<i32>;
    /// When the row's input was produced to Kafka, ms, if known.
    fn produce_ms(&self) -> Option<i64>;

    /// The table's Iceberg schema: the columns, ids from 1 in order.
    fn schema() -> Schema {
        schema_of(&Self::columns())
    }

    /// `(name, type, nullable)` of every column.
    fn columns() -> Vec<(&'static str, IcebergType, bool)> {
        let mut out = Vec::new();
        Self::declare(&mut out);
        out
    }

    /// The columns of `rows`, as Arrow arrays in [`TableRow::columns`] order.
    fn to_columns(rows: &[Self], ctx: &RowContext) -> Vec<ArrayRef> {
        let refs: Vec<&Self> = rows.iter().collect();
        let mut out = Vec::new();
        Self::append(&refs, ctx, &mut out);
        out
    }
}

fn schema_of(columns: &[(&'static str, IcebergType, bool)]) -> Schema {
    let fields = columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty, optional))| {
            let id = i as i32 + 1;
            Arc::new(if *optional {
                NestedField::optional(id, *name, ty.clone())
            } else {
                NestedField::required(id, *name, ty.clone())
            })
        })
        .collect::<Vec<_>>();
    Schema::builder()
        .with_fields(fields)
        .build()
        .expect("a row type's columns make a valid schema")
}

/// The partition value of `micros` under `transform`: days or hours since
/// the Unix epoch.
pub fn partition_value(transform: Transform, micros: i64) -> i32 {
    match transform {
        Transform::Hour => micros.div_euclid(3_600_000_000) as i32,
        _ => micros.div_euclid(86_400_000_000) as i32,
    }
}

/// A table of a dataflow: its name and what its row type says of it.
#[derive(Clone, Copy)]
pub struct TableDecl {
    /// The table's name in the job's namespace.
    pub name: &'static str,
    /// The schema of the row type.
    pub schema: fn() -> Schema,
    /// The partition of the row type.
    pub partitioning: fn() -> Option<(&'static str, Transform)>,
}

impl TableDecl {
    /// The table `name` of rows `R`.
    pub const fn of<R: TableRow>(name: &'static str) -> TableDecl {
        TableDecl {
            name,
            schema: R::schema,
            partitioning: R::partitioning,
        }
    }
}

impl std::fmt::Debug for TableDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TableDecl({})", self.name)
    }
}

/// `Column` for a type written through one builder type.
macro_rules! column {
    ($t:ty, $builder:ty, $iceberg:expr, |$v:ident, $b:ident, $ctx:ident| $append:expr) => {
        column!(
            $t,
            $builder,
            |n| <$builder>::with_capacity(n),
            $iceberg,
            |$v, $b, $ctx| $append
        );
    };
    ($t:ty, $builder:ty, |$n:ident| $make:expr, $iceberg:expr, |$v:ident, $b:ident, $ctx:ident| $append:expr) => {
        impl Column for $t {
            type Builder = $builder;
            fn iceberg_type() -> IcebergType {
                IcebergType::Primitive($iceberg)
            }
            fn builder($n: usize) -> Self::Builder {
                $make
            }
            #[allow(unused_variables)]
            fn append(&self, $b: &mut Self::Builder, $ctx: &RowContext) {
                let $v = self;
                $append
            }
            fn append_null(builder: &mut Self::Builder) {
                builder.append_null()
            }
        }
    };
}

column!(i64, Int64Builder, PrimitiveType::Long, |v, b, ctx| b.append_value(*v));
column!(i32, Int32Builder, PrimitiveType::Int, |v, b, ctx| b.append_value(*v));
// Trade ids are checked to fit a `long` when decoded.
column!(u64, Int64Builder, PrimitiveType::Long, |v, b, ctx| b
    .append_value(*v as i64));
column!(f64, Float64Builder, PrimitiveType::Double, |v, b, ctx| b
    .append_value(*v));
column!(bool, BooleanBuilder, PrimitiveType::Boolean, |v, b, ctx| b
    .append_value(*v));
column!(
    Micros,
    TimestampMicrosecondBuilder,
    |n| TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00"),
    PrimitiveType::Timestamptz,
    |v, b, ctx| b.append_value(v.0)
);
column!(
    Exchange,
    StringBuilder,
    |n| StringBuilder::with_capacity(n, n * 7),
    PrimitiveType::String,
    |v, b, ctx| b.append_value(v.name())
);
column!(
    Side,
    StringBuilder,
    |n| StringBuilder::with_capacity(n, n * 4),
    PrimitiveType::String,
    |v, b, ctx| b.append_value(v.name())
);
column!(
    Vec<u8>,
    LargeBinaryBuilder,
    |n| LargeBinaryBuilder::with_capacity(n, n * 64),
    PrimitiveType::Binary,
    |v, b, ctx| b.append_value(v)
);

/// Interned strings are written as their text.
impl Column for crate::record::Symbol {
    type Builder = StringBuilder;
    fn iceberg_type() -> IcebergType {
        IcebergType::Primitive(PrimitiveType::String)
    }
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 12)
    }
    fn append(&self, b: &mut Self::Builder, _: &RowContext) {
        b.append_value(self.as_str())
    }
    fn append_null(b: &mut Self::Builder) {
        b.append_null()
    }
}

/// Message ids are written as their text, formatted straight into the column.
impl Column for crate::record::MessageId {
    type Builder = StringBuilder;
    fn iceberg_type() -> IcebergType {
        IcebergType::Primitive(PrimitiveType::String)
    }
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 28)
    }
    fn append(&self, b: &mut Self::Builder, _: &RowContext) {
        use std::fmt::Write;
        let _ = write!(b, "{self}");
        b.append_value("");
    }
    fn append_null(b: &mut Self::Builder) {
        b.append_null()
    }
}

impl Column for String {
    type Builder = StringBuilder;
    fn iceberg_type() -> IcebergType {
        IcebergType::Primitive(PrimitiveType::String)
    }
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 16)
    }
    fn append(&self, b: &mut Self::Builder, _: &RowContext) {
        b.append_value(self)
    }
    fn append_null(b: &mut Self::Builder) {
        b.append_null()
    }
}

impl Column for Decimal {
    type Builder = Decimal128Builder;
    fn iceberg_type() -> IcebergType {
        IcebergType::Primitive(PrimitiveType::Decimal {
            precision: crate::decimal::MAX_DIGITS,
            scale: crate::decimal::DECIMAL_SCALE,
        })
    }
    fn builder(capacity: usize) -> Self::Builder {
        Decimal128Builder::with_capacity(capacity).with_data_type(arrow_schema::DataType::Decimal128(
            crate::decimal::MAX_DIGITS as u8,
            crate::decimal::DECIMAL_SCALE as i8,
        ))
    }
    fn append(&self, b: &mut Self::Builder, _: &RowContext) {
        b.append_value(self.0)
    }
    fn append_null(b: &mut Self::Builder) {
        b.append_null()
    }
}

impl<T: Column> Column for Option<T> {
    type Builder = T::Builder;
    const OPTIONAL: bool = true;
    fn iceberg_type() -> IcebergType {
        T::iceberg_type()
    }
    fn builder(capacity: usize) -> Self::Builder {
        T::builder(capacity)
    }
    fn append(&self, b: &mut Self::Builder, ctx: &RowContext) {
        match self {
            Some(v) => v.append(b, ctx),
            None => T::append_null(b),
        }
    }
    fn append_null(b: &mut Self::Builder) {
        T::append_null(b)
    }
}

/// A topic, by its index in the job's topic list: written as its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct TopicRef(pub u16);

impl Column for TopicRef {
    type Builder = StringBuilder;
    fn iceberg_type() -> IcebergType {
        IcebergType::Primitive(PrimitiveType::String)
    }
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 28)
    }
    fn append(&self, b: &mut Self::Builder, ctx: &RowContext) {
        b.append_value(ctx.topics.get(self.0 as usize).map(String::as_str).unwrap_or("?"))
    }
    fn append_null(b: &mut Self::Builder) {
        b.append_null()
    }
}
