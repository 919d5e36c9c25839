//! The CRD: committed YAML equals `crdgen`'s output, passes `kubernetes-validate --strict`
//! (Kubernetes 1.33 and the newest version it knows), the examples validate against its
//! openAPI schema, and its CEL rules accept and reject what they should (kube-cel).

use std::path::{Path, PathBuf};
use std::process::Command;

use agentcell_operator::crd_pool::{AgentSandboxClaim, AgentSandboxPool};
use agentcell_operator::desired::{check_template, resolve_policy};
use agentcell_operator::{AgentSandbox, OperatorConfig};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    schema_of(AgentSandbox::crd())
}

fn schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let crd = serde_json::to_value(crd).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn committed_crd_is_crdgen_output() {
    let committed = std::fs::read_to_string(repo().join("crds/agentsandbox.yaml")).unwrap();
    assert!(
        committed == agentcell_operator::crd_yaml(),
        "crds/agentsandbox.yaml is stale: run `cargo run -p agentcell-operator --bin crdgen > crds/agentsandbox.yaml`"
    );
    // And the YAML says what the types say.
    let parsed: Value = serde_saphyr::from_str(&committed).unwrap();
    assert_eq!(parsed, serde_json::to_value(AgentSandbox::crd()).unwrap());
}

fn kubernetes_validate(version: Option<&str>, file: &Path) -> String {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd.arg(file).output().expect(
        "kubernetes-validate is not installed: run scripts/setup.sh (pip install kubernetes-validate)",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", file.display());
    text
}

#[test]
fn crd_passes_kubernetes_validate_strict_for_1_33_and_the_newest_version() {
    let file = repo().join("crds/agentsandbox.yaml");
    let text = kubernetes_validate(Some("1.33.0"), &file);
    assert!(
        text.contains("passed for resource customresourcedefinition/agentsandboxes.agentcell.dev against version 1.33"),
        "{text}"
    );
    // Without a version it validates against the newest it knows.
    let text = kubernetes_validate(None, &file);
    let newest = text
        .split("against version ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in {text}"));
    let minor: u32 = newest.trim_start_matches("1.").parse().unwrap();
    assert!(minor >= 33, "newest known version {newest}");
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn kubernetes_validate_rejects_a_broken_crd() {
    // The check above can fail: a CRD with a misspelled field does not pass.
    let mut crd = serde_json::to_value(AgentSandbox::crd()).unwrap();
    crd["spec"]["scopee"] = json!("Namespaced");
    let dir = std::env::temp_dir().join(format!("agentcell-crd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, serde_saphyr::to_string(&crd).unwrap()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate is installed by scripts/setup.sh");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
}

/// Structural-schema validation as the API server applies it to a custom resource: types,
/// required fields, enums, patterns, ranges, formats, and no unknown fields (the API server
/// would prune them silently; here they are errors, since an example must mean what it says).
fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"] != json!(true) {
            errs.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(v.is_i64() || v.is_string()) {
            errs.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        errs.push(format!("{path}: {v} is not one of {options:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(obj) = v.as_object() else {
                return errs.push(format!("{path}: must be an object"));
            };
            for r in schema["required"].as_array().into_iter().flatten() {
                if !obj.contains_key(r.as_str().unwrap()) {
                    errs.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
            for (k, val) in obj {
                let p = format!("{path}.{k}");
                if let Some(s) = schema["properties"].get(k) {
                    validate(s, val, &p, errs);
                } else if schema["additionalProperties"].is_object() {
                    validate(&schema["additionalProperties"], val, &p, errs);
                } else if !preserve {
                    errs.push(format!("{p}: unknown field"));
                }
            }
        }
        Some("array") => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{path}: must be an array")),
        },
        Some("string") => match v.as_str() {
            Some(s) => {
                if let Some(p) = schema["pattern"].as_str()
                    && !regex::Regex::new(p).unwrap().is_match(s)
                {
                    errs.push(format!("{path}: {s:?} does not match {p}"));
                }
                if let Some(n) = schema["minLength"].as_u64()
                    && (s.chars().count() as u64) < n
                {
                    errs.push(format!("{path}: shorter than {n}"));
                }
                if schema["format"] == "date-time"
                    && s.parse::<k8s_openapi::jiff::Timestamp>().is_err()
                {
                    errs.push(format!("{path}: {s:?} is not a date-time"));
                }
            }
            None => errs.push(format!("{path}: must be a string")),
        },
        Some("integer") => match v.as_i64() {
            Some(n) => {
                if schema["minimum"].as_f64().is_some_and(|m| (n as f64) < m)
                    || schema["maximum"].as_f64().is_some_and(|m| (n as f64) > m)
                {
                    errs.push(format!("{path}: {n} out of range"));
                }
            }
            None => errs.push(format!("{path}: must be an integer")),
        },
        Some("number") if !v.is_number() => errs.push(format!("{path}: must be a number")),
        Some("boolean") if !v.is_boolean() => errs.push(format!("{path}: must be a boolean")),
        _ => {}
    }
}

fn schema_errors(obj: &Value) -> Vec<String> {
    schema_errors_in(&schema(), obj)
}

fn schema_errors_in(schema: &Value, obj: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    // apiVersion, kind and metadata are the API server's own, not the CRD schema's.
    let mut body = obj.clone();
    let root = body.as_object_mut().unwrap();
    for k in ["apiVersion", "kind", "metadata"] {
        root.remove(k);
    }
    validate(schema, &body, "", &mut errs);
    errs
}

fn cel_errors(obj: &Value) -> Vec<String> {
    cel_errors_in(&schema(), obj)
}

fn cel_errors_in(schema: &Value, obj: &Value) -> Vec<String> {
    match kube_cel::Validator::new().validate(schema, obj, None) {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn deploy_manifest_passes_kubernetes_validate() {
    let text = kubernetes_validate(
        Some("1.33.0"),
        &repo().join("operator/deploy/operator.yaml"),
    );
    assert!(
        text.contains("passed for resource deployment/agentcell-operator"),
        "{text}"
    );
}

fn examples() -> Vec<(String, Value)> {
    let dir = repo().join("examples");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            out.push((f.file_name().unwrap().to_string_lossy().into_owned(), doc));
        }
    }
    out
}

#[test]
fn examples_validate_against_the_crd_schema_and_the_policy_engine() {
    let all = examples();
    let sandboxes: Vec<_> = all
        .iter()
        .filter(|(_, d)| d["kind"] == "AgentSandbox")
        .collect();
    let names: Vec<&str> = sandboxes.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        ["coding-agent.yaml", "ml-sandbox.yaml", "quickstart.yaml"]
    );
    for (file, doc) in &sandboxes {
        assert_eq!(doc["apiVersion"], "agentcell.dev/v1alpha1", "{file}");
        let errs = schema_errors(doc);
        assert!(errs.is_empty(), "{file}: {errs:?}");
        let errs = cel_errors(doc);
        assert!(errs.is_empty(), "{file}: {errs:?}");
        // What the operator will do with it: accept the template and the policy.
        let mut asb: AgentSandbox = serde_json::from_value((*doc).clone()).unwrap();
        asb.metadata.uid = Some("u".into());
        check_template(&asb, &OperatorConfig::default()).unwrap();
        let cm = all
            .iter()
            .find(|(_, d)| {
                d["kind"] == "ConfigMap"
                    && asb
                        .spec
                        .policy
                        .config_map_ref
                        .as_ref()
                        .is_some_and(|r| d["metadata"]["name"] == r.name.as_str())
            })
            .map(|(_, d)| serde_json::from_value::<ConfigMap>(d.clone()).unwrap());
        resolve_policy(&asb.spec.policy, cm.as_ref()).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // The built-in kinds beside them (the ConfigMap) pass kubernetes-validate.
    kubernetes_validate(Some("1.33.0"), &repo().join("examples/ml-sandbox.yaml"));
}

fn example(name: &str) -> Value {
    examples()
        .into_iter()
        .find(|(_, d)| d["kind"] == "AgentSandbox" && d["metadata"]["name"] == name)
        .unwrap()
        .1
}

#[test]
fn schema_rejects_unknown_fields_wrong_enums_and_bad_durations() {
    let mut bad = example("coding-agent");
    bad["spec"]["isolaton"] = json!("microvm");
    bad["spec"]["operatingMode"] = json!("Paused");
    bad["spec"]["lifetime"]["shutdownAfter"] = json!("8 hours");
    bad["spec"]["service"]["ports"][0]["port"] = json!(70000);
    bad["spec"]["policy"]["preset"] = json!("no-such-preset");
    let errs = schema_errors(&bad);
    for want in [
        ".spec.isolaton: unknown field",
        ".spec.operatingMode: \"Paused\" is not one of",
        ".spec.lifetime.shutdownAfter: \"8 hours\" does not match",
        ".spec.service.ports[0].port: 70000 out of range",
        ".spec.policy.preset: \"no-such-preset\" is not one of",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{want} not in {errs:?}"
        );
    }
    let mut no_template = example("coding-agent");
    no_template["spec"]
        .as_object_mut()
        .unwrap()
        .remove("podTemplate");
    assert_eq!(schema_errors(&no_template), [".spec.podTemplate: required"]);
    // The inline policy is free-form for the schema: the policy engine judges it.
    let mut odd = example("coding-agent");
    odd["spec"]["policy"]["inline"]["anything"] = json!({"goes": [1]});
    assert!(schema_errors(&odd).is_empty());
}

#[test]
fn cel_rules_require_exactly_one_policy_source() {
    let base = example("coding-agent");
    assert!(cel_errors(&base).is_empty());
    let one_of = "spec.policy: exactly one of inline, configMapRef, preset must be set";

    let mut two = base.clone();
    two["spec"]["policy"]["preset"] = json!("offline");
    assert_eq!(cel_errors(&two), [one_of]);

    let mut three = two.clone();
    three["spec"]["policy"]["configMapRef"] = json!({"name": "p", "key": "k"});
    assert_eq!(cel_errors(&three), [one_of]);

    let mut none = base.clone();
    none["spec"]["policy"] = json!({});
    assert_eq!(cel_errors(&none), [one_of]);

    for only in [
        json!({"preset": "offline"}),
        json!({"configMapRef": {"name": "p", "key": "k"}}),
        json!({"inline": {"version": "1.0.0"}}),
    ] {
        let mut ok = base.clone();
        ok["spec"]["policy"] = only.clone();
        assert!(cel_errors(&ok).is_empty(), "{only}");
    }
}

#[test]
fn cel_rules_require_exactly_one_lifetime_form() {
    let base = example("coding-agent");
    let one_of = "spec.lifetime: exactly one of shutdownAfter, shutdownTime must be set";

    let mut both = base.clone();
    both["spec"]["lifetime"]["shutdownTime"] = json!("2026-12-31T18:00:00Z");
    assert_eq!(cel_errors(&both), [one_of]);

    let mut neither = base.clone();
    neither["spec"]["lifetime"] = json!({"shutdownPolicy": "Retain"});
    assert_eq!(cel_errors(&neither), [one_of]);

    let mut time_only = base.clone();
    time_only["spec"]["lifetime"] = json!({"shutdownTime": "2026-12-31T18:00:00Z"});
    assert!(cel_errors(&time_only).is_empty());

    let mut no_lifetime = base;
    no_lifetime["spec"]
        .as_object_mut()
        .unwrap()
        .remove("lifetime");
    assert!(cel_errors(&no_lifetime).is_empty());
}

#[test]
fn crd_names_columns_and_descriptions() {
    let crd = serde_json::to_value(AgentSandbox::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "agentsandboxes.agentcell.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["asb"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["subresources"]["status"], json!({}));
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Ready", "Isolation", "Policy", "Pod", "Age"]);
    // `kubectl explain agentsandbox.spec` prints these: every spec field is described.
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for (field, s) in spec.as_object().unwrap() {
        let d = s["description"].as_str().unwrap_or_default();
        assert!(d.len() > 20, "spec.{field} lacks a description");
    }
}

#[test]
fn committed_pool_and_claim_crds_are_crdgen_output() {
    assert_eq!(
        agentcell_operator::CRD_FILES,
        ["agentsandbox", "agentsandboxpool", "agentsandboxclaim"]
    );
    for (name, crd) in [
        ("agentsandboxpool", AgentSandboxPool::crd()),
        ("agentsandboxclaim", AgentSandboxClaim::crd()),
    ] {
        let file = format!("crds/{name}.yaml");
        let committed = std::fs::read_to_string(repo().join(&file)).unwrap();
        let generated = agentcell_operator::crd_yaml_of(name).unwrap();
        assert!(
            committed == generated,
            "{file} is stale: run `cargo run -p agentcell-operator --bin crdgen {name} > {file}`"
        );
        let parsed: Value = serde_saphyr::from_str(&committed).unwrap();
        assert_eq!(parsed, serde_json::to_value(crd).unwrap());
    }
    assert_eq!(agentcell_operator::crd_yaml_of("nope"), None);
}

#[test]
fn pool_and_claim_crds_pass_kubernetes_validate_strict() {
    for (file, plural) in [
        ("crds/agentsandboxpool.yaml", "agentsandboxpools"),
        ("crds/agentsandboxclaim.yaml", "agentsandboxclaims"),
    ] {
        let text = kubernetes_validate(Some("1.33.0"), &repo().join(file));
        assert!(
            text.contains(&format!(
                "passed for resource customresourcedefinition/{plural}.agentcell.dev against version 1.33"
            )),
            "{text}"
        );
        let text = kubernetes_validate(None, &repo().join(file));
        assert!(text.contains("passed"), "{text}");
    }
}

fn example_of(kind: &str) -> (String, Value) {
    let mut found: Vec<_> = examples()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} example");
    found.remove(0)
}

#[test]
fn pool_and_claim_examples_validate_against_their_schemas() {
    let pool_schema = schema_of(AgentSandboxPool::crd());
    let claim_schema = schema_of(AgentSandboxClaim::crd());
    let (file, pool) = example_of("AgentSandboxPool");
    assert_eq!(file, "pool.yaml");
    assert_eq!(schema_errors_in(&pool_schema, &pool), Vec::<String>::new());
    assert_eq!(cel_errors_in(&pool_schema, &pool), Vec::<String>::new());
    // The template is a sandbox spec the operator accepts, with a policy the engine accepts.
    let p: AgentSandboxPool = serde_json::from_value(pool.clone()).unwrap();
    let asb = agentcell_operator::pool::template_sandbox(&p);
    check_template(&asb, &OperatorConfig::default()).unwrap();
    resolve_policy(&asb.spec.policy, None).unwrap();

    let (file, claim) = example_of("AgentSandboxClaim");
    assert_eq!(file, "claim.yaml");
    assert_eq!(
        schema_errors_in(&claim_schema, &claim),
        Vec::<String>::new()
    );
    assert_eq!(cel_errors_in(&claim_schema, &claim), Vec::<String>::new());
    let c: AgentSandboxClaim = serde_json::from_value(claim.clone()).unwrap();
    assert_eq!(c.spec.pool_ref.name, p.metadata.name.unwrap());

    // The schemas can fail: unknown fields, a negative size, a bad strategy, no poolRef.
    let mut bad = pool;
    bad["spec"]["replica"] = json!(1);
    bad["spec"]["replicas"] = json!(-1);
    bad["spec"]["updateStrategy"]["type"] = json!("Surge");
    let errs = schema_errors_in(&pool_schema, &bad);
    for want in [
        ".spec.replica: unknown field",
        ".spec.replicas: -1 out of range",
        ".spec.updateStrategy.type: \"Surge\" is not one of",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{want} not in {errs:?}"
        );
    }
    let mut bad = claim;
    bad["spec"].as_object_mut().unwrap().remove("poolRef");
    assert_eq!(
        schema_errors_in(&claim_schema, &bad),
        [".spec.poolRef: required"]
    );
}

#[test]
fn cel_rule_caps_replicas_at_max_replicas() {
    let schema = schema_of(AgentSandboxPool::crd());
    let (_, base) = example_of("AgentSandboxPool");
    let cap = "spec: replicas must not exceed maxReplicas";
    let mut over = base.clone();
    over["spec"]["replicas"] = json!(11);
    assert_eq!(cel_errors_in(&schema, &over), [cap]);
    let mut at = base.clone();
    at["spec"]["replicas"] = json!(10);
    assert!(cel_errors_in(&schema, &at).is_empty());
    let mut uncapped = over;
    uncapped["spec"]
        .as_object_mut()
        .unwrap()
        .remove("maxReplicas");
    assert!(cel_errors_in(&schema, &uncapped).is_empty());
    // The sandbox rules apply inside the template too.
    let mut two = base;
    two["spec"]["template"]["policy"]["inline"] = json!({"version": "1.0.0"});
    assert_eq!(
        cel_errors_in(&schema, &two),
        ["spec.template.policy: exactly one of inline, configMapRef, preset must be set"]
    );
}

#[test]
fn pool_and_claim_names_and_columns() {
    for (crd, name, short, cols) in [
        (
            AgentSandboxPool::crd(),
            "agentsandboxpools.agentcell.dev",
            "asbpool",
            vec!["Desired", "Ready", "Updated", "Claimed", "Policy", "Age"],
        ),
        (
            AgentSandboxClaim::crd(),
            "agentsandboxclaims.agentcell.dev",
            "asbclaim",
            vec!["Bound", "Pool", "Sandbox", "IP", "Age"],
        ),
    ] {
        let crd = serde_json::to_value(crd).unwrap();
        assert_eq!(crd["metadata"]["name"], name);
        assert_eq!(crd["spec"]["names"]["shortNames"], json!([short]));
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["subresources"]["status"], json!({}));
        let got: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, cols);
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for (field, s) in spec.as_object().unwrap() {
            let d = s["description"].as_str().unwrap_or_default();
            assert!(d.len() > 20, "{name} spec.{field} lacks a description");
        }
    }
}
