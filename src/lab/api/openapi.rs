//! A skeletal OpenAPI v3 description, only what kubectl needs to trust the server with validation.
//!
//! `kubectl apply`/`create` validate strictly by default. kubectl first reads `/openapi/v3` to learn whether the
//! server supports the `fieldValidation` query parameter on each kind's PATCH path; if it cannot tell, it falls
//! back to client-side validation against `/openapi/v2` and fails when that is missing. These documents declare
//! the parameter on every kind, so kubectl leaves validation to the server; for what they cannot cover (a
//! `kind: List`, which kubectl always validates itself) an empty `/openapi/v2` lets kubectl skip validation. The
//! lab server accepts and ignores `fieldValidation`: it validates nothing. No schemas are published, so kubectl
//! computes strategic merge patches from its compiled-in types, and merge patches for custom resources.

use super::discovery::group_versions;
use super::resources::ResourceDef;
use serde_json::{Map, Value, json};

/// The media type of `/openapi/v2`: client-go asks for protobuf and decodes nothing else. This is the name
/// kube-apiserver answers with; the `@v1.0` form client-go asks for is not a media type Go's parser accepts.
pub const V2_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: an empty Document (a protobuf message with no fields set is zero bytes), so no definitions.
/// kubectl falls back to it for client-side validation where the v3 documents cannot vouch for server-side
/// validation, as for a `kind: List` (`kubectl create -f list.yaml`); it skips kinds the document does not define,
/// so it validates nothing, as the lab does. Without the document such commands fail with a 404.
pub const V2_DOCUMENT: &[u8] = &[];

/// The OpenAPI path prefix of a group version: `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group version.
pub fn root(defs: &[ResourceDef]) -> Value {
    let mut paths = Map::new();
    let mut groups: Vec<&str> = defs.iter().map(|d| d.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        for version in group_versions(defs, group) {
            let p = gv_path(group, &version);
            // The hash only busts kubectl's cache; the documents change when CRDs do, so name them by content.
            let hash = document(defs, group, &version)
                .map(|d| d.to_string().len())
                .unwrap_or(0);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:x}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`.
pub fn document(defs: &[ResourceDef], group: &str, version: &str) -> Option<Value> {
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    let mut paths = Map::new();
    for d in defs
        .iter()
        .filter(|d| d.group == group && d.versions.iter().any(|v| v == version))
    {
        let gvk = json!({"group": d.group, "version": version, "kind": d.kind});
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", d.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        let base = format!("/{}", gv_path(group, version));
        let collection = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", d.plural)
        } else {
            format!("{base}/{}", d.plural)
        };
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"parameters": params, "get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(
            collection,
            json!({"parameters": params, "get": op("list"), "post": op("post")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (ironlb lab)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::api::resources::builtin;

    #[test]
    fn every_kind_declares_field_validation_on_patch() {
        let defs = builtin();
        let root = root(&defs);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
        assert!(root["paths"].get("apis/metallb.io/v1beta2").is_some());
        let doc = document(&defs, "", "v1").unwrap();
        let svc = &doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"];
        assert_eq!(
            svc["patch"]["x-kubernetes-group-version-kind"]["kind"],
            "Service"
        );
        assert_eq!(svc["parameters"][0]["name"], "fieldValidation");
        assert!(doc["paths"].get("/api/v1/nodes/{name}").is_some());
        assert!(document(&defs, "nope.io", "v1").is_none());
    }
}
