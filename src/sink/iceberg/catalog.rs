//! Opening the catalog and creating the job's tables.

use super::schema::TableRow;
use crate::config::IcebergConfig;
use crate::error::{Error, Result};
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{Transform, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalog, SqlCatalogBuilder};
use std::collections::HashMap;
use std::sync::Arc;

/// The job's view of its Iceberg catalog: one namespace, a handful of tables.
#[derive(Clone)]
pub struct JobCatalog {
    /// The SQL catalog.
    pub catalog: Arc<SqlCatalog>,
    /// The job's namespace, e.g. `market_data`.
    pub namespace: NamespaceIdent,
}

impl std::fmt::Debug for JobCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobCatalog({:?})", self.namespace)
    }
}

impl JobCatalog {
    /// Opens (creating if needed) the SQL catalog and the namespace.
    pub async fn open(cfg: &IcebergConfig) -> Result<JobCatalog> {
        let warehouse = cfg.warehouse_abs();
        std::fs::create_dir_all(&warehouse).map_err(|e| Error::io("create warehouse", &warehouse, e))?;
        let props = HashMap::from([
            ("uri".to_string(), cfg.catalog_uri()),
            ("warehouse".to_string(), format!("file://{}", warehouse.display())),
        ]);
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(&cfg.catalog_name, props)
            .await
            .map_err(|e| Error::iceberg("<catalog>", format!("open catalog {}", cfg.catalog_uri()), e))?;
        let namespace = NamespaceIdent::new(cfg.namespace.clone());
        let exists = catalog
            .namespace_exists(&namespace)
            .await
            .map_err(|e| Error::iceberg(&cfg.namespace, "check namespace", e))?;
        if !exists {
            match catalog.create_namespace(&namespace, HashMap::new()).await {
                Ok(_) => {}
                // Another process of the job may have created it meanwhile.
                Err(_) if catalog.namespace_exists(&namespace).await.unwrap_or(false) => {}
                Err(e) => return Err(Error::iceberg(&cfg.namespace, "create namespace", e)),
            }
        }
        Ok(JobCatalog {
            catalog: Arc::new(catalog),
            namespace,
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

    /// Loads table `name`, creating it with `R`'s schema, partitioned by day,
    /// if it does not exist.
    pub async fn ensure_table<R: TableRow>(&self, name: &str) -> Result<Table> {
        let ident = self.ident(name);
        let q = self.qualified(name);
        if self
            .catalog
            .table_exists(&ident)
            .await
            .map_err(|e| Error::iceberg(&q, "check table", e))?
        {
            return self.load(name).await;
        }
        let schema = R::schema();
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(R::partition_source_id(), "day", Transform::Day)
            .map_err(|e| Error::iceberg(&q, "partition spec", e))?
            .build();
        let creation = TableCreation::builder()
            .name(name.to_string())
            .schema(schema)
            .partition_spec(spec)
            .properties(HashMap::from([
                ("write.format.default".to_string(), "parquet".to_string()),
                // What `writer.rs` writes; readers and compaction see the truth.
                ("write.parquet.compression-codec".to_string(), "snappy".to_string()),
            ]))
            .build();
        match self.catalog.create_table(&self.namespace, creation).await {
            Ok(t) => Ok(t),
            Err(_) if self.catalog.table_exists(&ident).await.unwrap_or(false) => self.load(name).await,
            Err(e) => Err(Error::iceberg(&q, "create table", e)),
        }
    }

    /// Loads table `name` with its newest metadata.
    pub async fn load(&self, name: &str) -> Result<Table> {
        self.catalog
            .load_table(&self.ident(name))
            .await
            .map_err(|e| Error::iceberg(self.qualified(name), "load table", e))
    }
}
