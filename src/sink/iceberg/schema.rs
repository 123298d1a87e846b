//! Schema evolution: which changes to a K2 table's schema K2 goes on
//! writing through, which it makes itself, and which it refuses.
//!
//! Other tools share K2's tables: a query engine or pyiceberg adds a column,
//! widens a type, renames one. K2 writes its rows by column *name* into the
//! table's *current* schema, and the Parquet files carry that schema's field
//! ids, so readers resolve the columns by id as the Iceberg spec wants.
//! [`check`] runs when the job starts, before any row is written:
//!
//! * a column the table has and K2's row type lacks is written as nulls when
//!   it is optional; a required one is refused (K2 has no value for it);
//! * a column K2 writes must have K2's type or a type Iceberg promotes it to
//!   (`int` → `long`, `float` → `double`, a wider `decimal` of the same
//!   scale), and must not be required where K2 may write nulls;
//! * a column K2 writes that the table lacks is added (optional: older rows
//!   read as null), unless the table's schema history shows it was renamed:
//!   then re-adding it would split one column in two, so that is refused;
//! * the table's partition spec must be the one K2 computes partition
//!   values for.
//!
//! A refusal is an [`Error::Schema`] naming the table and the column. It is
//! permanent: the job stops at once with it instead of retrying, and the
//! same error comes back on every start until the table or the row type is
//! fixed. The writer checks the same rules again per batch, so a change made
//! while a job runs cannot make it write a wrong file.

use crate::error::{Error, Result};
use iceberg::spec::{NestedFieldRef, PartitionSpec, PrimitiveType, Schema, Transform, Type};

/// What [`check`] found K2 must add to a table.
#[derive(Debug, Default)]
pub struct Evolution {
    /// K2's columns the table lacks, to add as optional columns.
    pub missing: Vec<NestedFieldRef>,
}

/// Whether a column of Iceberg type `table` accepts values K2 writes as
/// `k2`: the same type, or one Iceberg promotes it to.
pub fn accepts(table: &Type, k2: &Type) -> bool {
    use PrimitiveType as P;
    match (table, k2) {
        (Type::Primitive(t), Type::Primitive(k)) => match (t, k) {
            (P::Long, P::Int) | (P::Double, P::Float) => true,
            (
                P::Decimal {
                    precision: pt,
                    scale: st,
                },
                P::Decimal {
                    precision: pk,
                    scale: sk,
                },
            ) => st == sk && pt >= pk,
            _ => t == k,
        },
        _ => table == k2,
    }
}

/// Checks a table's `current` schema (with `history`, every schema it had,
/// in any order, and its default partition `spec`) against K2's row type (`k2`, partitioned by
/// `partitioning`); see the module docs. `table` names the table in errors.
pub fn check<'a>(
    table: &str,
    current: &Schema,
    history: impl IntoIterator<Item = &'a Schema>,
    spec: &PartitionSpec,
    k2: &Schema,
    partitioning: Option<(&str, Transform)>,
) -> Result<Evolution> {
    let refuse = |column: &str, message: String| Error::Schema {
        table: table.to_string(),
        column: column.to_string(),
        message,
    };
    let history: Vec<&Schema> = history.into_iter().collect();
    // K2's columns first: a rename explains best why one is missing.
    let mut evolution = Evolution::default();
    for field in k2.as_struct().fields() {
        if current.field_by_name(&field.name).is_some() {
            continue;
        }
        // Renamed: an older schema had the name, on a column that is still
        // in the table under another one.
        let renamed = history
            .iter()
            .filter_map(|s| s.field_by_name(&field.name))
            .find_map(|old| current.field_by_id(old.id));
        if let Some(now) = renamed {
            return Err(refuse(
                &field.name,
                format!(
                    "K2 writes this column, and the table renamed it to `{}`; rename it back (re-adding \
                     `{}` would leave the older rows' values in `{}` and the newer ones in a new column)",
                    now.name, field.name, now.name
                ),
            ));
        }
        evolution.missing.push(field.clone());
    }
    for field in current.as_struct().fields() {
        match k2.field_by_name(&field.name) {
            Some(ours) => {
                if !accepts(&field.field_type, &ours.field_type) {
                    return Err(refuse(
                        &field.name,
                        format!(
                            "the table has type {}, but K2 writes {}, which Iceberg does not promote to it",
                            field.field_type, ours.field_type
                        ),
                    ));
                }
                if field.required && !ours.required {
                    return Err(refuse(
                        &field.name,
                        "the table requires a value, but K2's rows may have none (null)".to_string(),
                    ));
                }
            }
            None if field.required => {
                return Err(refuse(
                    &field.name,
                    "the table requires this column, and K2's rows do not have it; make it optional \
                     (K2 then writes nulls) or drop it"
                        .to_string(),
                ));
            }
            None => {}
        }
    }
    check_partitioning(table, current, spec, partitioning)?;
    Ok(evolution)
}

/// The table's partition spec must be K2's: the values K2 computes are of
/// its own transform.
fn check_partitioning(
    table: &str,
    current: &Schema,
    spec: &PartitionSpec,
    partitioning: Option<(&str, Transform)>,
) -> Result<()> {
    let theirs: Vec<(String, Transform)> = spec
        .fields()
        .iter()
        .map(|f| {
            let column = current
                .field_by_id(f.source_id)
                .map_or_else(|| format!("<field {}>", f.source_id), |c| c.name.clone());
            (column, f.transform)
        })
        .collect();
    let same = match (&theirs[..], partitioning) {
        ([], None) => true,
        ([(column, transform)], Some((ours, ours_t))) => column == ours && *transform == ours_t,
        _ => false,
    };
    if same {
        return Ok(());
    }
    let describe = |fields: &[(String, Transform)]| {
        if fields.is_empty() {
            "unpartitioned".to_string()
        } else {
            let parts: Vec<String> = fields.iter().map(|(c, t)| format!("{t}({c})")).collect();
            format!("partitioned by {}", parts.join(", "))
        }
    };
    let ours: Vec<(String, Transform)> = partitioning.into_iter().map(|(c, t)| (c.to_string(), t)).collect();
    let column = theirs.first().or(ours.first()).map_or("", |(c, _)| c.as_str());
    Err(Error::Schema {
        table: table.to_string(),
        column: column.to_string(),
        message: format!(
            "the table is {}, but K2 writes it {}; K2 cannot write another partition spec",
            describe(&theirs),
            describe(&ours)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{NestedField, UnboundPartitionSpec};
    use std::sync::Arc;

    fn schema(fields: &[(i32, &str, PrimitiveType, bool)]) -> Schema {
        Schema::builder()
            .with_fields(fields.iter().map(|(id, name, ty, required)| {
                Arc::new(if *required {
                    NestedField::required(*id, *name, Type::Primitive(ty.clone()))
                } else {
                    NestedField::optional(*id, *name, Type::Primitive(ty.clone()))
                })
            }))
            .build()
            .unwrap()
    }

    fn k2() -> Schema {
        schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ])
    }

    fn day_spec(s: &Schema) -> PartitionSpec {
        UnboundPartitionSpec::builder()
            .add_partition_field(3, "ts_day", Transform::Day)
            .unwrap()
            .build()
            .bind(Arc::new(s.clone()))
            .unwrap()
    }

    fn run(table: &Schema, history: &[&Schema]) -> Result<Evolution> {
        check(
            "ns.t",
            table,
            history.iter().copied(),
            &day_spec(table),
            &k2(),
            Some(("ts", Transform::Day)),
        )
    }

    #[test]
    fn the_same_schema_needs_nothing() {
        let e = run(&k2(), &[]).unwrap();
        assert!(e.missing.is_empty());
    }

    #[test]
    fn an_optional_column_of_another_tool_is_fine() {
        let mut fields = vec![
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ];
        fields.push((5, "extra", PrimitiveType::Long, false));
        assert!(run(&schema(&fields), &[]).unwrap().missing.is_empty());
        fields[4].3 = true;
        let e = run(&schema(&fields), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`ns.t`") && e.contains("`extra`") && e.contains("requires"),
            "{e}"
        );
    }

    #[test]
    fn promotions_are_accepted_and_other_types_refused() {
        let table = schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Long, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ]);
        run(&table, &[]).unwrap();
        let table = schema(&[
            (1, "id", PrimitiveType::Long, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ]);
        let e = run(&table, &[]).unwrap_err().to_string();
        assert!(e.contains("`id`") && e.contains("long") && e.contains("string"), "{e}");
        let dec = |p| {
            Type::Primitive(PrimitiveType::Decimal {
                precision: p,
                scale: 18,
            })
        };
        assert!(accepts(&dec(38), &dec(30)) && !accepts(&dec(30), &dec(38)));
    }

    #[test]
    fn a_column_k2_may_leave_null_cannot_be_required() {
        let table = schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, true),
        ]);
        let e = run(&table, &[]).unwrap_err().to_string();
        assert!(e.contains("`note`") && e.contains("null"), "{e}");
        // The other way round is fine: K2 always has a value.
        let table = schema(&[
            (1, "id", PrimitiveType::String, false),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ]);
        run(&table, &[]).unwrap();
    }

    #[test]
    fn new_columns_are_added_but_renamed_ones_refused() {
        let old = schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
        ]);
        let e = run(&old, &[&old]).unwrap();
        assert_eq!(e.missing.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["note"]);
        let renamed = schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "count", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
            (4, "note", PrimitiveType::String, false),
        ]);
        let e = run(&renamed, &[&k2(), &renamed]).unwrap_err().to_string();
        assert!(
            e.contains("`n`") && e.contains("`count`") && e.contains("renamed"),
            "{e}"
        );
        // A dropped column is K2's to add again.
        let dropped = schema(&[
            (1, "id", PrimitiveType::String, true),
            (2, "n", PrimitiveType::Int, true),
            (3, "ts", PrimitiveType::Timestamptz, true),
        ]);
        let e = run(&dropped, &[&k2(), &dropped]).unwrap();
        assert_eq!(e.missing.len(), 1);
    }

    #[test]
    fn another_partition_spec_is_refused() {
        let table = k2();
        let hourly = UnboundPartitionSpec::builder()
            .add_partition_field(3, "ts_hour", Transform::Hour)
            .unwrap()
            .build()
            .bind(Arc::new(table.clone()))
            .unwrap();
        let e = check("ns.t", &table, [], &hourly, &k2(), Some(("ts", Transform::Day)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hour(ts)") && e.contains("day(ts)"), "{e}");
        let none = PartitionSpec::unpartition_spec();
        let e = check("ns.t", &table, [], &none, &k2(), Some(("ts", Transform::Day)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unpartitioned"), "{e}");
        check("ns.t", &table, [], &none, &k2(), None).unwrap();
    }
}
