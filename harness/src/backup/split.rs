//! Splitting pg_dump's plain SQL into the data-only file and one file per table, in one
//! streaming pass and without reading the database again.
//!
//! pg_dump's plain output is a preamble (`SET ...`, `\restrict`), then one section per archive
//! entry, each opened by a comment block such as
//! `--` / `-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres` / `--`
//! (or `-- Data for Name: users; Type: TABLE DATA; ...`), then the closing
//! `-- PostgreSQL database dump complete` block and `\unrestrict`. Headers are only recognised
//! outside `COPY ... FROM stdin;` data, which ends at `\.`.
//!
//! - The data-only file is what `pg_dump --data-only --disable-triggers` writes: the preamble,
//!   every `TABLE DATA` section wrapped in `ALTER TABLE ... DISABLE/ENABLE TRIGGER ALL`, every
//!   `SEQUENCE SET` section, and the closing block.
//! - A table's CSV file ([`super::csv`]) is its `COPY` data converted to CSV, after a header row.
//! - Each table's row count and digest ([`DigestVersion::RowsV2`]) come from its `COPY` data,
//!   so the backup reads no table beyond what its pg_dumps read. A table of the snapshot with
//!   no `COPY` block, or with two, fails the split.
//! - A table's file is what `pg_dump -t` writes: the preamble, the sections of the table, its
//!   owned sequences, defaults, data, constraints, indexes, foreign keys and triggers (the
//!   selection of [`super::postgres::table_toc`]), and the closing block.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::BackupError;
use super::csv::{CsvTable, csv_header, parse_copy, text_to_csv};
use super::files::create_private_file;
use super::postgres::entry_belongs;
use crate::facts::{DigestVersion, RowDigest, SequenceFacts, TableFacts, TableRef};

/// One table's CSV file (rows converted from its `COPY` data).
pub(crate) struct CsvOut<'a> {
    pub(crate) table: &'a CsvTable,
    pub(crate) path: PathBuf,
}

/// One table's output file.
pub(crate) struct TableOut<'a> {
    pub(crate) table: &'a TableRef,
    pub(crate) path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    kind: String,
    schema: String,
    tag: String,
}

fn parse_header(line: &str) -> Option<Header> {
    let rest = line
        .strip_prefix("-- Data for Name: ")
        .or_else(|| line.strip_prefix("-- Name: "))?;
    let mut parts = rest.split("; ");
    let tag = parts.next()?.to_owned();
    let kind = parts.next()?.strip_prefix("Type: ")?.to_owned();
    let schema = parts.next()?.strip_prefix("Schema: ")?.to_owned();
    Some(Header { kind, schema, tag })
}

struct Outputs {
    data: BufWriter<std::fs::File>,
    tables: Vec<BufWriter<std::fs::File>>,
    csv: Vec<BufWriter<std::fs::File>>,
}

impl Outputs {
    /// Creates the data-only file, the table files and the CSV files (each with its header row).
    fn create(
        data_only: &Path,
        tables: &[TableOut<'_>],
        csv: &[CsvOut<'_>],
    ) -> Result<Outputs, BackupError> {
        Ok(Outputs {
            data: BufWriter::with_capacity(1 << 20, create_private_file(data_only)?),
            tables: tables
                .iter()
                .map(|t| create_private_file(&t.path).map(|f| BufWriter::with_capacity(1 << 20, f)))
                .collect::<Result<_, _>>()?,
            csv: csv
                .iter()
                .map(|c| {
                    let mut w = BufWriter::with_capacity(1 << 20, create_private_file(&c.path)?);
                    w.write_all(&csv_header(&c.table.columns))
                        .map_err(BackupError::io("write", &c.path))?;
                    Ok(w)
                })
                .collect::<Result<_, BackupError>>()?,
        })
    }
}

/// Splits `plain` (pg_dump plain output) into `data_only`, the table files and the CSV files,
/// and returns each of `tables`' row count and digest, in their order.
pub(crate) fn split_plain(
    plain: &Path,
    data_only: &Path,
    tables: &[TableOut<'_>],
    csv: &[CsvOut<'_>],
    sequences: &[SequenceFacts],
    indexes: &[(String, String, String)],
) -> Result<Vec<TableFacts>, BackupError> {
    let input = std::fs::File::open(plain).map_err(BackupError::io("open", plain))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, input);
    let mut splitter = Splitter::new(plain, data_only, tables, csv, sequences, indexes)?;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| split_error(plain, e))?;
        if n == 0 {
            break;
        }
        splitter.line(&line)?;
    }
    splitter.finish(data_only)
}

/// A failure reading the plain SQL or writing what is split from it.
fn split_error(plain: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io {
        action: "split",
        path: plain.to_path_buf(),
        source,
    }
}

/// The split in progress: the open outputs, which of them the current section goes to, and
/// where in a `COPY` the pass is.
struct Splitter<'a> {
    plain: &'a Path,
    tables: &'a [TableOut<'a>],
    csv: &'a [CsvOut<'a>],
    /// Per table: the sequences it owns and its indexes (they go to its file).
    owned: Vec<Vec<&'a str>>,
    own_indexes: Vec<Vec<&'a str>>,
    out: Outputs,
    /// Whether the current section goes to the data-only file, and to each table's file.
    to_data: bool,
    to_table: Vec<bool>,
    is_table_data: bool,
    /// The table the current section's `COPY` loads, for its closing `ENABLE TRIGGER ALL`.
    copy_target: Option<String>,
    in_copy: bool,
    /// The CSV file the current COPY's rows also go to.
    copy_csv: Option<usize>,
    /// Per table, the digest of its `COPY` rows once its block has begun.
    digests: Vec<Option<RowDigest>>,
    /// The table the current COPY's rows are digested for.
    copy_digest: Option<usize>,
    csv_line: Vec<u8>,
    /// A `--` line held back until the next line tells whether it opens a section header.
    held_dash: bool,
}

impl<'a> Splitter<'a> {
    /// Opens the outputs; before the first header, everything goes to every output.
    fn new(
        plain: &'a Path,
        data_only: &Path,
        tables: &'a [TableOut<'a>],
        csv: &'a [CsvOut<'a>],
        sequences: &'a [SequenceFacts],
        indexes: &'a [(String, String, String)],
    ) -> Result<Self, BackupError> {
        let out = Outputs::create(data_only, tables, csv)?;
        let owned = tables
            .iter()
            .map(|t| {
                sequences
                    .iter()
                    .filter(|s| {
                        s.schema == t.table.schema
                            && s.owned_by
                                .as_deref()
                                .is_some_and(|o| o.split('.').next() == Some(t.table.name.as_str()))
                    })
                    .map(|s| s.name.as_str())
                    .collect()
            })
            .collect();
        let own_indexes = tables
            .iter()
            .map(|t| {
                indexes
                    .iter()
                    .filter(|(s, tb, _)| *s == t.table.schema && *tb == t.table.name)
                    .map(|(_, _, i)| i.as_str())
                    .collect()
            })
            .collect();
        Ok(Splitter {
            plain,
            tables,
            csv,
            owned,
            own_indexes,
            out,
            to_data: true,
            to_table: vec![true; tables.len()],
            is_table_data: false,
            copy_target: None,
            in_copy: false,
            copy_csv: None,
            digests: vec![None; tables.len()],
            copy_digest: None,
            csv_line: Vec::new(),
            held_dash: false,
        })
    }

    /// Routes one line of the dump.
    fn line(&mut self, line: &[u8]) -> Result<(), BackupError> {
        if self.in_copy {
            return self.copy_line(line);
        }
        let text = String::from_utf8_lossy(line);
        let trimmed = text.trim_end_matches('\n');
        if self.held_dash {
            self.held_dash = false;
            let header = parse_header(trimmed);
            let trailer = trimmed == "-- PostgreSQL database dump complete";
            if header.is_some() || trailer {
                self.enter(header.as_ref())?;
                self.write(b"--\n")?;
                return self.write(line);
            }
            self.write(b"--\n")?;
        }
        if trimmed == "--" {
            self.held_dash = true;
            return Ok(());
        }
        if let Some(rest) = trimmed.strip_prefix("COPY ")
            && trimmed.ends_with(" FROM stdin;")
        {
            self.start_copy(rest)?;
        }
        self.write(line)
    }

    /// A new section, `None` for the closing block: ends the current one and chooses the
    /// outputs of the next.
    fn enter(&mut self, header: Option<&Header>) -> Result<(), BackupError> {
        self.close_data_section()?;
        self.copy_target = None;
        match header {
            Some(h) => {
                self.is_table_data = h.kind == "TABLE DATA";
                self.to_data = self.is_table_data || h.kind == "SEQUENCE SET";
                let first = h.tag.split(' ').next().unwrap_or("");
                for (i, t) in self.tables.iter().enumerate() {
                    self.to_table[i] = entry_belongs(
                        &h.kind,
                        &h.schema,
                        first,
                        t.table,
                        &self.owned[i],
                        &self.own_indexes[i],
                    );
                }
            }
            None => {
                self.is_table_data = false;
                self.to_data = true;
                self.to_table.iter_mut().for_each(|b| *b = true);
            }
        }
        Ok(())
    }

    /// A `COPY ... FROM stdin;` line (`rest` follows `COPY `): the data-only file disables the
    /// table's triggers, and the rows that follow also go to the table's CSV file, whose
    /// columns must be the dump's.
    fn start_copy(&mut self, rest: &str) -> Result<(), BackupError> {
        let name = rest
            .split(" (")
            .next()
            .unwrap_or(rest)
            .trim_end_matches(" FROM stdin;")
            .to_owned();
        if self.is_table_data && self.to_data {
            self.out
                .data
                .write_all(format!("ALTER TABLE {name} DISABLE TRIGGER ALL;\n\n").as_bytes())
                .map_err(|e| split_error(self.plain, e))?;
        }
        self.copy_target = Some(name);
        self.in_copy = true;
        if self.is_table_data
            && let Some((schema, table, columns)) = parse_copy(rest)
        {
            self.copy_digest = self
                .tables
                .iter()
                .position(|t| t.table.schema == schema && t.table.name == table);
            if let Some(i) = self.copy_digest
                && self.digests[i].replace(RowDigest::unordered()).is_some()
            {
                return Err(split_error(
                    self.plain,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the dump copies {schema}.{table} twice"),
                    ),
                ));
            }
            self.copy_csv = self
                .csv
                .iter()
                .position(|c| c.table.schema == schema && c.table.name == table);
            if let Some(i) = self.copy_csv
                && self.csv[i].table.columns != columns
            {
                return Err(split_error(
                    self.plain,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the dump copies {schema}.{table} as ({}), the catalog read in \
                             the same snapshot has ({})",
                            columns.join(", "),
                            self.csv[i].table.columns.join(", ")
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A line of `COPY` data: to the section's outputs and, converted, to the table's CSV file.
    fn copy_line(&mut self, line: &[u8]) -> Result<(), BackupError> {
        self.write(line)?;
        if line == b"\\.\n" || line == b"\\." {
            self.in_copy = false;
            self.copy_csv = None;
            self.copy_digest = None;
            return Ok(());
        }
        if let Some(digest) = self.copy_digest.and_then(|i| self.digests[i].as_mut()) {
            digest.update(line);
        }
        if let Some(i) = self.copy_csv {
            self.csv_line.clear();
            text_to_csv(line, &mut self.csv_line);
            self.out.csv[i]
                .write_all(&self.csv_line)
                .map_err(BackupError::io("write", &self.csv[i].path))?;
        }
        Ok(())
    }

    /// Writes `bytes` to the outputs the current section goes to.
    fn write(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        let plain = self.plain;
        if self.to_data {
            self.out
                .data
                .write_all(bytes)
                .map_err(|e| split_error(plain, e))?;
        }
        for (w, on) in self.out.tables.iter_mut().zip(&self.to_table) {
            if *on {
                w.write_all(bytes).map_err(|e| split_error(plain, e))?;
            }
        }
        Ok(())
    }

    /// After a `TABLE DATA` section with a `COPY`, the data-only file enables the table's
    /// triggers again.
    fn close_data_section(&mut self) -> Result<(), BackupError> {
        if let (true, Some(q)) = (self.is_table_data, &self.copy_target) {
            self.out
                .data
                .write_all(format!("ALTER TABLE {q} ENABLE TRIGGER ALL;\n\n").as_bytes())
                .map_err(|e| split_error(self.plain, e))?;
        }
        Ok(())
    }

    /// Ends the last section, flushes every output and returns each table's facts.
    fn finish(mut self, data_only: &Path) -> Result<Vec<TableFacts>, BackupError> {
        if self.held_dash {
            self.write(b"--\n")?;
        }
        self.close_data_section()?;
        self.out
            .data
            .flush()
            .map_err(BackupError::io("write", data_only))?;
        for (w, t) in self.out.tables.iter_mut().zip(self.tables) {
            w.flush().map_err(BackupError::io("write", &t.path))?;
        }
        for (w, c) in self.out.csv.iter_mut().zip(self.csv) {
            w.flush().map_err(BackupError::io("write", &c.path))?;
        }
        if self.in_copy {
            return Err(split_error(
                self.plain,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the dump ends inside a COPY block",
                ),
            ));
        }
        let plain = self.plain;
        self.tables
            .iter()
            .zip(self.digests)
            .map(|(t, digest)| match digest {
                Some(digest) => Ok(digest.into_facts(t.table, DigestVersion::RowsV2)),
                None => Err(split_error(
                    plain,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the dump has no rows for {}.{}, a table of the snapshot: its row \
                             count and digest cannot be taken",
                            t.table.schema, t.table.name
                        ),
                    ),
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict KEY\n\nSET client_encoding = 'UTF8';\n\n\
--\n-- Name: users; Type: TABLE; Schema: public; Owner: postgres\n--\n\nCREATE TABLE public.users (id integer);\n\n\
--\n-- Name: posts; Type: TABLE; Schema: public; Owner: postgres\n--\n\nCREATE TABLE public.posts (id integer);\n\n\
--\n-- Data for Name: posts; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n\
COPY public.posts (id, content) FROM stdin;\n1\t--\n2\t-- Name: users; Type: TABLE; Schema: public; Owner: x\n\\.\n\n\n\
--\n-- Data for Name: users; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n\
COPY public.users (id) FROM stdin;\n7\n\\.\n\n\n\
--\n-- Name: users_id_seq; Type: SEQUENCE SET; Schema: public; Owner: postgres\n--\n\n\
SELECT pg_catalog.setval('public.users_id_seq', 7, true);\n\n\n\
--\n-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres\n--\n\n\
ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY (id);\n\n\n\
--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict KEY\n\n";

    #[test]
    fn splits_data_only_and_per_table_without_reading_inside_copy_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("full.sql");
        std::fs::write(&plain, PLAIN).expect("write");
        let users = TableRef {
            schema: "public".into(),
            name: "users".into(),
            key: vec![],
        };
        let posts = TableRef {
            schema: "public".into(),
            name: "posts".into(),
            key: vec![],
        };
        let seqs = vec![SequenceFacts {
            schema: "public".into(),
            name: "users_id_seq".into(),
            last_value: 7,
            is_called: true,
            owned_by: Some("users.id".into()),
            column_max: Some(7),
        }];
        let outs = [
            TableOut {
                table: &users,
                path: dir.path().join("users.sql"),
            },
            TableOut {
                table: &posts,
                path: dir.path().join("posts.sql"),
            },
        ];
        let posts_csv = CsvTable {
            table: "public.posts".into(),
            schema: "public".into(),
            name: "posts".into(),
            file: "posts.csv".into(),
            columns: vec!["id".into(), "content".into()],
        };
        let csv = [CsvOut {
            table: &posts_csv,
            path: dir.path().join("posts.csv"),
        }];
        let facts = split_plain(
            &plain,
            &dir.path().join("data.sql"),
            &outs,
            &csv,
            &seqs,
            &[],
        )
        .expect("split");
        let digest = |rows: &[u8]| {
            let mut d = RowDigest::unordered();
            d.update(rows);
            d.finish()
        };
        let got: Vec<(&str, u64, String)> = facts
            .iter()
            .map(|f| (f.name.as_str(), f.rows, f.digest.clone()))
            .collect();
        let (users_rows, users_digest) = digest(b"7\n");
        let (posts_rows, posts_digest) =
            digest(b"1\t--\n2\t-- Name: users; Type: TABLE; Schema: public; Owner: x\n");
        assert_eq!(
            got,
            [
                ("users", users_rows, users_digest),
                ("posts", posts_rows, posts_digest)
            ]
        );
        assert_eq!((users_rows, posts_rows), (1, 2));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("posts.csv")).expect("csv"),
            "id,content\n1,--\n2,-- Name: users; Type: TABLE; Schema: public; Owner: x\n"
        );
        let data = std::fs::read_to_string(dir.path().join("data.sql")).expect("data");
        let users_sql = std::fs::read_to_string(dir.path().join("users.sql")).expect("users");
        let posts_sql = std::fs::read_to_string(dir.path().join("posts.sql")).expect("posts");

        assert!(data.starts_with("--\n-- PostgreSQL database dump\n--\n\n\\restrict KEY\n"));
        assert!(data.ends_with("\\unrestrict KEY\n\n"));
        assert!(!data.contains("CREATE TABLE") && !data.contains("ADD CONSTRAINT"));
        assert!(data.contains(
            "ALTER TABLE public.posts DISABLE TRIGGER ALL;\n\nCOPY public.posts (id, content) FROM stdin;\n1\t--\n2\t-- Name: users; Type: TABLE; Schema: public; Owner: x\n\\.\n\n\nALTER TABLE public.posts ENABLE TRIGGER ALL;\n\n"
        ), "{data}");
        assert!(data.contains("setval('public.users_id_seq', 7, true)"));

        assert!(
            users_sql.contains("CREATE TABLE public.users")
                && users_sql.contains("COPY public.users (id)")
        );
        assert!(
            users_sql.contains("users_pkey") && users_sql.contains("setval('public.users_id_seq'")
        );
        assert!(!users_sql.contains("public.posts"));
        assert!(
            users_sql.starts_with("--\n-- PostgreSQL database dump")
                && users_sql.ends_with("\\unrestrict KEY\n\n")
        );
        assert!(
            posts_sql.contains("2\t-- Name: users; Type: TABLE; Schema: public; Owner: x\n\\.\n"),
            "COPY data is data"
        );
        assert!(
            !posts_sql.contains("CREATE TABLE public.users")
                && !posts_sql.contains("DISABLE TRIGGER")
        );
    }

    /// The facts come from the dump or not at all: a table of the snapshot that the dump does
    /// not copy, a table copied twice, and a dump cut inside a COPY are errors.
    #[test]
    fn a_table_without_exactly_one_copy_block_fails_the_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = |name: &str| TableRef {
            schema: "public".into(),
            name: name.into(),
            key: vec![],
        };
        let (users, audit) = (table("users"), table("audit"));
        let outs = |t: &'static str| TableOut {
            table: if t == "users" { &users } else { &audit },
            path: dir.path().join(format!("{t}.sql")),
        };
        let run = |text: &str, tables: &[TableOut<'_>]| {
            let plain = dir.path().join("full.sql");
            std::fs::write(&plain, text).expect("write");
            split_plain(&plain, &dir.path().join("data.sql"), tables, &[], &[], &[])
                .map_err(|e| format!("{e:#}: {:?}", std::error::Error::source(&e)))
        };
        let err = run(PLAIN, &[outs("users"), outs("audit")]).expect_err("audit has no rows");
        assert!(err.contains("no rows for public.audit"), "{err}");
        let twice = PLAIN.replace(
            "COPY public.posts (id, content)",
            "COPY public.users (id, content)",
        );
        let err = run(&twice, &[outs("users")]).expect_err("users copied twice");
        assert!(err.contains("copies public.users twice"), "{err}");
        let cut = &PLAIN[..PLAIN.find("7\n\\.").expect("users rows") + 2];
        let err = run(cut, &[outs("users")]).expect_err("cut inside COPY");
        assert!(err.contains("ends inside a COPY block"), "{err}");
        assert!(run(PLAIN, &[outs("users")]).is_ok());
    }
}
