//! Normalised, stable text rendering of a database schema (tables, columns, types, defaults, constraints, indexes, sequences, views, functions, triggers, extensions).
//!
//! The rendering is read from the catalogs, never from OIDs or anything the server assigns:
//! two databases holding the same schema render byte for byte the same, whatever their
//! history (dropped columns, object creation order, OIDs). It is a list of blocks, each a
//! header line naming one object (`table public.users`) followed by indented lines, sorted by
//! object kind and name byte by byte, so `verify::schema` can name the object that
//! drifted and insta snapshots diff readably.
//!
//! Definitions come from PostgreSQL's own deparsers (`format_type`, `pg_get_expr`,
//! `pg_get_constraintdef`, `pg_get_indexdef`, `pg_get_viewdef`, `pg_get_functiondef`,
//! `pg_get_triggerdef`), which print names relative to the session's `search_path`: compare
//! renderings taken with the same `search_path` (the default one, unless you changed it).
//! Objects that belong to an extension are rendered as the extension only. Privileges and
//! comments are not rendered.
//!
//! Also here: foreign-key integrity checks ([`foreign_key_checks`]) and `pg_amcheck`
//! ([`run_amcheck`]), the inputs of `verify::referential_integrity`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::AmcheckReport;
use crate::pg::{ConnParams, PgError, PgTools, quote_ident};

/// What went wrong while reading the schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A catalog query failed.
    #[error("could not read the schema: {what}")]
    Query {
        /// What was being read.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A foreign-key check query failed.
    #[error("could not check foreign key {constraint} on {table}")]
    ForeignKey {
        /// The constraint.
        constraint: String,
        /// `schema.table`.
        table: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// pg_amcheck could not be run.
    #[error("could not run pg_amcheck on {target}")]
    Amcheck {
        /// host:port/dbname.
        target: String,
        /// The cause.
        #[source]
        source: PgError,
    },
}

/// Filter on `n` (a `pg_namespace`) for user schemas.
const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// Filter for objects of catalog `catalog` with OID column `oid` that no extension owns.
fn not_in_extension(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass \
         AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// Runs `sql` and returns its rows as text, stably sorted by their first `keys` fields byte by
/// byte (so the order depends neither on the database's collation nor on OIDs).
async fn text_rows(
    client: &Client,
    sql: &str,
    keys: usize,
    what: &'static str,
) -> Result<Vec<Vec<Option<String>>>, SchemaError> {
    let rows = client
        .query(sql, &[])
        .await
        .map_err(|source| SchemaError::Query { what, source })?;
    let mut rows: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    rows.sort_by(|a, b| a[..keys.min(a.len())].cmp(&b[..keys.min(b.len())]));
    Ok(rows)
}

fn field(row: &[Option<String>], i: usize) -> &str {
    row.get(i).and_then(|v| v.as_deref()).unwrap_or("")
}

/// Appends `text`'s lines indented by four spaces (blank lines dropped, trailing space trimmed).
fn indented(out: &mut String, text: &str) {
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let _ = writeln!(out, "    {line}");
    }
}

/// Renders the schema of the database behind `client` as normalised text (see the module docs).
///
/// # Errors
/// [`SchemaError::Query`] naming the catalog read that failed.
pub async fn render_schema(client: &Client) -> Result<String, SchemaError> {
    let mut out = String::new();
    render_schemas(client, &mut out).await?;
    render_extensions(client, &mut out).await?;
    render_types(client, &mut out).await?;
    let columns = column_rows(client).await?;
    render_tables(client, &columns, &mut out).await?;
    render_indexes(client, &mut out).await?;
    render_sequences(client, &mut out).await?;
    render_views(client, &columns, &mut out).await?;
    render_functions(client, &mut out).await?;
    Ok(out)
}

/// `schema <name>` for every user schema.
async fn render_schemas(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let schemas = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n \
             WHERE {USER_SCHEMA} AND {}",
            not_in_extension("pg_namespace", "n.oid")
        ),
        1,
        "schemas",
    )
    .await?;
    for row in &schemas {
        let _ = writeln!(out, "schema {}", field(row, 0));
    }
    Ok(())
}

/// Every extension with its version and schema.
async fn render_extensions(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let extensions = text_rows(
        client,
        "SELECT x.extname::text, x.extversion, n.nspname::text FROM pg_extension x \
         JOIN pg_namespace n ON n.oid = x.extnamespace",
        1,
        "extensions",
    )
    .await?;
    for row in &extensions {
        let _ = writeln!(
            out,
            "extension {}\n  version {}\n  schema {}",
            field(row, 0),
            field(row, 1),
            field(row, 2)
        );
    }
    Ok(())
}

/// Enums, domains and ranges of user schemas.
async fn render_types(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let types = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, t.typname::text, t.typtype::text, pg_get_userbyid(t.typowner)::text, \
                CASE t.typtype \
                  WHEN 'e' THEN (SELECT string_agg(quote_literal(l.enumlabel), ', ' ORDER BY l.enumsortorder) \
                                 FROM pg_enum l WHERE l.enumtypid = t.oid) \
                  WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) \
                    || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END \
                    || COALESCE(' default ' || t.typdefault, '') \
                    || COALESCE((SELECT ' ' || string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname COLLATE \"C\") \
                                 FROM pg_constraint c WHERE c.contypid = t.oid), '') \
                  WHEN 'r' THEN format_type(r.rngsubtype, NULL) \
                  ELSE NULL END \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             LEFT JOIN pg_range r ON r.rngtypid = t.oid \
             WHERE {USER_SCHEMA} AND t.typtype IN ('e', 'd', 'r') AND {} \
            ",
            not_in_extension("pg_type", "t.oid")
        ),
        2,
        "types",
    )
    .await?;
    for row in &types {
        let kind = match field(row, 2) {
            "e" => "enum",
            "d" => "domain",
            _ => "range",
        };
        let _ = writeln!(
            out,
            "type {}.{}\n  owner {}\n  {kind} {}",
            field(row, 0),
            field(row, 1),
            field(row, 3),
            field(row, 4)
        );
    }
    Ok(())
}

/// The columns of every table, view and materialized view, in column order.
async fn column_rows(client: &Client) -> Result<Vec<Vec<Option<String>>>, SchemaError> {
    text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull::text, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text, \
                    CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum"
        ),
        2,
        "columns",
    )
    .await
}

/// Tables (ordinary, partitioned, foreign) with their columns, constraints and triggers.
async fn render_tables(
    client: &Client,
    columns: &[Vec<Option<String>>],
    out: &mut String,
) -> Result<(), SchemaError> {
    // Tables (ordinary, partitioned, foreign), with columns, constraints and triggers.
    let tables = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text, \
                    c.relrowsecurity::text, c.relpersistence::text, \
                    CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END, \
                    CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'f') AND {} \
            ",
            not_in_extension("pg_class", "c.oid")
        ),
        2,
        "tables",
    )
    .await?;
    let constraints = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, k.conname::text, pg_get_constraintdef(k.oid), \
                    (NOT k.convalidated)::text \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA}"
        ),
        3,
        "constraints",
    )
    .await?;
    let triggers = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, g.tgname::text, pg_get_triggerdef(g.oid), g.tgenabled::text \
             FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA} AND NOT g.tgisinternal"
        ),
        3,
        "triggers",
    )
    .await?;
    for t in &tables {
        let kind = match field(t, 2) {
            "p" => "partitioned table",
            "f" => "foreign table",
            _ => "table",
        };
        let _ = writeln!(out, "{kind} {}.{}", field(t, 0), field(t, 1));
        let _ = writeln!(out, "  owner {}", field(t, 3));
        if field(t, 5) == "u" {
            let _ = writeln!(out, "  unlogged");
        }
        if field(t, 4) == "true" {
            let _ = writeln!(out, "  row level security enabled");
        }
        if let Some(key) = t.get(7).and_then(|v| v.as_deref()) {
            let _ = writeln!(out, "  partition by {key}");
        }
        if let Some(bound) = t.get(6).and_then(|v| v.as_deref()) {
            let _ = writeln!(out, "  partition {bound}");
        }
        render_columns(out, columns, t);
        for k in constraints.iter().filter(|k| same_table(k, t)) {
            let not_valid = if field(k, 4) == "true" && !field(k, 3).contains("NOT VALID") {
                " NOT VALID"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  constraint {} {}{not_valid}",
                field(k, 2),
                field(k, 3)
            );
        }
        for g in triggers.iter().filter(|g| same_table(g, t)) {
            let state = match field(g, 4) {
                "D" => " (disabled)",
                "R" => " (replica only)",
                "A" => " (always)",
                _ => "",
            };
            let _ = writeln!(out, "  trigger {}{state}", field(g, 3));
        }
    }
    Ok(())
}

/// Every index with its definition, and whether it is invalid or clustered.
async fn render_indexes(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let indexes = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisvalid::text, \
                    i.indisclustered::text \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = ic.relnamespace \
             WHERE {USER_SCHEMA} AND {}",
            not_in_extension("pg_class", "i.indrelid")
        ),
        2,
        "indexes",
    )
    .await?;
    for ix in &indexes {
        let _ = writeln!(
            out,
            "index {}.{}\n  {}",
            field(ix, 0),
            field(ix, 1),
            field(ix, 2)
        );
        if field(ix, 3) != "true" {
            let _ = writeln!(out, "  invalid");
        }
        if field(ix, 4) == "true" {
            let _ = writeln!(out, "  clustered");
        }
    }
    Ok(())
}

/// Sequences with their parameters, owner and owning column.
async fn render_sequences(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let sequences = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, format_type(s.seqtypid, NULL), s.seqstart::text, \
                    s.seqincrement::text, s.seqmin::text, s.seqmax::text, s.seqcache::text, s.seqcycle::text, \
                    pg_get_userbyid(c.relowner)::text, \
                    (SELECT tn.nspname || '.' || t.relname || '.' || a.attname \
                            || CASE d.deptype WHEN 'i' THEN ' (identity)' ELSE '' END \
                     FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid \
                     JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) \
             FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA} AND {}",
            not_in_extension("pg_class", "c.oid")
        ),
        2,
        "sequences",
    )
    .await?;
    for s in &sequences {
        let _ = writeln!(out, "sequence {}.{}", field(s, 0), field(s, 1));
        let _ = writeln!(
            out,
            "  as {} start {} increment {} min {} max {} cache {}{}",
            field(s, 2),
            field(s, 3),
            field(s, 4),
            field(s, 5),
            field(s, 6),
            field(s, 7),
            if field(s, 8) == "true" { " cycle" } else { "" }
        );
        let _ = writeln!(out, "  owner {}", field(s, 9));
        match s.get(10).and_then(|v| v.as_deref()) {
            Some(owner) => {
                let _ = writeln!(out, "  owned by {owner}");
            }
            None => {
                let _ = writeln!(out, "  owned by none");
            }
        }
    }
    Ok(())
}

/// Views and materialized views with their columns and definition.
async fn render_views(
    client: &Client,
    columns: &[Vec<Option<String>>],
    out: &mut String,
) -> Result<(), SchemaError> {
    let views = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text, \
                    pg_get_viewdef(c.oid, true) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA} AND c.relkind IN ('v', 'm') AND {}",
            not_in_extension("pg_class", "c.oid")
        ),
        2,
        "views",
    )
    .await?;
    for v in &views {
        let kind = if field(v, 2) == "m" {
            "materialized view"
        } else {
            "view"
        };
        let _ = writeln!(
            out,
            "{kind} {}.{}\n  owner {}",
            field(v, 0),
            field(v, 1),
            field(v, 3)
        );
        render_columns(out, columns, v);
        let _ = writeln!(out, "  definition");
        indented(out, field(v, 4));
    }
    Ok(())
}

/// Functions, procedures and aggregates with their definitions.
async fn render_functions(client: &Client, out: &mut String) -> Result<(), SchemaError> {
    let functions = text_rows(
        client,
        &format!(
            "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), \
                    pg_get_userbyid(p.proowner)::text, \
                    CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid) \
                         ELSE 'aggregate ' || format_type(p.prorettype, NULL) END \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE {USER_SCHEMA} AND {}",
            not_in_extension("pg_proc", "p.oid")
        ),
        3,
        "functions",
    )
    .await?;
    for f in &functions {
        let _ = writeln!(
            out,
            "function {}.{}({})\n  owner {}\n  definition",
            field(f, 0),
            field(f, 1),
            field(f, 2),
            field(f, 3)
        );
        indented(out, field(f, 4));
    }
    Ok(())
}

/// Whether two catalog rows (schema, relation first) belong to the same relation.
fn same_table(row: &[Option<String>], t: &[Option<String>]) -> bool {
    field(row, 0) == field(t, 0) && field(row, 1) == field(t, 1)
}

/// The columns of relation `t` (a table or a view), one line each.
fn render_columns(out: &mut String, columns: &[Vec<Option<String>>], t: &[Option<String>]) {
    for col in columns.iter().filter(|c| same_table(c, t)) {
        let mut line = format!("  column {} {}", field(col, 2), field(col, 3));
        if let Some(collation) = col.get(8).and_then(|v| v.as_deref()) {
            let _ = write!(line, " collate {collation}");
        }
        if field(col, 4) == "true" {
            line.push_str(" not null");
        }
        match (field(col, 6), field(col, 7)) {
            ("a", _) => line.push_str(" generated always as identity"),
            ("d", _) => line.push_str(" generated by default as identity"),
            (_, "s") => {
                let _ = write!(line, " generated always as ({}) stored", field(col, 5));
            }
            _ => {
                if let Some(default) = col.get(5).and_then(|v| v.as_deref()) {
                    let _ = write!(line, " default {default}");
                }
            }
        }
        let _ = writeln!(out, "{line}");
    }
}

/// One foreign key and how many rows of its table reference nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyCheck {
    /// Constraint name.
    pub constraint: String,
    /// `schema.table` holding the foreign key.
    pub table: String,
    /// The referencing columns, in key order.
    pub columns: Vec<String>,
    /// `schema.table` referenced.
    pub referenced: String,
    /// Whether the constraint is validated (not `NOT VALID`).
    pub validated: bool,
    /// Rows whose (all non-null) key has no referenced row.
    pub orphan_rows: u64,
    /// Up to five orphan keys, as `(value, ...)`.
    pub sample: Vec<String>,
}

/// Checks every foreign key of the database by an anti-join, as PostgreSQL's own validation
/// does (MATCH SIMPLE: a key with any NULL column references nothing and is exempt). Rows that
/// bypassed the constraint (`session_replication_role = replica`, a disabled trigger, a
/// corrupted restore) show up as orphans.
///
/// # Errors
/// [`SchemaError`] naming the constraint whose check failed.
pub async fn foreign_key_checks(client: &Client) -> Result<Vec<ForeignKeyCheck>, SchemaError> {
    let rows = client
        .query(
            &format!(
                "SELECT k.conname::text, n.nspname::text, c.relname::text, fn.nspname::text, f.relname::text, \
                        k.convalidated, \
                        ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY u.ord), \
                        ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum ORDER BY u.ord) \
                 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace \
                 WHERE k.contype = 'f' AND {USER_SCHEMA} \
                "
            ),
            &[],
        )
        .await
        .map_err(|source| SchemaError::Query { what: "foreign keys", source })?;
    let mut rows = rows;
    rows.sort_by_key(|r| {
        (
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(0),
        )
    });
    let mut out = Vec::new();
    for row in rows {
        let constraint: String = row.get(0);
        let (schema, table, fschema, ftable): (String, String, String, String) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        let columns: Vec<String> = row.get(6);
        let referenced_columns: Vec<String> = row.get(7);
        let child = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let parent = format!("{}.{}", quote_ident(&fschema), quote_ident(&ftable));
        let not_null = columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let join = columns
            .iter()
            .zip(&referenced_columns)
            .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let key = columns
            .iter()
            .map(|c| format!("c.{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let orphans = format!(
            "FROM {child} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {join})"
        );
        let err = |source| SchemaError::ForeignKey {
            constraint: constraint.clone(),
            table: format!("{schema}.{table}"),
            source,
        };
        let count: i64 = client
            .query_one(&format!("SELECT count(*) {orphans}"), &[])
            .await
            .map_err(err)?
            .get(0);
        let sample = if count > 0 {
            client
                .query(
                    &format!("SELECT '(' || concat_ws(', ', {key}) || ')' {orphans} LIMIT 5"),
                    &[],
                )
                .await
                .map_err(|source| SchemaError::ForeignKey {
                    constraint: constraint.clone(),
                    table: format!("{schema}.{table}"),
                    source,
                })?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        } else {
            Vec::new()
        };
        out.push(ForeignKeyCheck {
            constraint,
            table: format!("{schema}.{table}"),
            columns,
            referenced: format!("{fschema}.{ftable}"),
            validated: row.get(5),
            orphan_rows: u64::try_from(count).unwrap_or(0),
            sample,
        });
    }
    Ok(out)
}

/// Runs `pg_amcheck` (heap and B-tree checks, with parent checks of indexes) on the database
/// behind `params`. When the `amcheck` extension is not installed it is installed for the check
/// and dropped again afterwards, so the schema is left as it was.
///
/// # Errors
/// [`SchemaError::Amcheck`] when pg_amcheck cannot be found or started, or the extension
/// cannot be managed; corruption is not an error but a report for `verify`.
pub async fn run_amcheck(
    tools: &PgTools,
    params: &ConnParams,
) -> Result<AmcheckReport, SchemaError> {
    let target = params.target();
    let amcheck_err = |source| SchemaError::Amcheck {
        target: target.clone(),
        source,
    };
    let client = params.connect().await.map_err(amcheck_err)?;
    let installed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck')",
            &[],
        )
        .await
        .map_err(|source| SchemaError::Query {
            what: "extensions",
            source,
        })?
        .get(0);
    let program = tools.tool("pg_amcheck").map_err(amcheck_err)?;
    let mut run =
        crate::process::ToolRun::new("pg_amcheck", &program, "checking heaps and indexes")
            .args(["--heapallindexed", "--parent-check", "-d", &params.dbname])
            .envs(params.libpq_env());
    if !installed {
        run = run.args(["--install-missing"]);
    }
    // Its findings are its output, whatever its exit status.
    let out = run.capture().await.map_err(|err| {
        amcheck_err(PgError::Io {
            action: "run",
            path: Path::new(&program).to_path_buf(),
            source: std::io::Error::other(err.to_string()),
        })
    })?;
    if !installed {
        client
            .batch_execute("DROP EXTENSION IF EXISTS amcheck")
            .await
            .map_err(|source| SchemaError::Query {
                what: "drop the amcheck extension installed for the check",
                source,
            })?;
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(AmcheckReport {
        exit_code: out.status.code().unwrap_or(-1),
        output,
    })
}
