//! Row counts and content digests per table, taken inside the caller's snapshot.
//!
//! # The digest, exactly
//!
//! Both functions here run on the caller's connection and therefore inside whatever
//! transaction (and snapshot) the caller holds. The same definition gives the same hex string
//! on both sides when, and only when, the rows are the same. There are two definitions; a
//! backup's manifest says which one its digests follow ([`DigestVersion`]), and whatever
//! compares a database with that backup reads the database the same way.
//!
//! Both read every ordinary table (`relkind = 'r'`, leaf partitions included) outside
//! `pg_catalog`, `information_schema`, `pg_toast*` and `pg_temp*`, and not owned by an
//! extension, as the text of one streaming `COPY ... TO STDOUT`. The row count is the number of
//! rows in that same stream (text COPY escapes newlines inside values, so every raw `\n` ends a
//! row): count and digest can never disagree with each other. Nothing is held in memory beyond
//! one network chunk and one row.
//!
//! **The unordered sum**, used by both: each row's line (its bytes without the ending `\n`) is
//! hashed on its own with SHA-256; the 32-byte hashes, read as big-endian 256-bit integers, are
//! summed modulo 2^256, which is order-independent and, unlike XOR, does not cancel duplicate
//! rows. The digest is
//! `hex(SHA-256("rr-unordered-v1\n" || count as 8 big-endian bytes || sum as 32 bytes))`. It
//! detects any accidental change of a row; it is not meant to resist a forger who can choose
//! rows (the archive's own SHA-256 covers tampering with the backup's files).
//!
//! ## `rows-v2` (every backup since 2026-12-05)
//!
//! The rows pg_dump writes, digested without reading the database again: the backup computes
//! it from the `COPY` blocks of its plain SQL dump, and a restored database is read with the
//! same text.
//!
//! - The session settings are pg_dump's own (`DateStyle = ISO`, `IntervalStyle = postgres`,
//!   `extra_float_digits = 3`, `search_path = ''`) and the ones the backup hands every pg_dump
//!   ([`DUMP_ENV`]: `client_encoding = 'UTF8'`, `TimeZone = 'UTC'`, `bytea_output = 'hex'`).
//!   All but `search_path` stay set on the caller's session; `search_path` is put back.
//! - Each table is `COPY "schema"."table" TO STDOUT`: its columns in table order, generated
//!   and dropped ones left out, which is pg_dump's column list. Rows in any order.
//! - The digest is the unordered sum for every table; `ordered_by` is empty.
//!
//! ## `key-ordered-v1` (backups before 2026-12-05; their manifests carry no version)
//!
//! - Settings: `client_encoding = 'UTF8'`, `DateStyle = 'ISO, YMD'`, `IntervalStyle =
//!   'postgres'`, `TimeZone = 'UTC'`, `extra_float_digits = 1`, `bytea_output = 'hex'` (they
//!   stay set on the caller's session).
//! - Each table is `COPY (SELECT * FROM "schema"."table" ORDER BY <order>) TO STDOUT`.
//! - **Tables with a primary key**: `<order>` is the primary-key columns in index order, each
//!   collatable one with `COLLATE "C"` so the order does not depend on the database's locale.
//!   The digest is `hex(SHA-256(the COPY stream, byte for byte))`: rows in key order, columns
//!   in table order, tab-separated, each row ended by `\n`.
//! - **Tables without a primary key** (no `ORDER BY`): the unordered sum.

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::{SequenceFacts, TableFacts};
use crate::pg::quote_ident;

/// Which definition a table digest follows (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestVersion {
    /// Primary-key tables hashed as one stream in key order, read by `SELECT * ... ORDER BY`.
    #[serde(rename = "key-ordered-v1")]
    KeyOrderedV1,
    /// Every table as the unordered sum of its rows, in pg_dump's settings and column list.
    #[serde(rename = "rows-v2")]
    RowsV2,
}

impl DigestVersion {
    /// The definition new backups record.
    pub const CURRENT: DigestVersion = DigestVersion::RowsV2;

    /// What a manifest without a version means: it was written before versions existed.
    pub fn unversioned() -> DigestVersion {
        DigestVersion::KeyOrderedV1
    }

    /// The name the manifest stores.
    pub fn name(self) -> &'static str {
        match self {
            DigestVersion::KeyOrderedV1 => "key-ordered-v1",
            DigestVersion::RowsV2 => "rows-v2",
        }
    }

    /// The session settings the digest's text depends on.
    pub fn settings(self) -> &'static str {
        match self {
            DigestVersion::KeyOrderedV1 => {
                "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; \
                 SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; \
                 SET bytea_output = 'hex'"
            }
            DigestVersion::RowsV2 => {
                "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO'; \
                 SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
                 SET bytea_output = 'hex'"
            }
        }
    }
}

/// The environment the backup gives every pg_dump, so that the rows it writes are the text a
/// [`DigestVersion::RowsV2`] reader sees (pg_dump sets the rest itself). Restoring does not
/// depend on them: timestamps with time zone carry their offset, and the encoding is declared
/// at the top of every dump.
pub const DUMP_ENV: [(&str, &str); 2] = [
    ("PGCLIENTENCODING", "UTF8"),
    ("PGOPTIONS", "-c TimeZone=UTC -c bytea_output=hex"),
];

/// What went wrong while observing tables.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// A catalog query or a COPY failed.
    #[error("could not {what}")]
    Query {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A table to observe, and how its rows are ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Primary-key columns, each with whether it is collatable (ordered with `COLLATE "C"`).
    pub key: Vec<(String, bool)>,
}

impl TableRef {
    /// `"schema"."name"`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The COPY statement the digest of `version` reads.
    pub fn copy_sql(&self, version: DigestVersion) -> String {
        if version == DigestVersion::RowsV2 {
            return format!("COPY {} TO STDOUT", self.qualified());
        }
        let mut sql = format!("COPY (SELECT * FROM {}", self.qualified());
        if !self.key.is_empty() {
            let order: Vec<String> = self
                .key
                .iter()
                .map(|(col, collatable)| {
                    if *collatable {
                        format!("{} COLLATE \"C\"", quote_ident(col))
                    } else {
                        quote_ident(col)
                    }
                })
                .collect();
            sql.push_str(" ORDER BY ");
            sql.push_str(&order.join(", "));
        }
        sql.push_str(") TO STDOUT");
        sql
    }
}

fn query_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> TablesError {
    let what = what.into();
    move |source| TablesError::Query { what, source }
}

/// The user tables of the connected database, sorted by schema and name, with their keys.
///
/// # Errors
/// [`TablesError::Query`] when the catalog cannot be read.
pub async fn list_tables(client: &Client) -> Result<Vec<TableRef>, TablesError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                COALESCE((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                          FROM pg_index i \
                          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          WHERE i.indrelid = c.oid AND i.indisprimary), '{}'::text[]), \
                COALESCE((SELECT array_agg(a.attcollation <> 0 ORDER BY k.ord) \
                          FROM pg_index i \
                          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          WHERE i.indrelid = c.oid AND i.indisprimary), '{}'::bool[]) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(query_err("list the tables"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let cols: Vec<String> = row.get(2);
            let collatable: Vec<bool> = row.get(3);
            TableRef {
                schema: row.get(0),
                name: row.get(1),
                key: cols.into_iter().zip(collatable).collect(),
            }
        })
        .collect())
}

/// Pins the session settings the digest of `version` depends on.
///
/// # Errors
/// [`TablesError::Query`] when a setting is refused.
pub async fn pin_settings(client: &Client, version: DigestVersion) -> Result<(), TablesError> {
    client
        .batch_execute(version.settings())
        .await
        .map_err(query_err("pin the digest session settings"))
}

/// Counts and digests every user table ([`list_tables`]) by the current definition
/// ([`DigestVersion::CURRENT`]), in the caller's transaction.
///
/// # Errors
/// [`TablesError::Query`] naming the table that could not be read.
pub async fn table_facts(client: &Client) -> Result<Vec<TableFacts>, TablesError> {
    table_facts_as(client, DigestVersion::CURRENT).await
}

/// Counts and digests every user table ([`list_tables`]) by the definition `version`, in the
/// caller's transaction: what compares a database with a backup uses the backup's version.
///
/// # Errors
/// [`TablesError::Query`] naming the table that could not be read.
pub async fn table_facts_as(
    client: &Client,
    version: DigestVersion,
) -> Result<Vec<TableFacts>, TablesError> {
    pin_settings(client, version).await?;
    let tables = list_tables(client).await?;
    if version == DigestVersion::KeyOrderedV1 {
        let mut out = Vec::new();
        for table in &tables {
            out.push(digest_table(client, table, version).await?);
        }
        return Ok(out);
    }
    // pg_dump's empty search_path: the text of regclass and similar values depends on it.
    let search_path: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .map_err(query_err("read search_path"))?
        .get(0);
    client
        .batch_execute("SET search_path = ''")
        .await
        .map_err(query_err("clear search_path"))?;
    let mut out = Vec::new();
    let mut failed = None;
    for table in &tables {
        match digest_table(client, table, version).await {
            Ok(facts) => out.push(facts),
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    client
        .query_one(
            "SELECT set_config('search_path', $1, false)",
            &[&search_path],
        )
        .await
        .map_err(query_err("put search_path back"))?;
    match failed {
        Some(err) => Err(err),
        None => Ok(out),
    }
}

/// Counts and digests one table by the definition `version`. The session settings must be
/// pinned ([`pin_settings`]) and, for [`DigestVersion::RowsV2`], `search_path` empty.
///
/// # Errors
/// [`TablesError::Query`] when the COPY fails.
pub async fn digest_table(
    client: &Client,
    table: &TableRef,
    version: DigestVersion,
) -> Result<TableFacts, TablesError> {
    let what = format!("read table {}.{}", table.schema, table.name);
    let stream = client
        .copy_out(&table.copy_sql(version))
        .await
        .map_err(query_err(what.clone()))?;
    futures::pin_mut!(stream);
    let ordered = version == DigestVersion::KeyOrderedV1 && !table.key.is_empty();
    let mut digest = if ordered {
        RowDigest::ordered()
    } else {
        RowDigest::unordered()
    };
    while let Some(chunk) = stream.try_next().await.map_err(query_err(what.clone()))? {
        digest.update(&chunk);
    }
    Ok(digest.into_facts(table, version))
}

/// The digest state over a COPY text stream fed in arbitrary chunks.
#[derive(Clone, Debug)]
pub struct RowDigest {
    rows: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Ordered(Sha256),
    Unordered { sum: [u64; 4], line: Vec<u8> },
}

impl RowDigest {
    /// For a stream in primary-key order.
    pub fn ordered() -> Self {
        Self {
            rows: 0,
            kind: Kind::Ordered(Sha256::new()),
        }
    }

    /// For a stream in no particular order.
    pub fn unordered() -> Self {
        Self {
            rows: 0,
            kind: Kind::Unordered {
                sum: [0; 4],
                line: Vec::new(),
            },
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.kind {
            Kind::Ordered(hasher) => {
                self.rows += memchr::memchr_iter(b'\n', chunk).count() as u64;
                hasher.update(chunk);
            }
            Kind::Unordered { sum, line } => {
                // One pass: each line end found once (memchr), each row hashed where it lies
                // unless it began in an earlier chunk.
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', chunk) {
                    let row_hash = if line.is_empty() {
                        Sha256::digest(&chunk[start..end])
                    } else {
                        line.extend_from_slice(&chunk[start..end]);
                        let h = Sha256::digest(&line[..]);
                        line.clear();
                        h
                    };
                    add_256(sum, row_hash.as_slice());
                    self.rows += 1;
                    start = end + 1;
                }
                line.extend_from_slice(&chunk[start..]);
            }
        }
    }

    /// The row count and the hex digest.
    pub fn finish(self) -> (u64, String) {
        let digest = match self.kind {
            Kind::Ordered(hasher) => hex::encode(hasher.finalize()),
            Kind::Unordered { sum, .. } => {
                let mut hasher = Sha256::new();
                hasher.update(b"rr-unordered-v1\n");
                hasher.update(self.rows.to_be_bytes());
                for limb in sum {
                    hasher.update(limb.to_be_bytes());
                }
                hex::encode(hasher.finalize())
            }
        };
        (self.rows, digest)
    }

    /// The facts of `table` by the definition `version`, from this digest of its rows.
    pub fn into_facts(self, table: &TableRef, version: DigestVersion) -> TableFacts {
        let ordered_by = match version {
            DigestVersion::KeyOrderedV1 => table.key.iter().map(|(c, _)| c.clone()).collect(),
            DigestVersion::RowsV2 => Vec::new(),
        };
        let (rows, digest) = self.finish();
        TableFacts {
            schema: table.schema.clone(),
            name: table.name.clone(),
            rows,
            digest,
            ordered_by,
        }
    }
}

/// `sum += value (mod 2^256)`, with `sum` as four big-endian u64 limbs (most significant first).
pub(crate) fn add_256(sum: &mut [u64; 4], value: &[u8]) {
    let mut carry = 0u64;
    for i in (0..4).rev() {
        let limb = u64::from_be_bytes(value[i * 8..i * 8 + 8].try_into().expect("32-byte hash"));
        let (s1, c1) = sum[i].overflowing_add(limb);
        let (s2, c2) = s1.overflowing_add(carry);
        sum[i] = s2;
        carry = u64::from(c1) + u64::from(c2);
    }
}

/// Every sequence outside the system schemas, with its owner column and that column's largest
/// value.
///
/// Sequences are not transactional: `last_value` is read now, not as of the caller's snapshot,
/// exactly as pg_dump reads it. Compare a restore by "`last_value` covers `column_max`", not by
/// equality.
///
/// # Errors
/// [`TablesError::Query`] when the catalog or a column cannot be read.
pub async fn sequence_facts(client: &Client) -> Result<Vec<SequenceFacts>, TablesError> {
    let rows = client
        .query(
            "SELECT s.schemaname::text, s.sequencename::text, \
                    COALESCE(s.last_value, (SELECT seqstart FROM pg_sequence WHERE seqrelid = c.oid)), \
                    s.last_value IS NOT NULL, \
                    tn.nspname::text, t.relname::text, a.attname::text \
             FROM pg_sequences s \
             JOIN pg_namespace n ON n.nspname = s.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename \
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             LEFT JOIN pg_class t ON t.oid = d.refobjid \
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(query_err("list the sequences"))?;
    let mut out = Vec::new();
    for row in rows {
        let table_schema: Option<String> = row.get(4);
        let table: Option<String> = row.get(5);
        let column: Option<String> = row.get(6);
        let (owned_by, column_max) = match (table_schema, table, column) {
            (Some(ts), Some(t), Some(c)) => {
                let sql = format!(
                    "SELECT max({})::bigint FROM {}.{}",
                    quote_ident(&c),
                    quote_ident(&ts),
                    quote_ident(&t)
                );
                let max: Option<i64> = client
                    .query_one(&sql, &[])
                    .await
                    .map_err(query_err(format!("read max({t}.{c})")))?
                    .get(0);
                (Some(format!("{t}.{c}")), max)
            }
            _ => (None, None),
        };
        out.push(SequenceFacts {
            schema: row.get(0),
            name: row.get(1),
            last_value: row.get(2),
            is_called: row.get(3),
            owned_by,
            column_max,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(kind: fn() -> RowDigest, chunks: &[&[u8]]) -> (u64, String) {
        let mut d = kind();
        for c in chunks {
            d.update(c);
        }
        d.finish()
    }

    #[test]
    fn ordered_digest_is_sha256_of_the_stream() {
        let (rows, digest) = digest_of(RowDigest::ordered, &[b"1\ta\n2\t", b"b\n"]);
        assert_eq!(rows, 2);
        assert_eq!(digest, hex::encode(Sha256::digest(b"1\ta\n2\tb\n")));
    }

    #[test]
    fn unordered_digest_ignores_order_and_chunking_but_not_duplicates() {
        let a = digest_of(RowDigest::unordered, &[b"x\t1\ny\t2\nz\t3\n"]);
        let b = digest_of(RowDigest::unordered, &[b"z\t3\ny", b"\t2", b"\nx\t1\n"]);
        assert_eq!(a, b);
        let dup = digest_of(RowDigest::unordered, &[b"x\t1\nx\t1\n"]);
        let none = digest_of(RowDigest::unordered, &[]);
        assert_eq!(dup.0, 2);
        assert_ne!(dup.1, none.1);
        let changed = digest_of(RowDigest::unordered, &[b"x\t1\ny\t2\nz\t4\n"]);
        assert_ne!(a.1, changed.1);
    }

    #[test]
    fn both_digests_are_the_same_wherever_the_stream_is_cut() {
        let stream: &[u8] = b"1\tal\\tice\n\n22\t\\N\n333\tbob\n";
        for kind in [
            RowDigest::ordered as fn() -> RowDigest,
            RowDigest::unordered,
        ] {
            let whole = digest_of(kind, &[stream]);
            assert_eq!(whole.0, 4);
            for i in 0..=stream.len() {
                for j in i..=stream.len() {
                    let (a, rest) = stream.split_at(i);
                    let (b, c) = rest.split_at(j - i);
                    assert_eq!(digest_of(kind, &[a, b, c]), whole, "cut at {i} and {j}");
                }
            }
        }
        // Unordered: the sum of each row's SHA-256, rows hashed without their line end.
        let mut sum = [0u64; 4];
        for row in [&b"1\tal\\tice"[..], b"", b"22\t\\N", b"333\tbob"] {
            add_256(&mut sum, Sha256::digest(row).as_slice());
        }
        let mut expected = Sha256::new();
        expected.update(b"rr-unordered-v1\n");
        expected.update(4u64.to_be_bytes());
        for limb in sum {
            expected.update(limb.to_be_bytes());
        }
        assert_eq!(
            digest_of(RowDigest::unordered, &[stream]).1,
            hex::encode(expected.finalize())
        );
    }

    #[test]
    fn carries_across_limbs() {
        let mut sum = [0, 0, 0, u64::MAX];
        let mut one = [0u8; 32];
        one[31] = 1;
        add_256(&mut sum, &one);
        assert_eq!(sum, [0, 0, 1, 0]);
        let mut sum = [u64::MAX; 4];
        add_256(&mut sum, &one);
        assert_eq!(sum, [0; 4]);
    }

    #[test]
    fn copy_sql_orders_by_key_with_c_collation_for_text() {
        let t = TableRef {
            schema: "public".into(),
            name: "we\"ird".into(),
            key: vec![("id".into(), false), ("name".into(), true)],
        };
        assert_eq!(
            t.copy_sql(DigestVersion::KeyOrderedV1),
            "COPY (SELECT * FROM \"public\".\"we\"\"ird\" ORDER BY \"id\", \"name\" COLLATE \"C\") TO STDOUT"
        );
        assert_eq!(
            t.copy_sql(DigestVersion::RowsV2),
            "COPY \"public\".\"we\"\"ird\" TO STDOUT"
        );
        let t = TableRef {
            schema: "s".into(),
            name: "log".into(),
            key: vec![],
        };
        assert_eq!(
            t.copy_sql(DigestVersion::KeyOrderedV1),
            "COPY (SELECT * FROM \"s\".\"log\") TO STDOUT"
        );
    }
}
