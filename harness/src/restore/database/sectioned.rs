//! A custom archive (a regular file) restored in its three sections, with the table rows
//! loaded by this process instead of pg_restore's workers:
//! 1. `pg_restore --section=pre-data`: types, functions, tables, sequences.
//! 2. Each table's rows, `jobs` tables at a time: `pg_restore -L <that entry> -f -` prints the
//!    entry's text `COPY`; this process converts the rows to binary `COPY`
//!    ([`super::binary_copy`]) and sends them on its own connection, in a transaction that
//!    first truncates the table it just created (as pg_restore's `-j` workers do, so that with
//!    `wal_level = minimal` the rows skip the WAL). The server then runs the cheap binary input
//!    functions while this process does the parsing beside it. A table with a column type the
//!    converter does not know, a non-UTF-8 archive, or a value it cannot read exactly is sent
//!    as text instead (the server parses it, as with pg_restore); an entry that is not a
//!    `COPY` (`--inserts` archives) is left to pg_restore. The other data entries (sequence
//!    values, large objects) follow with `pg_restore -L`.
//! 3. `pg_restore --section=post-data -j jobs`: indexes, constraints, triggers, in parallel.
//!
//! Each table's load checks that the server stored as many rows as the archive held, and that
//! pg_restore exited 0, before it commits. Every part is bounded by the restore's deadline.

use std::pin::pin;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use memchr::memchr;
use tokio::io::AsyncReadExt as _;

use super::binary_copy::{Column, ConvertError, Converter, HEADER, TRAILER};
use super::*;
use crate::process::{ToolError, ToolRun, ToolStream};

/// Bytes gathered before they are sent to the server.
const SEND_AT: usize = 256 << 10;

/// The pipe from pg_restore, in bytes.
const PIPE_SIZE: i32 = 1 << 20;

/// Chunks converted ahead of the server.
const CHUNKS_IN_FLIGHT: usize = 8;

/// A task aborted when dropped (a failed or cancelled load stops its reader).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why reading a table's rows stopped.
enum ReadError {
    Convert(ConvertError),
    Io(std::io::Error),
    /// The output ended after this many rows, without the end-of-data marker.
    Unended(u64),
}

/// Reads the rows up to the end-of-data marker, converts them (binary with a converter, text
/// as they are without), and sends them in chunks. Returns the rows and the rest of the output.
async fn read_rows(
    mut lines: Lines,
    mut converter: Option<Converter>,
    chunks: tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(u64, Lines), ReadError> {
    let mut out: Vec<u8> = Vec::with_capacity(SEND_AT * 2);
    if converter.is_some() {
        out.extend_from_slice(HEADER);
    }
    let mut rows: u64 = 0;
    loop {
        while let Some(range) = lines.complete() {
            let line = &lines.buf[range];
            if line == b"\\." {
                if converter.is_some() {
                    out.extend_from_slice(TRAILER);
                }
                // A closed channel: the sending side stopped on an error it reports itself.
                if chunks.send(Bytes::from(out)).await.is_err() {
                    tracing::debug!("the rows' receiver stopped first");
                }
                return Ok((rows, lines));
            }
            rows += 1;
            match &mut converter {
                Some(c) => c.row(line, &mut out).map_err(ReadError::Convert)?,
                None => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
            if out.len() >= SEND_AT {
                let chunk =
                    Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(SEND_AT * 2)));
                if chunks.send(chunk).await.is_err() {
                    // As above: the sending side reports its own error.
                    return Ok((rows, lines));
                }
            }
        }
        if !lines.fill().await.map_err(ReadError::Io)? {
            return Err(ReadError::Unended(rows));
        }
    }
}

/// The pg_restore invocation of a plan's command, taken apart.
pub(super) struct PgRestore {
    /// The program.
    program: String,
    /// The options every part that writes into the target shares (`-d`, `--exit-on-error`,
    /// `--no-owner`, ...), without `-j` and the archive.
    options: Vec<String>,
    /// The jobs (`-j`).
    jobs: u32,
}

impl PgRestore {
    /// Takes apart a command built by [`load_command`] for a custom archive: program, options,
    /// `-j N`, archive last.
    pub(super) fn from_command(command: &[String]) -> Option<Self> {
        let (program, args) = command.split_first()?;
        let (_, args) = args.split_last()?;
        let mut options = Vec::new();
        let mut jobs = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "-j" {
                jobs = iter.next()?.parse().ok();
            } else {
                options.push(arg.clone());
            }
        }
        Some(Self {
            program: program.clone(),
            options,
            jobs: jobs?,
        })
    }

    fn run(&self, archive: &Path, what: String, extra: &[&str]) -> ToolRun {
        ToolRun::new("pg_restore", &self.program, what)
            .args(self.options.iter().cloned())
            .args(extra.iter().map(|a| (*a).to_owned()))
            .args([archive.display().to_string()])
    }
}

/// One data entry of the archive's table of contents, as `pg_restore -l` prints it.
#[derive(Clone, Debug)]
struct Entry {
    /// The whole line (`3366; 0 16399 TABLE DATA public posts postgres`).
    line: String,
    /// Whether it holds a table's rows.
    table_data: bool,
}

impl Entry {
    /// What the entry is, without its ids (`TABLE DATA public posts postgres`).
    fn label(&self) -> &str {
        self.line.splitn(4, ' ').nth(3).unwrap_or(&self.line)
    }
}

/// The data section's entries from `pg_restore --section=data -l` (comments skipped).
fn data_entries(listing: &str) -> Vec<Entry> {
    listing
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .map(|l| Entry {
            line: l.to_owned(),
            table_data: l
                .splitn(4, ' ')
                .nth(3)
                .is_some_and(|desc| desc.starts_with("TABLE DATA ")),
        })
        .collect()
}

/// Restores the custom archive at `archive` into the target behind `params` in three parts
/// (see the module docs).
pub(super) async fn restore_sectioned(
    pg_restore: &PgRestore,
    params: &ConnParams,
    archive: &Path,
    deadline: Duration,
) -> Result<Vec<TableLoad>, RestoreError> {
    let env = params.libpq_env();
    let shown = archive.display();
    pg_restore
        .run(
            archive,
            format!("restoring the schema (pre-data) of {shown}"),
            &["--section=pre-data"],
        )
        .envs(env.clone())
        .deadline(deadline)
        .run()
        .await
        .map_err(|e| from_tool(e, archive))?;
    let listing = ToolRun::new(
        "pg_restore",
        &pg_restore.program,
        format!("listing the data of {shown}"),
    )
    .args(["--section=data", "-l"])
    .args([archive.display().to_string()])
    .deadline(deadline)
    .output()
    .await
    .map_err(|e| from_tool(e, archive))?;
    let (tables, others): (Vec<Entry>, Vec<Entry>) = data_entries(&listing)
        .into_iter()
        .partition(|e| e.table_data);
    let started = Instant::now();
    let loaded: Vec<TableLoad> = futures::stream::iter(tables)
        .map(|entry| load_table(pg_restore, params, archive, entry, deadline))
        .buffer_unordered(pg_restore.jobs.max(1) as usize)
        .try_collect()
        .await?;
    tracing::info!(
        tables = loaded.len(),
        rows = loaded.iter().map(|t| t.rows).sum::<u64>(),
        binary = loaded
            .iter()
            .filter(|t| t.loaded_as == LoadedAs::Binary)
            .count(),
        seconds = started.elapsed().as_secs_f64(),
        "table rows loaded"
    );
    if !others.is_empty() {
        restore_entries(pg_restore, params, archive, &others, deadline).await?;
    }
    let jobs = pg_restore.jobs.to_string();
    pg_restore
        .run(
            archive,
            format!("restoring the indexes and constraints (post-data) of {shown}"),
            &["--section=post-data", "-j", &jobs],
        )
        .envs(env)
        .deadline(deadline)
        .run()
        .await
        .map_err(|e| from_tool(e, archive))?;
    Ok(loaded)
}

/// `entries` restored by pg_restore itself (`-L` with just them).
async fn restore_entries(
    pg_restore: &PgRestore,
    params: &ConnParams,
    archive: &Path,
    entries: &[Entry],
    deadline: Duration,
) -> Result<(), RestoreError> {
    let list: String = entries.iter().map(|e| format!("{}\n", e.line)).collect();
    let labels: Vec<&str> = entries.iter().map(Entry::label).collect();
    let run = pg_restore
        .run(
            archive,
            format!("restoring {} of {}", labels.join(", "), archive.display()),
            &["-L", "/dev/stdin"],
        )
        .envs(params.libpq_env());
    within(deadline, "pg_restore", run.what.clone(), async {
        let mut stream = run
            .stream(list.into_bytes())
            .map_err(|e| from_tool(e, archive))?;
        drain(&mut stream)
            .await
            .map_err(|e| io_error(&run, e, archive))?;
        stream.finish().await.map_err(|e| from_tool(e, archive))
    })
    .await
}

/// Reads a tool's standard output to its end.
async fn drain(stream: &mut ToolStream) -> std::io::Result<()> {
    if let Some(mut out) = stream.stdout.take() {
        tokio::io::copy(&mut out, &mut tokio::io::sink()).await?;
    }
    Ok(())
}

fn io_error(run: &ToolRun, err: std::io::Error, archive: &Path) -> RestoreError {
    from_tool(
        ToolError::Spawn {
            tool: run.tool.clone(),
            source: err,
        },
        archive,
    )
}

/// Why one attempt at a table's rows stopped.
enum Attempt {
    /// A value the converter cannot read exactly: load the table as text.
    Unconvertible(ConvertError),
    /// The entry is not a `COPY` with a column list: leave it to pg_restore.
    NotCopy,
    Failed(RestoreError),
}

impl From<RestoreError> for Attempt {
    fn from(err: RestoreError) -> Self {
        Attempt::Failed(err)
    }
}

/// Loads one table's rows: binary first, as text when a value cannot be converted, through
/// pg_restore when the entry is not a `COPY`.
async fn load_table(
    pg_restore: &PgRestore,
    params: &ConnParams,
    archive: &Path,
    entry: Entry,
    deadline: Duration,
) -> Result<TableLoad, RestoreError> {
    let what = format!("loading {} from {}", entry.label(), archive.display());
    within(deadline, "pg_restore", what, async {
        let started = Instant::now();
        let mut binary = true;
        loop {
            match copy_table(pg_restore, params, archive, &entry, binary).await {
                Ok(load) => {
                    tracing::info!(
                        entry = entry.label(),
                        rows = load.rows,
                        loaded_as = ?load.loaded_as,
                        seconds = started.elapsed().as_secs_f64(),
                        "table rows loaded"
                    );
                    return Ok(load);
                }
                Err(Attempt::Unconvertible(err)) if binary => {
                    tracing::warn!(
                        entry = entry.label(),
                        %err,
                        "a value has no exact binary form here; loading the table as text"
                    );
                    binary = false;
                }
                Err(Attempt::Unconvertible(err)) => {
                    return Err(RestoreError::DataLoad {
                        entry: entry.label().to_owned(),
                        detail: err.to_string(),
                    });
                }
                Err(Attempt::NotCopy) => {
                    restore_entries(
                        pg_restore,
                        params,
                        archive,
                        std::slice::from_ref(&entry),
                        deadline,
                    )
                    .await?;
                    return Ok(TableLoad {
                        entry: entry.label().to_owned(),
                        rows: 0,
                        loaded_as: LoadedAs::PgRestore,
                    });
                }
                Err(Attempt::Failed(err)) => return Err(err),
            }
        }
    })
    .await
}

/// The lines of a tool's standard output, read in large pieces.
struct Lines {
    pipe: tokio::process::ChildStdout,
    buf: Vec<u8>,
    start: usize,
}

impl Lines {
    /// The next complete line in the buffer (without its newline), as a range of `buf`.
    fn complete(&mut self) -> Option<std::ops::Range<usize>> {
        let at = memchr(b'\n', &self.buf[self.start..])?;
        let line = self.start..self.start + at;
        self.start += at + 1;
        Some(line)
    }

    /// Reads more; `false` at the end of the output.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(SEND_AT);
        Ok(self.pipe.read_buf(&mut self.buf).await? > 0)
    }

    /// The next line, owned; `None` at the end of the output.
    async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(line) = self.complete() {
                return Ok(Some(self.buf[line].to_vec()));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// `COPY <table> (<columns>) FROM stdin;` taken apart into the table and the column list, as
/// pg_dump wrote them (quoted where needed). `None` for anything else.
fn copy_target(line: &str) -> Option<(&str, &str)> {
    let body = line.strip_prefix("COPY ")?.strip_suffix(" FROM stdin;")?;
    let mut quoted = false;
    for (i, c) in body.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => {
                let columns = body[i + 1..].strip_suffix(')')?;
                return Some((body[..i].trim_end(), columns));
            }
            _ => {}
        }
    }
    None
}

/// One attempt at a table's rows (see [`load_table`]).
async fn copy_table(
    pg_restore: &PgRestore,
    params: &ConnParams,
    archive: &Path,
    entry: &Entry,
    binary: bool,
) -> Result<TableLoad, Attempt> {
    let label = entry.label();
    let bad = |detail: String| {
        Attempt::Failed(RestoreError::DataLoad {
            entry: label.to_owned(),
            detail,
        })
    };
    let run = ToolRun::new(
        "pg_restore",
        &pg_restore.program,
        format!("reading {label} from {}", archive.display()),
    )
    .args(["-L", "/dev/stdin", "-f", "-"])
    .args([archive.display().to_string()]);
    let mut stream = run
        .stream(format!("{}\n", entry.line).into_bytes())
        .map_err(|e| from_tool(e, archive))?;
    let pipe = stream
        .stdout
        .take()
        .ok_or_else(|| bad("pg_restore's output was not a pipe".to_owned()))?;
    // Room for pg_restore to inflate ahead while this process is busy (64 KiB by default).
    if let Err(err) = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!(%err, "pg_restore's pipe keeps its default size");
    }
    let mut lines = Lines {
        pipe,
        buf: Vec::new(),
        start: 0,
    };
    let read_error = |e| Attempt::Failed(io_error(&run, e, archive));

    // pg_dump's session settings, then the COPY statement.
    let mut settings = Vec::new();
    let header = loop {
        let Some(line) = lines.next_line().await.map_err(read_error)? else {
            // pg_restore's exit status says why it printed no COPY.
            stream.finish().await.map_err(|e| from_tool(e, archive))?;
            return Err(Attempt::NotCopy);
        };
        let line = String::from_utf8(line).map_err(|_| Attempt::NotCopy)?;
        if line.starts_with("COPY ") {
            break line;
        } else if line.is_empty() || line.starts_with("--") || line.starts_with('\\') {
            // Comments and psql's \restrict.
        } else if line.starts_with("SET ") || line.starts_with("SELECT pg_catalog.set_config(") {
            settings.push(line);
        } else {
            return Err(Attempt::NotCopy);
        }
    };
    let Some((table, columns)) = copy_target(&header) else {
        return Err(Attempt::NotCopy);
    };

    let client = params.connect().await.map_err(RestoreError::pg(format!(
        "connect to {} to load {label}",
        params.target()
    )))?;
    let query = |what: &str| RestoreError::query(format!("{what} ({label})"));
    client
        .batch_execute(&settings.join("\n"))
        .await
        .map_err(query("apply pg_dump's session settings"))?;
    // The table as the catalog names it (the archive's text is only looked up, never run):
    // its schema-qualified, quoted name and kind.
    let found = client
        .query_one(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind \
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = $1::text::regclass",
            &[&table],
        )
        .await
        .map_err(query("look up the table"))?;
    let (table, relkind): (String, i8) = (found.get(0), found.get(1));
    // The columns (and their types) as the server reads the archive's list, quoted again.
    let probe = client
        .prepare(&format!("SELECT {columns} FROM {table} LIMIT 0"))
        .await
        .map_err(query("look up the column types"))?;
    let columns = probe
        .columns()
        .iter()
        .map(|c| quote_ident(c.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let encoding: String = client
        .query_one("SHOW client_encoding", &[])
        .await
        .map_err(query("read client_encoding"))?
        .get(0);
    let converter = if binary && encoding == "UTF8" {
        probe
            .columns()
            .iter()
            .map(|c| Column::for_type(c.type_()))
            .collect::<Option<Vec<_>>>()
            .map(Converter::new)
    } else {
        None
    };

    // A table this transaction empties (pg_restore's -j workers do the same): with
    // wal_level = minimal its rows skip the WAL. Only a plain table can be truncated alone.
    let begin = if relkind == b'r' as i8 {
        format!("BEGIN; TRUNCATE TABLE ONLY {table}")
    } else {
        "BEGIN".to_owned()
    };
    client
        .batch_execute(&begin)
        .await
        .map_err(query("begin the load"))?;
    let copy = format!(
        "COPY {table} ({columns}) FROM STDIN{}",
        if converter.is_some() {
            " (FORMAT binary)"
        } else {
            ""
        }
    );
    let loaded_as = if converter.is_some() {
        LoadedAs::Binary
    } else {
        LoadedAs::Text
    };
    let sink = client
        .copy_in::<_, Bytes>(&copy)
        .await
        .map_err(query("start the COPY"))?;
    let mut sink = pin!(sink);
    // Reading and converting in one task, sending in this one, so that neither waits for the
    // other: pg_restore keeps inflating while the server takes the last chunk.
    let (chunks, mut received) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let mut reader = AbortOnDrop(tokio::spawn(read_rows(lines, converter, chunks)));
    let send_failed = query("send the rows");
    while let Some(chunk) = received.recv().await {
        if let Err(e) = sink.send(chunk).await {
            return Err(Attempt::Failed(send_failed(e)));
        }
    }
    let read = (&mut reader.0)
        .await
        .map_err(|e| read_error(std::io::Error::other(e)))?;
    let (rows, mut lines) = match read {
        Ok(read) => read,
        Err(ReadError::Convert(err)) => return Err(Attempt::Unconvertible(err)),
        Err(ReadError::Io(err)) => return Err(read_error(err)),
        Err(ReadError::Unended(rows)) => {
            // The output stopped before the end of the rows: pg_restore failed (a damaged data
            // block) or was killed. Its status says which; nothing is committed.
            stream.finish().await.map_err(|e| from_tool(e, archive))?;
            return Err(bad(format!(
                "pg_restore's output ended after {rows} rows, before the end-of-data marker"
            )));
        }
    };
    let stored = sink.finish().await.map_err(query("finish the COPY"))?;
    // After the end marker only comments and psql's \unrestrict may follow.
    while let Some(line) = lines.next_line().await.map_err(read_error)? {
        if !(line.iter().all(u8::is_ascii_whitespace)
            || line.starts_with(b"--")
            || line.starts_with(b"\\"))
        {
            return Err(bad(format!(
                "pg_restore printed more than one entry's rows: {}",
                String::from_utf8_lossy(&line)
            )));
        }
    }
    stream.finish().await.map_err(|e| from_tool(e, archive))?;
    if stored != rows {
        return Err(bad(format!(
            "the archive held {rows} rows but the server stored {stored}"
        )));
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(query("commit the load"))?;
    Ok(TableLoad {
        entry: label.to_owned(),
        rows,
        loaded_as,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_are_taken_apart_as_written() {
        assert_eq!(
            copy_target("COPY public.posts (id, title) FROM stdin;"),
            Some(("public.posts", "id, title"))
        );
        assert_eq!(
            copy_target(r#"COPY "odd (schema)"."t""x" ("a(", b) FROM stdin;"#),
            Some((r#""odd (schema)"."t""x""#, r#""a(", b"#))
        );
        assert_eq!(copy_target("COPY public.empty  FROM stdin;"), None);
        assert_eq!(copy_target("INSERT INTO public.t VALUES (1);"), None);
    }

    #[test]
    fn the_data_listing_splits_table_rows_from_the_rest() {
        let entries = data_entries(
            ";\n; Archive created at ...\n;\n3366; 0 16399 TABLE DATA public posts postgres\n\
             3375; 0 0 SEQUENCE SET public posts_id_seq postgres\n",
        );
        assert_eq!(entries.len(), 2);
        assert!(entries[0].table_data);
        assert_eq!(entries[0].label(), "TABLE DATA public posts postgres");
        assert!(!entries[1].table_data);
    }

    #[test]
    fn a_plan_command_is_taken_apart() {
        let command: Vec<String> = [
            "/usr/bin/pg_restore",
            "--exit-on-error",
            "-j",
            "3",
            "-d",
            "titanium",
            "/b/titanium.dump",
        ]
        .map(str::to_owned)
        .to_vec();
        let p = PgRestore::from_command(&command).unwrap();
        assert_eq!(p.jobs, 3);
        assert_eq!(p.options, ["--exit-on-error", "-d", "titanium"]);
    }
}
