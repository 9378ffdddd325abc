//! The GitHub Actions workflows under `ci/workflows/` are valid YAML, thin (every step that runs
//! something calls a script under `ci/`), and schedule what the nightly rehearsal promises.

use std::path::PathBuf;

use serde_json::Value;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ci/workflows")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn steps(workflow: &Value) -> Vec<&Value> {
    workflow["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().expect("steps"))
        .collect()
}

fn check_thin(workflow: &Value) {
    for step in steps(workflow) {
        if let Some(run) = step.get("run").and_then(Value::as_str) {
            assert!(
                run.contains("ci/"),
                "step {:?} runs `{run}` instead of a script under ci/",
                step["name"]
            );
        } else {
            assert!(
                step.get("uses").is_some(),
                "step without run or uses: {step}"
            );
        }
    }
}

#[test]
fn nightly_runs_kind_and_containers_nightly_and_weekly_and_uploads_reports() {
    let wf = load("nightly.yml");
    check_thin(&wf);
    let crons: Vec<&str> = wf["on"]["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cron"].as_str().unwrap())
        .collect();
    assert_eq!(crons.len(), 2, "{crons:?}");
    assert!(
        crons.iter().any(|c| c.ends_with("* * *")),
        "a nightly cron: {crons:?}"
    );
    assert!(
        crons.iter().any(|c| c.ends_with("* * 0")),
        "a weekly cron: {crons:?}"
    );
    let job = wf["jobs"]["rehearsal"].clone();
    assert_eq!(job["env"]["HARNESS_PROVIDERS"], "kind,container");
    let runs: Vec<String> = steps(&wf)
        .iter()
        .filter_map(|s| s["run"].as_str().map(str::to_owned))
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("--test full_rebuild")),
        "{runs:?}"
    );
    assert!(
        runs.iter().any(|r| r.contains("ci/install-kind")),
        "{runs:?}"
    );
    assert!(steps(&wf).iter().any(|s| {
        s["uses"]
            .as_str()
            .is_some_and(|u| u.starts_with("actions/upload-artifact"))
    }));
    for script in ["install-kind", "setup", "run"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../ci")
            .join(script);
        assert!(
            path.is_file(),
            "{} is referenced but missing",
            path.display()
        );
    }
}

#[test]
fn pull_request_workflow_runs_the_suite_on_the_simulator() {
    let wf = load("pull-request.yml");
    check_thin(&wf);
    assert!(wf["on"].get("pull_request").is_some());
    assert!(
        wf["jobs"]["suite"]["env"]
            .get("HARNESS_PROVIDERS")
            .is_none(),
        "the PR suite runs the simulator only"
    );
    let runs: Vec<&str> = steps(&wf)
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(runs.iter().any(|r| r.contains("ci/run")), "{runs:?}");
}
