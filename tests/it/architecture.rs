//! ARCHITECTURE.md's dependency tables, held against the code: the crates' `[dependencies]`
//! and the `crate::<module>` paths of each `harness` module. A dependency the table does not
//! allow fails, and so does one the table lists that the code no longer has, so the document
//! and the code cannot drift apart.

use crate::support::repo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The table under `heading` in ARCHITECTURE.md: its first column to the names in its second.
fn table(doc: &str, heading: &str) -> Graph {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no {heading:?}"));
    let mut graph = Graph::new();
    for line in doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let uses = cells[2]
            .split(',')
            .map(|u| u.trim().trim_matches('`').to_owned())
            .filter(|u| !u.is_empty() && u != "—")
            .collect();
        graph.insert(name, uses);
    }
    assert!(!graph.is_empty(), "the table under {heading:?} is empty");
    graph
}

/// Source lines of every `.rs` file under `path`, comment lines dropped.
fn code(path: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut files = vec![path.to_path_buf()];
    while let Some(file) = files.pop() {
        if !file.exists() {
            continue;
        }
        if file.is_dir() {
            for entry in std::fs::read_dir(&file).unwrap() {
                files.push(entry.unwrap().path());
            }
        } else if file.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&file).unwrap();
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(str::to_owned),
            );
        }
    }
    lines
}

/// The `crate::<name>` paths in `lines`, for names in `modules`.
fn uses(lines: &[String], modules: &BTreeSet<String>, own: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in lines {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) && name != own {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

fn compare(what: &str, documented: &Graph, actual: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, uses) in actual {
        let Some(allowed) = documented.get(name) else {
            problems.push(format!("{what} `{name}` is not in ARCHITECTURE.md's table"));
            continue;
        };
        for used in uses.difference(allowed) {
            problems.push(format!(
                "{what} `{name}` uses `{used}`, which ARCHITECTURE.md does not allow"
            ));
        }
        for stale in allowed.difference(uses) {
            problems.push(format!(
                "ARCHITECTURE.md says {what} `{name}` uses `{stale}`, but the code does not"
            ));
        }
    }
    for name in documented.keys().filter(|n| !actual.contains_key(*n)) {
        problems.push(format!(
            "ARCHITECTURE.md lists {what} `{name}`, which does not exist"
        ));
    }
    problems
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap()
}

#[test]
fn crate_dependencies_are_the_documented_ones() {
    let documented = table(&doc(), "Crates (`[dependencies]`");
    let crates = [
        ("simcluster", "simcluster"),
        ("harness", "harness"),
        ("scenarios", "scenarios"),
        ("cli", "cli"),
        ("titanium", "fixtures/titanium"),
    ];
    let names: BTreeSet<String> = crates.iter().map(|c| c.0.to_owned()).collect();
    let mut actual = Graph::new();
    for (name, dir) in crates {
        let manifest = std::fs::read_to_string(repo().join(dir).join("Cargo.toml")).unwrap();
        let manifest: toml::Value = toml::from_str(&manifest).unwrap();
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().filter(|k| names.contains(*k)).cloned().collect())
            .unwrap_or_default();
        actual.insert(name.to_owned(), deps);
    }
    let problems = compare("crate", &documented, &actual);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn harness_modules_use_only_the_documented_modules() {
    let documented = table(&doc(), "Modules of `harness`");
    let src = repo().join("harness/src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib"
            && name != "main"
            && (path.is_dir() || name.len() < path.file_name().unwrap().len())
        {
            modules.insert(name);
        }
    }
    let mut actual = Graph::new();
    for module in &modules {
        let mut lines = code(&src.join(module));
        lines.extend(code(&src.join(format!("{module}.rs"))));
        actual.insert(module.clone(), uses(&lines, &modules, module));
    }
    let problems = compare("module", &documented, &actual);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn scenarios_name_no_provider_internals() {
    let mut found = Vec::new();
    for line in code(&repo().join("scenarios/src")) {
        for internal in [
            "cluster::sim",
            "cluster::kind",
            "cluster::kubeconfig",
            "cluster::local",
            "simcluster",
        ] {
            if line.contains(internal) {
                found.push(format!("{internal}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "scenarios reach into providers:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_go_red_on_a_forbidden_or_stale_dependency() {
    let documented: Graph = [
        ("verify".to_owned(), BTreeSet::from(["facts".to_owned()])),
        ("facts".to_owned(), BTreeSet::new()),
    ]
    .into();
    let modules: BTreeSet<String> = ["verify", "facts", "backup"].map(String::from).into();
    let verify_code = [
        "use crate::facts::TableFacts;",
        "impl From<&crate::backup::RedisManifest> for X {}",
    ]
    .map(String::from);
    let actual: Graph = [
        ("verify".to_owned(), uses(&verify_code, &modules, "verify")),
        ("facts".to_owned(), BTreeSet::new()),
    ]
    .into();
    let problems = compare("module", &documented, &actual);
    assert_eq!(
        problems,
        ["module `verify` uses `backup`, which ARCHITECTURE.md does not allow"]
    );
    let comment_only = ["// see crate::backup".to_owned()];
    let lines: Vec<String> = comment_only
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .cloned()
        .collect();
    assert!(uses(&lines, &modules, "verify").is_empty());
    let stale: Graph = [
        ("verify".to_owned(), BTreeSet::new()),
        ("facts".to_owned(), BTreeSet::new()),
    ]
    .into();
    assert_eq!(
        compare("module", &documented, &stale),
        ["ARCHITECTURE.md says module `verify` uses `facts`, but the code does not"]
    );
}
