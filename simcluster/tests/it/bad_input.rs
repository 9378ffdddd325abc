//! Malformed and invalid requests get the Status a real API server would answer.

use serde_json::Value;

use crate::common::{TestCluster, raw};

fn check(resp: (u16, Value), code: u16, reason: &str, message_part: &str) {
    let (got, body) = resp;
    assert_eq!(got, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(message_part)),
        "message should mention {message_part:?}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_with_status_objects() {
    let tc = TestCluster::start().await;
    let a = tc.addr();
    let cms = "/api/v1/namespaces/default/configmaps";
    check(
        raw(&a, "POST", cms, "application/json", b"{\"metadata\": {").await,
        400,
        "BadRequest",
        "JSON",
    );
    check(
        raw(&a, "POST", cms, "application/yaml", b"metadata: [unclosed").await,
        400,
        "BadRequest",
        "YAML",
    );
    check(
        raw(&a, "POST", cms, "application/json", b"").await,
        400,
        "BadRequest",
        "empty",
    );
    check(
        raw(
            &a,
            "POST",
            cms,
            "application/json",
            br#"{"kind": "Secret", "metadata": {"name": "x"}}"#,
        )
        .await,
        400,
        "BadRequest",
        "kind",
    );
    check(
        raw(
            &a,
            "POST",
            cms,
            "application/json",
            br#"{"metadata": {"name": "x", "namespace": "other"}}"#,
        )
        .await,
        400,
        "BadRequest",
        "namespace",
    );
    check(
        raw(
            &a,
            "POST",
            cms,
            "application/json",
            br#"{"metadata": {"name": "Not_Valid"}}"#,
        )
        .await,
        422,
        "Invalid",
        "metadata.name",
    );
    check(
        raw(&a, "POST", cms, "application/json", br#"{"metadata": {}}"#).await,
        422,
        "Invalid",
        "name or generateName is required",
    );
    check(
        raw(
            &a,
            "POST",
            cms,
            "application/json",
            br#"{"metadata": {"name": "x", "labels": {"a": "not valid!"}}}"#,
        )
        .await,
        422,
        "Invalid",
        "metadata.labels",
    );
    check(
        raw(
            &a,
            "POST",
            "/api/v1/namespaces/missing/configmaps",
            "application/json",
            br#"{"metadata": {"name": "x"}}"#,
        )
        .await,
        404,
        "NotFound",
        "namespaces \"missing\" not found",
    );
    check(
        raw(
            &a,
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            b"",
        )
        .await,
        404,
        "NotFound",
        // The real server's words: the path is not repeated.
        "the server could not find the requested resource",
    );
    check(
        raw(
            &a,
            "GET",
            "/apis/example.com/v1/things",
            "application/json",
            b"",
        )
        .await,
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    check(
        raw(
            &a,
            "GET",
            "/api/v1/namespaces/default/configmaps/absent",
            "application/json",
            b"",
        )
        .await,
        404,
        "NotFound",
        "configmaps \"absent\" not found",
    );
    check(
        raw(
            &a,
            "GET",
            &format!("{cms}?labelSelector=a%20b"),
            "application/json",
            b"",
        )
        .await,
        400,
        "BadRequest",
        "requirement",
    );
    check(
        raw(&a, "PATCH", &format!("{cms}/absent"), "text/plain", b"{}").await,
        415,
        "UnsupportedMediaType",
        "text/plain",
    );
    let sts = "/apis/apps/v1/namespaces/default/statefulsets";
    check(raw(&a, "POST", sts, "application/json", br#"{"metadata": {"name": "db"}, "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}"#).await,
        422, "Invalid", "spec.template.spec.containers[0].image");

    // Stale updates conflict; immutable fields are refused.
    let (code, created) = raw(
        &a,
        "POST",
        cms,
        "application/json",
        br#"{"metadata": {"name": "cfg"}, "data": {"a": "1"}}"#,
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("numeric rv");
    let (code, _) = raw(
        &a,
        "PUT",
        &format!("{cms}/cfg"),
        "application/json",
        format!(
            r#"{{"metadata": {{"name": "cfg", "resourceVersion": "{rv}"}}, "data": {{"a": "2"}}}}"#
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(code, 200);
    check(raw(&a, "PUT", &format!("{cms}/cfg"), "application/json", format!(r#"{{"metadata": {{"name": "cfg", "resourceVersion": "{rv}"}}, "data": {{"a": "3"}}}}"#).as_bytes()).await,
        409, "Conflict", "the object has been modified");
    check(
        raw(
            &a,
            "PUT",
            &format!("{cms}/cfg"),
            "application/json",
            br#"{"metadata": {"name": "other"}}"#,
        )
        .await,
        400,
        "BadRequest",
        "does not match the name",
    );
    let svcs = "/api/v1/namespaces/default/services";
    let (code, _) = raw(
        &a,
        "POST",
        svcs,
        "application/json",
        br#"{"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}"#,
    )
    .await;
    assert_eq!(code, 201);
    check(
        raw(
            &a,
            "PATCH",
            &format!("{svcs}/web"),
            "application/merge-patch+json",
            br#"{"spec": {"clusterIP": "127.1.9.9"}}"#,
        )
        .await,
        422,
        "Invalid",
        "spec.clusterIP",
    );
    check(
        raw(
            &a,
            "PATCH",
            &format!("{svcs}/web"),
            "application/json-patch+json",
            br#"{"op": "not a list"}"#,
        )
        .await,
        400,
        "BadRequest",
        "JSON patch",
    );
    check(
        raw(
            &a,
            "PATCH",
            &format!("{svcs}/web"),
            "application/apply-patch+yaml",
            b"kind: Service\n",
        )
        .await,
        // As kube-apiserver 1.20 answers: the options are invalid, not the request.
        422,
        "Invalid",
        "fieldManager: Required value: is required for apply patch",
    );

    // Malformed shapes deep in an object are refused, never a dropped connection.
    check(
        raw(
            &a,
            "POST",
            svcs,
            "application/json",
            br#"{"metadata": {"name": "shape"}, "spec": {"ports": [80]}}"#,
        )
        .await,
        422,
        "Invalid",
        "spec.ports[0].port",
    );
    check(
        raw(
            &a,
            "POST",
            svcs,
            "application/json",
            br#"{"metadata": {"name": "shape"}, "spec": "ClusterIP"}"#,
        )
        .await,
        422,
        "Invalid",
        "spec.ports",
    );
    check(
        raw(
            &a,
            "POST",
            "/api/v1/namespaces",
            "application/json",
            br#"{"metadata": {"name": "shape", "labels": "x"}}"#,
        )
        .await,
        422,
        "Invalid",
        "metadata.labels",
    );
    check(
        raw(
            &a,
            "POST",
            "/api/v1/namespaces",
            "application/json",
            br#"{"metadata": {"name": "shape"}, "spec": "x"}"#,
        )
        .await,
        422,
        "Invalid",
        "spec",
    );
    check(
        raw(
            &a,
            "PATCH",
            &format!("{svcs}/web"),
            "application/merge-patch+json",
            br#"{"spec": 7}"#,
        )
        .await,
        422,
        "Invalid",
        "spec",
    );
    check(
        raw(
            &a,
            "POST",
            "/api/v1/namespaces/default/secrets",
            "application/json",
            br#"{"metadata": {"name": "shape"}, "data": "x", "stringData": {"a": "b"}}"#,
        )
        .await,
        422,
        "Invalid",
        "data",
    );
    check(
        raw(
            &a,
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "application/json",
            b"[]",
        )
        .await,
        400,
        "BadRequest",
        "SelfSubjectAccessReview",
    );
    check(
        raw(
            &a,
            "PATCH",
            &format!("{svcs}/web?fieldManager=t"),
            "application/apply-patch+yaml",
            b"apiVersion: v1\nkind: Service\nmetadata: oops\n",
        )
        .await,
        400,
        "BadRequest",
        "metadata",
    );

    // The server is still healthy after all of that.
    let (code, v) = raw(&a, "GET", "/version", "application/json", b"").await;
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));
}
