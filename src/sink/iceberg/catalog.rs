//! Opening the catalog and creating the job's tables.
//!
//! Two catalogs, one [`JobCatalog`]:
//!
//! * **SQL** (the default): iceberg-rust's SQL catalog, SQLite in the
//!   warehouse unless `catalog_uri` says otherwise. Its warehouse is a local
//!   folder (files through iceberg's local storage) or `s3://bucket/prefix`
//!   (through OpenDAL's S3 service with the `[s3]` settings); the database
//!   itself cannot be in object storage, so an S3 warehouse needs
//!   `catalog_uri`.
//! * **REST**: any Iceberg REST catalog at `catalog_uri`, asked for the
//!   configured `warehouse`, authenticated by `credential` (OAuth2 client
//!   credentials) or `token` (a bearer token). The server decides where
//!   tables live; their files are read and written through OpenDAL with the
//!   `[s3]` settings as FileIO properties (whatever the server vends for a
//!   table is added to them).
//!
//! Everything above the catalog (the writer, the commits, maintenance) goes
//! through `Arc<dyn Catalog>` and each table's own FileIO, so it is the same
//! code on local disk and on object storage. No error names a credential:
//! URIs are shown with [`crate::secret::redact_uri`], and a REST URI that
//! carries credentials itself is refused.

use super::rows::TableDecl;
use super::schema;
use crate::config::{CatalogKind, IcebergConfig, Location, S3Config};
use crate::error::{Error, Result};
use crate::secret::redact_uri;
use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::SqlCatalogBuilder;
use iceberg_storage_opendal::{OpenDalResolvingStorageFactory, OpenDalStorageFactory};
use std::collections::HashMap;
use std::sync::Arc;

/// The job's view of its Iceberg catalog: one namespace, a handful of tables.
#[derive(Clone)]
pub struct JobCatalog {
    /// The catalog: SQL or REST.
    pub catalog: Arc<dyn Catalog>,
    /// The job's namespace, e.g. `market_data`.
    pub namespace: NamespaceIdent,
    /// What the catalog is, for messages: `the REST catalog at http://…`.
    pub description: String,
}

impl std::fmt::Debug for JobCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobCatalog({:?} in {})", self.namespace, self.description)
    }
}

impl JobCatalog {
    /// Opens the configured catalog (see the module docs) and creates the
    /// job's namespace if needed. `s3` reaches `s3://` warehouses and tables.
    pub async fn open(cfg: &IcebergConfig, s3: &S3Config) -> Result<JobCatalog> {
        let (catalog, description): (Arc<dyn Catalog>, String) = match cfg.catalog {
            CatalogKind::Sql => open_sql(cfg, s3).await?,
            CatalogKind::Rest => open_rest(cfg, s3).await?,
        };
        let namespace = NamespaceIdent::new(cfg.namespace.clone());
        let in_catalog = |what: &str| format!("{what} in {description}");
        let exists = catalog
            .namespace_exists(&namespace)
            .await
            .map_err(|e| Error::iceberg(&cfg.namespace, in_catalog("check namespace"), e))?;
        if !exists {
            match catalog.create_namespace(&namespace, HashMap::new()).await {
                Ok(_) => {}
                // Another process of the job may have created it meanwhile.
                Err(_) if catalog.namespace_exists(&namespace).await.unwrap_or(false) => {}
                Err(e) => return Err(Error::iceberg(&cfg.namespace, in_catalog("create namespace"), e)),
            }
        }
        Ok(JobCatalog {
            catalog,
            namespace,
            description,
        })
    }

    /// The identifier of table `name` in the job's namespace.
    pub fn ident(&self, name: &str) -> TableIdent {
        TableIdent::new(self.namespace.clone(), name.to_string())
    }

    /// `namespace.name`, for messages.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}.{}", self.namespace.join("."), name)
    }

    /// Loads the table `decl` declares, creating it with its row type's
    /// schema and partition if it does not exist. An existing table is
    /// checked against the row type and evolved by [`schema::check`]'s rules:
    /// the columns it lacks are added (optional: older rows read as null),
    /// and a change K2 cannot write through is an [`Error::Schema`].
    pub async fn ensure_table(&self, decl: &TableDecl) -> Result<Table> {
        let name = decl.name;
        let ident = self.ident(name);
        let q = self.qualified(name);
        let schema = (decl.schema)();
        if self
            .catalog
            .table_exists(&ident)
            .await
            .map_err(|e| Error::iceberg(&q, "check table", e))?
        {
            let table = self.load(name).await?;
            return self.evolve(table, &schema, (decl.partitioning)()).await;
        }
        let mut spec = UnboundPartitionSpec::builder();
        if let Some((column, transform)) = (decl.partitioning)() {
            let field = schema
                .field_by_name(column)
                .ok_or_else(|| Error::Other(format!("table `{q}`: no column `{column}` to partition by")))?;
            let label = match transform {
                Transform::Hour => "hour",
                _ => "day",
            };
            spec = spec
                .add_partition_field(field.id, format!("{column}_{label}"), transform)
                .map_err(|e| Error::iceberg(&q, "partition spec", e))?;
        }
        let creation = TableCreation::builder()
            .name(name.to_string())
            .schema(schema.clone())
            // The spec id is optional in iceberg-rust's JSON, but Java REST
            // servers (Iceberg's own, 1.10) refuse a spec without one.
            .partition_spec(spec.build().with_spec_id(0))
            .properties(HashMap::from([
                ("write.format.default".to_string(), "parquet".to_string()),
                // What `writer.rs` writes; readers and compaction see the truth.
                ("write.parquet.compression-codec".to_string(), "snappy".to_string()),
            ]))
            .build();
        match self.catalog.create_table(&self.namespace, creation).await {
            Ok(t) => Ok(t),
            // Another process of the job created it meanwhile.
            Err(_) if self.catalog.table_exists(&ident).await.unwrap_or(false) => {
                let table = self.load(name).await?;
                self.evolve(table, &schema, (decl.partitioning)()).await
            }
            Err(e) => Err(Error::iceberg(&q, format!("create table in {}", self.description), e)),
        }
    }

    /// Checks `table` against K2's `schema` and adds the columns it lacks.
    async fn evolve(&self, table: Table, schema: &Schema, partitioning: Option<(&str, Transform)>) -> Result<Table> {
        use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
        let name = table.identifier().name().to_string();
        let q = self.qualified(&name);
        let metadata = table.metadata();
        let evolution = schema::check(
            &q,
            metadata.current_schema(),
            metadata.schemas_iter().map(|s| s.as_ref()),
            metadata.default_partition_spec(),
            schema,
            partitioning,
        )?;
        if evolution.missing.is_empty() {
            return Ok(table);
        }
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for f in &evolution.missing {
            tracing::info!(
                table = q,
                column = f.name,
                "adding a column K2's row type has and the table lacks"
            );
            action = action.add_column(AddColumn::optional(&f.name, (*f.field_type).clone()));
        }
        let tx = action.apply(tx).map_err(|e| Error::iceberg(&q, "add columns", e))?;
        tx.commit(self.catalog.as_ref())
            .await
            .map_err(|e| Error::iceberg(&q, "add columns", e))
    }

    /// Loads table `name` with its newest metadata.
    pub async fn load(&self, name: &str) -> Result<Table> {
        self.catalog
            .load_table(&self.ident(name))
            .await
            .map_err(|e| Error::iceberg(self.qualified(name), "load table", e))
    }
}

/// The SQL catalog, with its warehouse on local disk or in S3.
async fn open_sql(cfg: &IcebergConfig, s3: &S3Config) -> Result<(Arc<dyn Catalog>, String)> {
    let (warehouse, storage, mut props): (String, Arc<dyn StorageFactory>, HashMap<String, String>) =
        match cfg.warehouse_location() {
            Location::Local(_) => {
                let dir = cfg.warehouse_abs();
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("create warehouse", &dir, e))?;
                (
                    format!("file://{}", dir.display()),
                    Arc::new(LocalFsStorageFactory),
                    HashMap::new(),
                )
            }
            location @ Location::S3 { .. } => {
                if cfg.catalog_uri.is_none() {
                    return Err(Error::config(
                        "iceberg.catalog_uri",
                        format!(
                            "required with the SQL catalog and an s3:// warehouse ({}): the catalog's database \
                             cannot be in object storage; give it, e.g. \"sqlite:/var/lib/k2/catalog.db?mode=rwc\", \
                             or use catalog = \"rest\"",
                            location.uri()
                        ),
                    ));
                }
                let storage = OpenDalStorageFactory::S3 {
                    customized_credential_load: None,
                };
                (
                    location.uri(),
                    Arc::new(storage),
                    s3.iceberg_props().into_iter().collect(),
                )
            }
        };
    let uri = cfg.catalog_uri();
    let description = format!("the SQL catalog {}", redact_uri(&uri));
    props.insert("uri".to_string(), uri);
    props.insert("warehouse".to_string(), warehouse);
    let catalog = SqlCatalogBuilder::default()
        .with_storage_factory(storage)
        .load(&cfg.catalog_name, props)
        .await
        .map_err(|e| Error::iceberg("<catalog>", format!("open {description}"), e))?;
    Ok((Arc::new(catalog), description))
}

/// A REST catalog. It connects lazily: the first request (the namespace
/// check in [`JobCatalog::open`]) reports an unreachable server.
async fn open_rest(cfg: &IcebergConfig, s3: &S3Config) -> Result<(Arc<dyn Catalog>, String)> {
    let Some(uri) = cfg.catalog_uri.clone() else {
        return Err(Error::config(
            "iceberg.catalog_uri",
            "required with catalog = \"rest\": the REST catalog's base URI, e.g. http://127.0.0.1:8182",
        ));
    };
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(Error::config(
            "iceberg.catalog_uri",
            format!(
                "`{}` is not an http:// or https:// URI, as a REST catalog's must be",
                redact_uri(&uri)
            ),
        ));
    }
    let authority = uri
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    if authority.contains('@') {
        return Err(Error::config(
            "iceberg.catalog_uri",
            format!(
                "`{}` carries credentials; give them as iceberg.credential or iceberg.token instead, \
                 which are kept out of every message",
                redact_uri(&uri)
            ),
        ));
    }
    let description = format!("the REST catalog at {}", redact_uri(&uri));
    let mut props: HashMap<String, String> = s3.iceberg_props().into_iter().collect();
    props.insert("uri".to_string(), uri.trim_end_matches('/').to_string());
    props.insert("warehouse".to_string(), cfg.warehouse.to_string_lossy().into_owned());
    if let Some(credential) = &cfg.credential {
        props.insert("credential".to_string(), credential.expose().to_string());
    }
    if let Some(token) = &cfg.token {
        props.insert("token".to_string(), token.expose().to_string());
    }
    let catalog = RestCatalogBuilder::default()
        .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
        .load(&cfg.catalog_name, props)
        .await
        .map_err(|e| Error::iceberg("<catalog>", format!("open {description}"), e))?;
    Ok((Arc::new(catalog), description))
}
