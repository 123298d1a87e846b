//! Opening the catalog and creating the job's tables.

use super::rows::TableDecl;
use crate::config::IcebergConfig;
use crate::error::{Error, Result};
use iceberg::io::LocalFsStorageFactory;
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};
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
            .map_err(|e| {
                let uri = crate::secret::redact_uri(&cfg.catalog_uri());
                Error::iceberg("<catalog>", format!("open catalog {uri}"), e)
            })?;
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

    /// Loads the table `decl` declares, creating it with its row type's
    /// schema and partition if it does not exist. An existing table that
    /// lacks columns the row type has gets them (as nullable columns: older
    /// rows read as null); one whose columns K2 cannot write is refused when
    /// written (see the writer).
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
            return self.evolve(table, &schema).await;
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
            .schema(schema)
            .partition_spec(spec.build())
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

    /// Adds to `table` the columns of `schema` it lacks, as nullable columns.
    async fn evolve(&self, table: Table, schema: &Schema) -> Result<Table> {
        use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
        let name = table.identifier().name().to_string();
        let q = self.qualified(&name);
        let current = table.metadata().current_schema().clone();
        let missing: Vec<_> = schema
            .as_struct()
            .fields()
            .iter()
            .filter(|f| current.field_by_name(&f.name).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(table);
        }
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for f in &missing {
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
