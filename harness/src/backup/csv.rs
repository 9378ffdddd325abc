//! Per-table CSV with a header row (the runbook's 5.2 "방법 C"), read in the backup's snapshot.
//!
//! The rows come from the plain dump's `COPY ... FROM stdin` data, converted from the text
//! format to CSV by the split that already reads that file ([`text_to_csv`]): the tables are
//! not read again, and the CSV holds exactly the rows of the dumps (one snapshot). Their names,
//! columns and order are read from the catalog in the same snapshot ([`plan_csv`]): generated
//! columns are left out as pg_dump leaves them out (the server computes them again), and the
//! tables are listed parents first (foreign keys), the order a restore loads them in.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::BackupError;
use super::postgres::sanitize;
use crate::facts::TableRef;

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

/// The CSV file of every table of `tables`, parents first: names, columns and files only
/// (catalog queries in the snapshot); the rows are converted from the plain dump's `COPY`
/// data by the split ([`super::split`]), so the tables are not read again.
pub(crate) async fn plan_csv(
    session: &Client,
    tables: &[TableRef],
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
        out.push(CsvTable {
            file: format!("postgres/csv/{}.csv", sanitize(&key)),
            table: key,
            schema: table.schema.clone(),
            name: table.name.clone(),
            columns: copy_columns(session, table).await?,
        });
    }
    Ok(out)
}

/// One CSV field as PostgreSQL's CSV output writes it: quoted when it holds a comma, a quote or
/// a line break, when it is empty (an unquoted empty field is NULL) and, as the only field of
/// its row (`single`), when it is `\.` (a line that would end `COPY FROM STDIN`, which psql's
/// `\copy` feeds).
pub(crate) fn csv_field(value: &[u8], single: bool, out: &mut Vec<u8>) {
    let quote = value.is_empty()
        || (single && value == b"\\.")
        || value
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if quote {
        out.push(b'"');
        for &b in value {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(value);
    }
}

/// The header row of `columns`, with its line end.
pub(crate) fn csv_header(columns: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(c.as_bytes(), columns.len() == 1, &mut out);
    }
    out.push(b'\n');
    out
}

/// Converts one data line of `COPY ... FROM stdin` text format (tab-separated, `\N` for NULL,
/// backslash escapes; with or without its line end) into a CSV line with its line end.
pub(crate) fn text_to_csv(line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let single = !line.contains(&b'\t');
    let mut field = Vec::new();
    for (i, raw) in line.split(|b| *b == b'\t').enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if raw == b"\\N" {
            continue; // NULL: an unquoted empty field
        }
        field.clear();
        let mut bytes = raw.iter().copied().peekable();
        while let Some(b) = bytes.next() {
            if b != b'\\' {
                field.push(b);
                continue;
            }
            let Some(e) = bytes.next() else {
                field.push(b'\\');
                break;
            };
            match e {
                b'b' => field.push(0x08),
                b'f' => field.push(0x0c),
                b'n' => field.push(b'\n'),
                b'r' => field.push(b'\r'),
                b't' => field.push(b'\t'),
                b'v' => field.push(0x0b),
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match bytes.peek() {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                bytes.next();
                            }
                            _ => break,
                        }
                    }
                    field.push((v & 0xff) as u8);
                }
                b'x' if bytes.peek().is_some_and(u8::is_ascii_hexdigit) => {
                    let mut v = 0u32;
                    for _ in 0..2 {
                        match bytes.peek() {
                            Some(d) if d.is_ascii_hexdigit() => {
                                v = v * 16 + char::from(*d).to_digit(16).unwrap_or(0);
                                bytes.next();
                            }
                            _ => break,
                        }
                    }
                    field.push(v as u8);
                }
                other => field.push(other),
            }
        }
        csv_field(&field, single, out);
    }
    out.push(b'\n');
}

/// The table and columns of a `COPY schema.table (a, "B c") FROM stdin;` line (the part after
/// `COPY `), identifiers unquoted.
pub(crate) fn parse_copy(rest: &str) -> Option<(String, String, Vec<String>)> {
    let rest = rest.strip_suffix(" FROM stdin;")?;
    let mut idents = Vec::new();
    let mut chars = rest.chars().peekable();
    // schema . table
    for sep in ['.', ' '] {
        let ident = read_ident(&mut chars)?;
        idents.push(ident);
        match chars.next() {
            Some(c) if c == sep => {}
            None if sep == ' ' => return Some((idents[0].clone(), idents[1].clone(), vec![])),
            _ => return None,
        }
    }
    // A table without columns: pg_dump writes `COPY s.t  FROM stdin;`.
    if chars.peek().is_none() {
        return Some((idents[0].clone(), idents[1].clone(), vec![]));
    }
    if chars.next() != Some('(') {
        return None;
    }
    let mut columns = Vec::new();
    loop {
        columns.push(read_ident(&mut chars)?);
        match chars.next() {
            Some(',') => {
                if chars.next() != Some(' ') {
                    return None;
                }
            }
            Some(')') => break,
            _ => return None,
        }
    }
    if chars.next().is_some() {
        return None;
    }
    Some((idents[0].clone(), idents[1].clone(), columns))
}

fn read_ident(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut ident = String::new();
    if chars.peek() == Some(&'"') {
        chars.next();
        loop {
            match chars.next()? {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    ident.push('"');
                }
                '"' => break,
                c => ident.push(c),
            }
        }
    } else {
        while let Some(c) = chars.peek() {
            if matches!(c, '.' | ' ' | ',' | ')' | '(') {
                break;
            }
            ident.push(*c);
            chars.next();
        }
    }
    (!ident.is_empty()).then_some(ident)
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

    fn csv(line: &[u8]) -> String {
        let mut out = Vec::new();
        text_to_csv(line, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn copy_text_becomes_the_csv_postgres_writes() {
        assert_eq!(csv(b"1\tplain\t\\N\n"), "1,plain,\n");
        assert_eq!(csv(b"2\t\t\\N"), "2,\"\",\n", "empty string vs NULL");
        assert_eq!(
            csv(b"3\ta,b \"q\"\tline\\none\\r\\ttab\n"),
            "3,\"a,b \"\"q\"\"\",\"line\none\r\ttab\"\n"
        );
        assert_eq!(
            csv(b"4\tback\\\\slash \\N inside\n"),
            "4,back\\slash N inside\n"
        );
        assert_eq!(csv(b"\\101\\x42\\v\\b\\f\n"), "AB\u{b}\u{8}\u{c}\n");
        assert_eq!(
            csv(b"\\\\.\n"),
            "\"\\.\"\n",
            "the end-of-data line is quoted"
        );
        assert_eq!(
            csv(b"1\t\\\\.\n"),
            "1,\\.\n",
            "not alone on its line: as is"
        );
        assert_eq!(csv("ünï\tcödé\n".as_bytes()), "ünï,cödé\n");
    }

    #[test]
    fn copy_lines_name_their_table_and_columns() {
        assert_eq!(
            parse_copy("public.posts (id, user_id, \"Title, \"\"x\"\"\") FROM stdin;"),
            Some((
                "public".into(),
                "posts".into(),
                vec!["id".into(), "user_id".into(), "Title, \"x\"".into()]
            ))
        );
        assert_eq!(
            parse_copy("\"My Schema\".\"T\" FROM stdin;"),
            Some(("My Schema".into(), "T".into(), vec![]))
        );
        assert_eq!(
            parse_copy("public.nothing  FROM stdin;"),
            Some(("public".into(), "nothing".into(), vec![]))
        );
        assert_eq!(parse_copy("public.posts (id FROM stdin;"), None);
        assert_eq!(parse_copy("public.posts (id)"), None);
        assert_eq!(
            String::from_utf8(csv_header(&["id".into(), "a,b".into()])).unwrap(),
            "id,\"a,b\"\n"
        );
    }

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
