//! Per-table CSV with a header row (the runbook's 5.2 "방법 C"), read in the backup's snapshot.
//!
//! Each table is written with `COPY table (columns) TO STDOUT WITH (FORMAT csv, HEADER)` by
//! the session that holds the exported snapshot, so the CSV files hold exactly the rows the
//! dumps and the recorded digests hold. Generated columns are left out (`COPY FROM` cannot
//! load them; the server computes them again). The tables are listed parents first (foreign
//! keys), the order a restore loads them in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

use super::BackupError;
use super::files::{create_private_file, ensure_parent};
use super::postgres::sanitize;
use crate::facts::TableRef;
use crate::pg::quote_ident;

/// One table's CSV file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvTable {
    /// `schema.table`.
    pub table: String,
    /// The schema.
    pub schema: String,
    /// The table's name.
    pub name: String,
    /// The file, relative to the backup directory.
    pub file: String,
    /// The columns in the file, in order (the header row names them).
    pub columns: Vec<String>,
}

/// Orders `tables` so that every table comes after the tables its foreign keys reference
/// (`edges`: child -> parents). Ties and the members of a cycle keep name order; a cycle
/// cannot be loaded table by table with immediate constraints, and the restore says so.
pub(crate) fn load_order(
    tables: &[String],
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut left: BTreeSet<&String> = tables.iter().collect();
    let mut order = Vec::with_capacity(tables.len());
    while !left.is_empty() {
        let ready: Vec<&String> = left
            .iter()
            .copied()
            .filter(|t| {
                edges
                    .get(*t)
                    .is_none_or(|parents| parents.iter().all(|p| p == *t || !left.contains(p)))
            })
            .collect();
        // A cycle: take the rest in name order.
        let take = if ready.is_empty() {
            left.iter().copied().collect()
        } else {
            ready
        };
        for t in take {
            left.remove(t);
            order.push(t.clone());
        }
    }
    order
}

async fn foreign_keys(session: &Client) -> Result<BTreeMap<String, BTreeSet<String>>, BackupError> {
    let rows = session
        .query(
            "SELECT cn.nspname::text || '.' || c.relname::text, \
                    pn.nspname::text || '.' || p.relname::text \
               FROM pg_constraint k \
               JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
               JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
              WHERE k.contype = 'f'",
            &[],
        )
        .await
        .map_err(|e| query_err("list the foreign keys", e))?;
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        edges.entry(row.get(0)).or_default().insert(row.get(1));
    }
    Ok(edges)
}

async fn copy_columns(session: &Client, table: &TableRef) -> Result<Vec<String>, BackupError> {
    let rows = session
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
              WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
              ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| {
            query_err(
                &format!("list the columns of {}.{}", table.schema, table.name),
                e,
            )
        })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Writes every table of `tables` as CSV into `dir/postgres/csv/`, in the snapshot `session`
/// holds, and returns them parents first. `done` is called with each finished file.
pub(crate) async fn export_csv(
    session: &Client,
    dir: &Path,
    tables: &[TableRef],
    done: &(dyn Fn(&str) + Sync),
) -> Result<Vec<CsvTable>, BackupError> {
    let edges = foreign_keys(session).await?;
    let by_name: BTreeMap<String, &TableRef> = tables
        .iter()
        .map(|t| (format!("{}.{}", t.schema, t.name), t))
        .collect();
    let names: Vec<String> = by_name.keys().cloned().collect();
    let mut out = Vec::with_capacity(tables.len());
    for key in load_order(&names, &edges) {
        let table = by_name[&key];
        let columns = copy_columns(session, table).await?;
        let rel = format!("postgres/csv/{}.csv", sanitize(&key));
        let path = ensure_parent(dir, &rel)?;
        let list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "COPY {}.{} ({list}) TO STDOUT WITH (FORMAT csv, HEADER)",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let stream = session
            .copy_out(&sql)
            .await
            .map_err(|e| query_err(&format!("copy {key} out as CSV"), e))?;
        pin_mut!(stream);
        let mut file = tokio::fs::File::from_std(create_private_file(&path)?);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| query_err(&format!("copy {key} out as CSV"), e))?;
            file.write_all(&chunk)
                .await
                .map_err(BackupError::io("write", &path))?;
        }
        file.sync_all()
            .await
            .map_err(BackupError::io("sync", &path))?;
        done(&rel);
        out.push(CsvTable {
            table: key,
            schema: table.schema.clone(),
            name: table.name.clone(),
            file: rel,
            columns,
        });
    }
    Ok(out)
}

fn query_err(what: &str, source: tokio_postgres::Error) -> BackupError {
    BackupError::Facts(crate::facts::TablesError::Query {
        what: what.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(pairs: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (child, parent) in pairs {
            map.entry((*child).to_owned())
                .or_default()
                .insert((*parent).to_owned());
        }
        map
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parents_are_loaded_before_children() {
        // posts -> users, comments -> posts and users: name order would load comments first.
        let order = load_order(
            &names(&["public.comments", "public.posts", "public.users"]),
            &edges(&[
                ("public.posts", "public.users"),
                ("public.comments", "public.posts"),
                ("public.comments", "public.users"),
            ]),
        );
        assert_eq!(
            order,
            names(&["public.users", "public.posts", "public.comments"])
        );
    }

    #[test]
    fn a_self_reference_does_not_block_and_a_cycle_keeps_name_order() {
        let order = load_order(
            &names(&["public.a", "public.b", "public.tree"]),
            &edges(&[
                ("public.tree", "public.tree"),
                ("public.a", "public.b"),
                ("public.b", "public.a"),
            ]),
        );
        assert_eq!(order, names(&["public.tree", "public.a", "public.b"]));
    }
}
