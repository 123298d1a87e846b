//! Derive macros of K2 Stream: a plain Rust struct becomes the row type of an
//! Iceberg table, with its schema, its Arrow conversion and its partition.
//!
//! ```ignore
//! #[derive(Clone, Debug, Serialize, Deserialize, k2::TableRow)]
//! #[row(partition = "day(window_start)", produce_ms = "last_kafka_ms")]
//! pub struct Bar {
//!     pub symbol: String,
//!     #[row(timestamp)]          // i64 µs since the Unix epoch -> timestamptz
//!     pub window_start: i64,
//!     pub close: Decimal,        // decimal(38, 18)
//!     #[row(rename = "trades")]
//!     pub count: i64,
//!     #[row(skip)]               // not a column
//!     pub last_kafka_ms: i64,
//! }
//! ```
//!
//! Every column's type implements `k2::sink::iceberg::Column` (strings,
//! integers, floats, booleans, `Decimal`, exchanges and sides, bytes, and
//! `Option` of any of them for a nullable column). `#[row(timestamp)]` and
//! `#[row(timestamp_ms)]` make an `i64` of µs or ms a `timestamptz`;
//! `#[row(thousandths)]` writes an `i64` of thousandths as a `double`;
//! `#[row(topic_name)]` writes a topic index (`u16`) as the topic's name;
//! `#[row(flatten)]` inlines the columns of a field whose type derives
//! [`Columns`]. The partition is `day(column)`, `hour(column)` or absent;
//! `produce_ms` names a field path (an `i64` of Kafka produce time, ms) used
//! for the produce-to-visible latency.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, LitStr, parse_macro_input};

/// A table's row type: columns (see the crate docs), the partition and the
/// produce time.
#[proc_macro_derive(TableRow, attributes(row))]
pub fn derive_table_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match table_row(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The columns of a struct that is flattened into rows (`#[row(flatten)]`).
#[proc_macro_derive(Columns, attributes(row))]
pub fn derive_columns(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match columns(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// How one field becomes columns.
enum Kind {
    Plain,
    TimestampUs,
    TimestampMs,
    Thousandths,
    TopicName,
    Flatten,
}

struct Field {
    ident: syn::Ident,
    ty: syn::Type,
    name: String,
    kind: Kind,
}

/// The fields that are columns, with their attributes.
fn fields(input: &DeriveInput) -> syn::Result<Vec<Field>> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(&input.ident, "only structs can be rows"));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new_spanned(&input.ident, "rows need named fields"));
    };
    let mut out = Vec::new();
    for f in &named.named {
        let ident = f.ident.clone().expect("named field");
        let mut name = ident.to_string();
        let mut kind = Kind::Plain;
        let mut skip = false;
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("row")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("skip") {
                    skip = true;
                } else if meta.path.is_ident("timestamp") {
                    kind = Kind::TimestampUs;
                } else if meta.path.is_ident("timestamp_ms") {
                    kind = Kind::TimestampMs;
                } else if meta.path.is_ident("flatten") {
                    kind = Kind::Flatten;
                } else if meta.path.is_ident("thousandths") {
                    kind = Kind::Thousandths;
                } else if meta.path.is_ident("topic_name") {
                    kind = Kind::TopicName;
                } else if meta.path.is_ident("rename") {
                    name = meta.value()?.parse::<LitStr>()?.value();
                } else {
                    return Err(meta.error(
                        "expected skip, timestamp, timestamp_ms, thousandths, topic_name, flatten or rename = \"...\"",
                    ));
                }
                Ok(())
            })?;
        }
        if !skip {
            out.push(Field {
                ident,
                ty: f.ty.clone(),
                name,
                kind,
            });
        }
    }
    Ok(out)
}

/// `impl Columns` for the struct: its fields as Iceberg fields and Arrow arrays.
fn columns_impl(input: &DeriveInput, fields: &[Field]) -> Tokens {
    let ident = &input.ident;
    let (imp, ty, wher) = input.generics.split_for_impl();
    let k2 = quote!(::k2::sink::iceberg::rows);
    let mut declare = Vec::new();
    let mut append = Vec::new();
    for f in fields {
        let (fi, fty, name) = (&f.ident, &f.ty, &f.name);
        match f.kind {
            Kind::Flatten => {
                declare.push(quote! { <#fty as #k2::Columns>::declare(out); });
                append.push(quote! {
                    <#fty as #k2::Columns>::append(&rows.iter().map(|r| &r.#fi).collect::<::std::vec::Vec<_>>(), ctx, out);
                });
            }
            _ => {
                let (col_ty, value) = match f.kind {
                    Kind::TimestampUs => (quote!(#k2::Micros), quote!(#k2::Micros(r.#fi))),
                    Kind::TimestampMs => (quote!(#k2::Micros), quote!(#k2::Micros(r.#fi.saturating_mul(1000)))),
                    Kind::Thousandths => (quote!(f64), quote!((r.#fi as f64 / 1000.0))),
                    Kind::TopicName => (quote!(#k2::TopicRef), quote!(#k2::TopicRef(r.#fi))),
                    _ => (quote!(#fty), quote!(r.#fi)),
                };
                declare.push(quote! {
                    out.push((#name, <#col_ty as #k2::Column>::iceberg_type(), <#col_ty as #k2::Column>::OPTIONAL));
                });
                append.push(quote! {{
                    let mut b = <#col_ty as #k2::Column>::builder(rows.len());
                    for r in rows {
                        #k2::Column::append(&#value, &mut b, ctx);
                    }
                    out.push(::std::sync::Arc::new(#k2::ArrayBuilder::finish(&mut b)));
                }});
            }
        }
    }
    quote! {
        impl #imp #k2::Columns for #ident #ty #wher {
            fn declare(out: &mut ::std::vec::Vec<(&'static str, ::k2::sink::iceberg::rows::IcebergType, bool)>) {
                #(#declare)*
            }
            fn append(rows: &[&Self], ctx: &#k2::RowContext, out: &mut ::std::vec::Vec<#k2::ArrayRef>) {
                #(#append)*
            }
        }
    }
}

fn columns(input: &DeriveInput) -> syn::Result<Tokens> {
    let fields = fields(input)?;
    Ok(columns_impl(input, &fields))
}

fn table_row(input: &DeriveInput) -> syn::Result<Tokens> {
    let fields = fields(input)?;
    let mut partition: Option<(String, String)> = None;
    let mut produce_ms: Option<syn::Expr> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("row")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("partition") {
                let lit = meta.value()?.parse::<LitStr>()?;
                let text = lit.value();
                let (transform, column) = text
                    .strip_suffix(')')
                    .and_then(|t| t.split_once('('))
                    .ok_or_else(|| syn::Error::new_spanned(&lit, "expected \"day(column)\" or \"hour(column)\""))?;
                if transform != "day" && transform != "hour" {
                    return Err(syn::Error::new_spanned(&lit, "the partition transform is day or hour"));
                }
                partition = Some((transform.to_string(), column.trim().to_string()));
            } else if meta.path.is_ident("produce_ms") {
                let lit = meta.value()?.parse::<LitStr>()?;
                let path: syn::Expr = syn::parse_str(&format!("self.{}", lit.value()))?;
                produce_ms = Some(path);
            } else {
                return Err(meta.error("expected partition = \"day(column)\" or produce_ms = \"field\""));
            }
            Ok(())
        })?;
    }
    let ident = &input.ident;
    let (imp, ty, wher) = input.generics.split_for_impl();
    let k2 = quote!(::k2::sink::iceberg::rows);
    let (spec, value) = match &partition {
        None => (quote!(None), quote!(None)),
        Some((transform, column)) => {
            let field = fields
                .iter()
                .find(|f| f.name == *column)
                .ok_or_else(|| syn::Error::new_spanned(ident, format!("no column `{column}` to partition by")))?;
            let fi = &field.ident;
            let micros = match field.kind {
                Kind::TimestampUs => quote!(self.#fi),
                Kind::TimestampMs => quote!(self.#fi.saturating_mul(1000)),
                _ => {
                    return Err(syn::Error::new_spanned(
                        fi,
                        "a partition column must be a #[row(timestamp)] or #[row(timestamp_ms)] field",
                    ));
                }
            };
            let t = format_ident!("{}", if transform == "day" { "Day" } else { "Hour" });
            (
                quote!(Some((#column, #k2::Transform::#t))),
                quote!(Some(#k2::partition_value(#k2::Transform::#t, #micros))),
            )
        }
    };
    let produce = match produce_ms {
        Some(expr) => quote!(Some(#expr)),
        None => quote!(None),
    };
    let columns = columns_impl(input, &fields);
    Ok(quote! {
        #columns
        impl #imp #k2::TableRow for #ident #ty #wher {
            fn partitioning() -> ::std::option::Option<(&'static str, #k2::Transform)> {
                #spec
            }
            fn partition(&self) -> ::std::option::Option<i32> {
                #value
            }
            fn produce_ms(&self) -> ::std::option::Option<i64> {
                #produce
            }
        }
    })
}
