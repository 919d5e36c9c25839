//! MXC's runtime rules, one case each: the document, the JSON path named, a message fragment.

use agentcell_policy::{ParseOptions, parse_with};

fn refused(doc: &str) -> (String, String) {
    let e = parse_with(doc, &ParseOptions::executor()).expect_err(doc);
    let v = e.violations();
    (v[0].path.to_string(), v[0].message.clone())
}

fn one_shot(extra: &str) -> String {
    format!(r#"{{"version":"0.8.0-alpha","process":{{"commandLine":"true"}}{extra}}}"#)
}

#[test]
fn each_rule_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"}} x"#,
            "(document)",
            "trailing content",
        ),
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a","cwd":"/","cwd":"/"}}"#,
            "process.cwd",
            "duplicate key",
        ),
        (
            &one_shot(r#","network":{"egress":{"alow":[]}}"#),
            "network.egress.alow",
            "unknown field",
        ),
        (
            r#"{"version":"0.5.0","process":{"commandLine":"a"}}"#,
            "version",
            "older than supported",
        ),
        (
            r#"{"version":"1.0.0","process":{"commandLine":"a"}}"#,
            "version",
            "newer than supported",
        ),
        (
            r#"{"version":"0.8","process":{"commandLine":"a"}}"#,
            "version",
            "not semver",
        ),
        (
            r#"{"version":"0.8.0-alpha","containment":"process"}"#,
            "process",
            "required",
        ),
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":""}}"#,
            "process.commandLine",
            "empty",
        ),
        (
            r#"{"version":"0.7.0-alpha","process":{"commandLine":"a"},"network":{"egress":{}}}"#,
            "network.egress",
            "0.8 or later",
        ),
        (
            r#"{"version":"0.7.0-alpha","process":{"commandLine":"a"},"runtimeConfig":null}"#,
            "runtimeConfig",
            "0.8 or later",
        ),
        (
            &one_shot(r#","network":{"defaultPolicy":"block","egress":{}}"#),
            "network",
            "cannot mix",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"to":[]}]}}"#),
            "network.egress.allow[0].to",
            "at least one destination",
        ),
        (
            &one_shot(r#","network":{"egress":{"deny":[{"ports":[]}]}}"#),
            "network.egress.deny[0].ports",
            "at least one selector",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"to":[{"cidr":"10.0.0.1/8"}]}]}}"#),
            "network.egress.allow[0].to[0].cidr",
            "host part",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"to":[{"cidr":"example.com"}]}]}}"#),
            "network.egress.allow[0].to[0].cidr",
            "not a valid network CIDR",
        ),
        (
            &one_shot(
                r#","network":{"egress":{"allow":[{"to":[{"cidr":"10.0.0.0/8","except":["::/0"]}]}]}}"#,
            ),
            "network.egress.allow[0].to[0].except[0]",
            "different address family",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"ports":[{"port":0}]}]}}"#),
            "network.egress.allow[0].ports[0].port",
            "between 1 and 65535",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"ports":[{"port":70000}]}]}}"#),
            "network.egress.allow[0].ports[0].port",
            "u16",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"ports":[{"endPort":80}]}]}}"#),
            "network.egress.allow[0].ports[0].endPort",
            "requires port",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"ports":[{"port":90,"endPort":80}]}]}}"#),
            "network.egress.allow[0].ports[0].endPort",
            "greater than or equal",
        ),
        (
            &one_shot(
                r#","network":{"egress":{"allow":[{"ports":[{"protocol":"icmp","port":1}]}]}}"#,
            ),
            "network.egress.allow[0].ports[0]",
            "icmp",
        ),
        (
            &one_shot(r#","runtimeConfig":{"networkProxy":"http://10.0.0.1:3128"}"#),
            "runtimeConfig.networkProxy",
            "localhost",
        ),
        (
            &one_shot(r#","runtimeConfig":{"networkProxy":"http://127.0.0.1:80"}"#),
            "runtimeConfig.networkProxy",
            "must include a port",
        ),
        (
            &one_shot(r#","runtimeConfig":{"networkProxy":"ftp://127.0.0.1:21"}"#),
            "runtimeConfig.networkProxy",
            "scheme",
        ),
        (
            &one_shot(
                r#","runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"},"network":{"egress":{"default":"allow"}}"#,
            ),
            "runtimeConfig.networkProxy",
            "default='deny'",
        ),
        (
            &one_shot(r#","lxc":{"distribution":"alpine","release":"3.23"}"#),
            "lxc",
            "another containment",
        ),
        (
            &one_shot(r#","containment":"lxc","lxc":{"distribution":"alpine"}"#),
            "lxc.release",
            "required",
        ),
        (
            &one_shot(
                r#","containment":"processcontainer","processContainer":{"capabilities":["a,b"]}"#,
            ),
            "processContainer.capabilities[0]",
            "comma",
        ),
        (
            &one_shot(
                r#","containment":"processcontainer","processContainer":{"capabilities":["LearningModeLogging"]}"#,
            ),
            "processContainer.capabilities[0]",
            "reserved",
        ),
        (
            &one_shot(r#","filesystem":{"readonlyPaths":["  "]}"#),
            "filesystem.readonlyPaths[0]",
            "empty",
        ),
        (
            &one_shot(r#","filesystem":{"deniedPaths":["/a\"b"]}"#),
            "filesystem.deniedPaths[0]",
            "invalid character",
        ),
        (
            &one_shot(r#","filesystem":{"readwritePaths":["/a\u0000"]}"#),
            "filesystem.readwritePaths[0]",
            "NUL",
        ),
        (&one_shot(r#","phase":"exec""#), "phase", "state-aware"),
        (
            &one_shot(r#","experimental":{"seatbelt":{}}"#),
            "experimental.seatbelt",
            "moved",
        ),
        (
            &one_shot(r#","network":{"ingress":{"default":"allow"}}"#),
            "network.ingress.default",
            "not supported",
        ),
        (
            &one_shot(r#","network":{"egress":{"allow":[{"to":[{"cidr":"::/0"}]}]}}"#),
            "network.egress.allow[0].to[0].cidr",
            "IPv4-mapped",
        ),
        (
            r#"{"version":"0.7.0-alpha","process":{"commandLine":"a"},"network":{"proxy":{"url":"http://u:p@127.0.0.1:3128"},"defaultPolicy":"allow"}}"#,
            "network.proxy.url",
            "credentials",
        ),
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"},"network":{"defaultPolicy":"allow"}}"#,
            "network.allowLocalNetwork",
            "not enforced",
        ),
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"},"network":{"allowedHosts":["1.1.1.1"]}}"#,
            "network",
            "enforcement mechanism",
        ),
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"},"network":{"enforcementMode":"firewall","allowedHosts":["api.github.com"]}}"#,
            "network.allowedHosts[0]",
            "not an IP address",
        ),
        (
            r#"{"version":"0.6.0-alpha","process":{"commandLine":"a"},"network":{"proxy":{"builtinTestServer":true}}}"#,
            "network.proxy.builtinTestServer",
            "--allow-testing-features",
        ),
        (
            r#"{"version":"0.6.0-alpha","process":{"commandLine":"a"},"network":{"proxy":{}}}"#,
            "network.proxy",
            "must specify",
        ),
        (r#"["0.6.0-alpha"]"#, "(document)", "JSON object"),
        (&one_shot(r#","process":["x"]"#), "process", "duplicate key"),
        (
            r#"{"version":"0.8.0-alpha","process":["x"]}"#,
            "process",
            "expected an object",
        ),
    ];
    let mut failures = Vec::new();
    for (doc, path, fragment) in cases {
        let (p, m) = refused(doc);
        if p != *path || !m.contains(fragment) {
            failures.push(format!(
                "{doc}\n  got {p}: {m}\n  want {path}: …{fragment}…"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn accepted_spellings_and_their_meaning() {
    use agentcell_policy::netspec::NetworkSpec;
    // No version: legacy; 0.8 without network: directional deny-all.
    let d = parse_with(
        r#"{"process":{"commandLine":"a"}}"#,
        &ParseOptions::executor(),
    )
    .unwrap();
    assert!(matches!(d.network, NetworkSpec::Legacy(_)));
    let d = parse_with(&one_shot(""), &ParseOptions::executor()).unwrap();
    assert!(matches!(d.network, NetworkSpec::Directional(_)));
    // Explicit null is absent at run time (the contracts refuse it).
    assert!(
        parse_with(
            &one_shot(r#","network":null,"filesystem":{"readonlyPaths":null}"#),
            &ParseOptions::executor()
        )
        .is_ok()
    );
    // Aliases.
    let d = parse_with(
        &one_shot(r#","containment":"appcontainer","appContainer":{}"#),
        &ParseOptions::executor(),
    )
    .unwrap();
    assert_eq!(d.containment.as_str(), "processcontainer");
    // The same path in several lists collapses to the strictest.
    let d = parse_with(&one_shot(r#","filesystem":{"readwritePaths":["/a","/b"],"readonlyPaths":["/a","/c"],"deniedPaths":["/b","/c"]}"#), &ParseOptions::executor()).unwrap();
    assert_eq!(d.filesystem.readwrite, Vec::<String>::new());
    assert_eq!(d.filesystem.readonly, vec!["/a".to_string()]);
    assert_eq!(
        d.filesystem.denied,
        vec!["/b".to_string(), "/c".to_string()]
    );
    assert_eq!(d.notes.len(), 3);
    // A proxy with localhost and url: localhost wins, as in MXC.
    let d = parse_with(r#"{"version":"0.6.0-alpha","containment":"bubblewrap","process":{"commandLine":"a"},"network":{"defaultPolicy":"allow","proxy":{"localhost":8080,"url":"http://x:1"}}}"#, &ParseOptions::executor()).unwrap();
    let NetworkSpec::Legacy(l) = d.network else {
        panic!()
    };
    assert_eq!(l.proxy.unwrap().url, "http://127.0.0.1:8080");
    // A SandboxPolicy converts as MXC's SDK does.
    let d = parse_with(r#"{"version":"0.7.0","network":{"allowOutbound":true,"allowedHosts":["10.0.0.0/8"]},"timeoutMs":5}"#, &ParseOptions::default()).unwrap();
    assert_eq!(d.kind, agentcell_policy::DocumentKind::SandboxPolicy);
    let n = d.config.network.unwrap();
    assert_eq!(
        n.default_policy,
        Some(agentcell_policy::model::DefaultPolicy::Allow)
    );
    assert_eq!(
        n.enforcement_mode,
        Some(agentcell_policy::model::EnforcementMode::Firewall)
    );
    assert_eq!(d.config.process.unwrap().timeout, Some(5));
}
