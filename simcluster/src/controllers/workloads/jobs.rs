//! Jobs and CronJobs. A Job runs pods from its template until `completions` succeed or
//! `backoffLimit` failures are reached, then reports `Complete` or `Failed`. A CronJob creates
//! a Job (named `<cronjob>-<minutes since epoch>`, as the real controller does) at each
//! scheduled minute, honours `concurrencyPolicy` and `suspend`, and prunes old Jobs to the
//! history limits. `kubectl create job --from=cronjob/NAME` is an ordinary Job create.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::events::{EventKind, record};
use super::replicaset::pod_from_template;
use super::{
    Ctx, create, delete, deleting, meta, now, owned_by, owner_ref, pod_phase, write_status,
};
use crate::store::Store;

fn int(v: &Value, p: &str, default: i64) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(default)
}

fn condition(job: &Value, ty: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// Whether a Job has finished (Complete or Failed).
pub(crate) fn finished(job: &Value) -> bool {
    condition(job, "Complete") || condition(job, "Failed")
}

pub(crate) fn reconcile(ctx: &Ctx) {
    reconcile_jobs(ctx);
    reconcile_cronjobs(ctx);
}

fn reconcile_jobs(ctx: &Ctx) {
    let store = &ctx.store;
    let (jobs, _) = store.list("batch/jobs", None);
    for job in jobs {
        if deleting(&job) || job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if job.pointer("/spec/selector").is_none() {
            default_selector(store, &job);
            continue;
        }
        reconcile_job(store, &job);
    }
}

/// One Job: its pods counted, then (unless it has finished) Complete, Failed past the backoff
/// limit, or more pods up to its parallelism; then its status.
fn reconcile_job(store: &Store, job: &Value) {
    let ns = meta(job, "namespace");
    let pods: Vec<_> = store
        .list("/pods", Some(ns))
        .0
        .into_iter()
        .filter(|p| owned_by(p, job))
        .collect();
    let succeeded = pods.iter().filter(|p| pod_phase(p) == "Succeeded").count() as i64;
    let failed_pods = pods.iter().filter(|p| pod_phase(p) == "Failed").count() as i64;
    // With restartPolicy OnFailure, container restarts count against the backoff limit.
    let restarts: i64 = pods
        .iter()
        .flat_map(|p| {
            p.pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let failed = failed_pods + restarts;
    let active: Vec<_> = pods
        .iter()
        .filter(|p| !deleting(p) && !matches!(pod_phase(p), "Succeeded" | "Failed"))
        .collect();
    let completions = int(job, "/spec/completions", 1);
    let parallelism = int(job, "/spec/parallelism", 1);
    let backoff = int(job, "/spec/backoffLimit", 6);
    let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now());
    }
    if !finished(job) {
        let t = now();
        if succeeded >= completions {
            complete(store, job, &mut status, &t);
        } else if failed > backoff {
            fail(store, job, &mut status, &t);
            for p in &active {
                delete(store, "/pods", ns, meta(p, "name"));
            }
        } else {
            let room = (completions - succeeded).min(parallelism) - active.len() as i64;
            create_job_pods(store, job, room);
        }
    }
    let active_now = store
        .list("/pods", Some(ns))
        .0
        .iter()
        .filter(|p| {
            owned_by(p, job) && !deleting(p) && !matches!(pod_phase(p), "Succeeded" | "Failed")
        })
        .count();
    status["active"] = json!(active_now);
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    status["ready"] = json!(0);
    write_status(store, "batch/jobs", job, status);
}

/// The Job reached its completions: the SuccessCriteriaMet and Complete conditions at `t`.
fn complete(store: &Store, job: &Value, status: &mut Value, t: &str) {
    status["conditions"] = json!([
        {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t},
        {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": t, "lastTransitionTime": t},
    ]);
    status["completionTime"] = json!(t);
    record(
        store,
        job,
        EventKind::Normal,
        "Completed",
        "Job completed",
        "job-controller",
    );
}

/// The Job passed its backoff limit: the FailureTarget and Failed conditions at `t`.
fn fail(store: &Store, job: &Value, status: &mut Value, t: &str) {
    status["conditions"] = json!([
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": t, "lastTransitionTime": t},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": t, "lastTransitionTime": t},
    ]);
    record(
        store,
        job,
        EventKind::Warning,
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
        "job-controller",
    );
}

/// Creates `room` pods (none when it is not positive) from the Job's template, named
/// `<job>-` plus a suffix and labelled as the real controller labels them.
fn create_job_pods(store: &Store, job: &Value, room: i64) {
    let ns = meta(job, "namespace");
    let template = job
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let labels = json!({"batch.kubernetes.io/job-name": meta(job, "name"), "job-name": meta(job, "name"), "batch.kubernetes.io/controller-uid": meta(job, "uid"), "controller-uid": meta(job, "uid")});
    for _ in 0..room.max(0) {
        let pod = pod_from_template(
            job,
            &template,
            None,
            &format!("{}-", meta(job, "name")),
            &labels,
        );
        if let Some(p) = create(store, "/pods", ns, pod) {
            record(
                store,
                job,
                EventKind::Normal,
                "SuccessfulCreate",
                &format!("Created pod: {}", meta(&p, "name")),
                "job-controller",
            );
        }
    }
}

/// The selector and template labels a real API server gives a Job on create
/// (`batch.kubernetes.io/controller-uid`, `job-name`), which `kubectl logs job/NAME` and
/// `kubectl describe` rely on.
fn default_selector(store: &Store, job: &Value) {
    let uid = meta(job, "uid").to_owned();
    let name = meta(job, "name").to_owned();
    let res = store.mutate(
        "batch/jobs",
        meta(job, "namespace"),
        &name,
        |_, cur| match cur {
            Some(c) if meta(c, "uid") == uid && c.pointer("/spec/selector").is_none() => {
                let mut o = c.as_ref().clone();
                o["spec"]["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("job-name", &name),
                ] {
                    o["spec"]["template"]["metadata"]["labels"][k] = json!(v);
                    o["metadata"]["labels"][k] = json!(v);
                }
                if let Some(m) = o["metadata"]["labels"].as_object_mut() {
                    m.remove("controller-uid");
                    m.remove("batch.kubernetes.io/controller-uid");
                }
                Ok(crate::store::Mutation::Put(o))
            }
            _ => Ok(crate::store::Mutation::Unchanged),
        },
    );
    if let Err(e) = res {
        tracing::warn!(job = name, error = %e, "defaulting the job selector failed");
    }
}

fn schedule_of(expr: &str) -> Option<cron::Schedule> {
    // Kubernetes schedules have five fields (and @-macros); the cron crate wants seconds first.
    let expr = expr.trim();
    let full = if expr.starts_with('@') {
        expr.to_owned()
    } else {
        format!("0 {expr}")
    };
    cron::Schedule::from_str(&full).ok()
}

fn reconcile_cronjobs(ctx: &Ctx) {
    let store = &ctx.store;
    let (cronjobs, _) = store.list("batch/cronjobs", None);
    let now_t = Utc::now();
    for cj in cronjobs {
        if deleting(&cj) {
            continue;
        }
        reconcile_cronjob(store, &cj, now_t);
    }
}

/// One CronJob: a Job started when one is due (unless suspended, by its concurrency policy),
/// the status written, and the finished Jobs beyond the history limits deleted.
fn reconcile_cronjob(store: &Store, cj: &Value, now_t: DateTime<Utc>) {
    let ns = meta(cj, "namespace");
    let expr = cj
        .pointer("/spec/schedule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(schedule) = schedule_of(expr) else {
        record(
            store,
            cj,
            EventKind::Warning,
            "InvalidSchedule",
            &format!("invalid schedule: {expr}"),
            "cronjob-controller",
        );
        return;
    };
    let last = cj
        .pointer("/status/lastScheduleTime")
        .and_then(Value::as_str)
        .or_else(|| {
            cj.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
        })
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now_t);
    let due = schedule.after(&last).next().filter(|t| *t <= now_t);
    let suspended = cj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
    let mut status = cj.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    if let (Some(t), false) = (due, suspended) {
        start_scheduled_job(store, cj, t);
        status["lastScheduleTime"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let jobs: Vec<_> = store
        .list("batch/jobs", Some(ns))
        .0
        .into_iter()
        .filter(|j| owned_by(j, cj))
        .collect();
    status["active"] = Value::Array(
        jobs.iter()
            .filter(|j| !finished(j))
            .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta(j, "name"), "namespace": ns, "uid": meta(j, "uid")}))
            .collect(),
    );
    if status["active"].as_array().is_some_and(Vec::is_empty)
        && let Some(m) = status.as_object_mut()
    {
        m.remove("active");
    }
    if let Some(t) = jobs
        .iter()
        .filter(|j| condition(j, "Complete"))
        .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
        .max()
    {
        status["lastSuccessfulTime"] = json!(t);
    }
    write_status(store, "batch/cronjobs", cj, status);
    trim_history(store, cj, &jobs);
}

/// The Job scheduled for `t`, as the concurrency policy allows: Forbid skips it while one
/// runs, Replace deletes the running ones first, Allow just starts it.
fn start_scheduled_job(store: &Store, cj: &Value, t: DateTime<Utc>) {
    let ns = meta(cj, "namespace");
    let name = meta(cj, "name");
    let active: Vec<_> = store
        .list("batch/jobs", Some(ns))
        .0
        .into_iter()
        .filter(|j| owned_by(j, cj))
        .filter(|j| !finished(j) && !deleting(j))
        .collect();
    let policy = cj
        .pointer("/spec/concurrencyPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        record(
            store,
            cj,
            EventKind::Normal,
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid",
            "cronjob-controller",
        );
        return;
    }
    if policy == "Replace" {
        for j in &active {
            delete(store, "batch/jobs", ns, meta(j, "name"));
        }
    }
    let job_name = format!("{name}-{}", t.timestamp() / 60);
    let spec = cj
        .pointer("/spec/jobTemplate/spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut md = cj
        .pointer("/spec/jobTemplate/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    md["name"] = json!(job_name);
    md["namespace"] = json!(ns);
    md["ownerReferences"] = json!([owner_ref(cj)]);
    md["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": md, "spec": spec});
    if create(store, "batch/jobs", ns, job).is_some() {
        record(
            store,
            cj,
            EventKind::Normal,
            "SuccessfulCreate",
            &format!("Created job {job_name}"),
            "cronjob-controller",
        );
    }
}

/// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` (default 3) and
/// `failedJobsHistoryLimit` (default 1).
fn trim_history(store: &Store, cj: &Value, jobs: &[Arc<Value>]) {
    let ns = meta(cj, "namespace");
    for (ty, limit) in [
        ("Complete", int(cj, "/spec/successfulJobsHistoryLimit", 3)),
        ("Failed", int(cj, "/spec/failedJobsHistoryLimit", 1)),
    ] {
        let mut done: Vec<_> = jobs
            .iter()
            .filter(|j| condition(j, ty) && !deleting(j))
            .collect();
        done.sort_by_key(|j| meta(j, "creationTimestamp").to_owned());
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for j in &done[..excess] {
            delete(store, "batch/jobs", ns, meta(j, "name"));
        }
    }
}
