//! MXC's runtime rules, one case each: the document, the JSON path named, a message fragment.
//! MXC 1.0's (the default) first, then MXC 0.8's for retired documents (`--mxc-release 0.8`).

use agentcell_policy::{MxcRelease, ParseOptions, parse_with};

fn retired() -> ParseOptions {
    ParseOptions {
        release: MxcRelease::V0_8,
        ..ParseOptions::executor()
    }
}

fn refused_with(doc: &str, opts: &ParseOptions) -> (String, String) {
    let e = parse_with(doc, opts).expect_err(doc);
    let v = e.violations();
    (v[0].path.to_string(), v[0].message.clone())
}

fn refused(doc: &str) -> (String, String) {
    refused_with(doc, &retired())
}

fn v1(extra: &str) -> String {
    format!(r#"{{"version":"1.0.0","process":{{"commandLine":"true"}}{extra}}}"#)
}

#[test]
fn each_current_rule_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"}}"#,
            "version",
            "retired",
        ),
        (r#"{"process":{"commandLine":"a"}}"#, "version", "migrate"),
        (
            r#"{"version":"1.0","process":{"commandLine":"a"}}"#,
            "version",
            "not a registered",
        ),
        (
            r#"{"version":"1.2.0","process":{"commandLine":"a"}}"#,
            "version",
            "newer than supported",
        ),
        (
            r#"{"version":"1.0.0","containment":"process"}"#,
            "process",
            "missing required field",
        ),
        (
            r#"{"version":"1.0.0","process":{"commandLine":""}}"#,
            "process.commandLine",
            "empty",
        ),
        (&v1(r#","network":null"#), "network", "null is not allowed"),
        (
            &v1(r#","network":{"defaultPolicy":"block"}"#),
            "network.defaultPolicy",
            "unknown field",
        ),
        (
            &v1(r#","containment":"appcontainer""#),
            "containment",
            "is not one of",
        ),
        (
            &v1(r#","appContainer":{}"#),
            "appContainer",
            "unknown field",
        ),
        (
            &v1(r#","experimental":{}"#),
            "experimental",
            "unknown field",
        ),
        (
            &v1(r#","process":{"commandLine":"a","inheritDefaultEnv":1}"#),
            "process",
            "duplicate key",
        ),
        (
            r#"{"version":"1.0.0","process":{"commandLine":"a","inheritDefaultEnv":1}}"#,
            "process.inheritDefaultEnv",
            "expected a boolean",
        ),
        (
            &v1(r#","network":{"egress":{"allow":[{"to":[]}]}}"#),
            "network.egress.allow[0].to",
            "must not be empty",
        ),
        (
            &v1(r#","network":{"egress":{"allow":[{"ports":[{"port":0}]}]}}"#),
            "network.egress.allow[0].ports[0].port",
            "between 1 and 65535",
        ),
        (
            &v1(r#","network":{"egress":{"allow":[{"to":[{"cidr":"api.github.com"}]}]}}"#),
            "network.egress.allow[0].to[0].cidr",
            "not a valid network CIDR",
        ),
        (
            &v1(r#","network":{"egress":{"allow":[{"ports":[{"port":90,"endPort":80}]}]}}"#),
            "network.egress.allow[0].ports[0].endPort",
            "greater than or equal",
        ),
        (
            &v1(r#","network":{"egress":{"allow":[{"to":[{"cidr":"::/0"}]}]}}"#),
            "network.egress.allow[0].to[0].cidr",
            "IPv4-mapped",
        ),
        (
            &v1(
                r#","containment":"lxc","lxc":{"distribution":"a","release":"1"},"network":{"egress":{"deny":[{"to":[{"cidr":"2001:db8::/32"},{"cidr":"::/1"}]}]}}"#,
            ),
            "network.egress.deny[0].to[1].cidr",
            "LXC: ::/1 is an IPv6 block shorter than /96",
        ),
        (
            &v1(
                r#","network":{"egress":{"allow":[{"to":[{"cidr":"::ffff:10.0.0.0/104","except":["::ffff:11.0.0.0/104"]}]}]}}"#,
            ),
            "network.egress.allow[0].to[0].except[0]",
            "11.0.0.0/8 is not inside 10.0.0.0/8",
        ),
        (
            &v1(
                r#","network":{"egress":{"allow":[{"to":[{"cidr":"0.0.0.0/0","except":["1.0.0.1/32","2.0.0.1/32","3.0.0.1/32","4.0.0.1/32","5.0.0.1/32","6.0.0.1/32","7.0.0.1/32","8.0.0.1/32","9.0.0.1/32","10.0.0.1/32","11.0.0.1/32","12.0.0.1/32","13.0.0.1/32","14.0.0.1/32","15.0.0.1/32","16.0.0.1/32","17.0.0.1/32","18.0.0.1/32","19.0.0.1/32","20.0.0.1/32"]}]}]}}"#,
            ),
            "network.egress.allow[0].to[0]",
            "expands into more than 256 address blocks",
        ),
        (
            &v1(r#","network":{"ingress":{"default":"allow"}}"#),
            "network.ingress.default",
            "network.ingress.default='allow' is not supported",
        ),
        (
            &v1(r#","network":{"ingress":{"hostLoopback":"allow"}}"#),
            "network.ingress.hostLoopback",
            "network.ingress.hostLoopback='allow' is not supported",
        ),
        (
            &v1(r#","runtimeConfig":{"networkProxy":"http://10.0.0.1:3128"}"#),
            "runtimeConfig.networkProxy",
            "localhost",
        ),
        (
            &v1(
                r#","runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"},"network":{"egress":{"default":"allow"}}"#,
            ),
            "runtimeConfig.networkProxy",
            "default='deny'",
        ),
        (
            &v1(r#","runtimeConfig":{"networkProxy":"http://[::1]:3128"}"#),
            "runtimeConfig.networkProxy",
            "IPv6 loopback",
        ),
        (
            &v1(
                r#","containment":"lxc","lxc":{"distribution":"a","release":"1"},"runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"}"#,
            ),
            "runtimeConfig.networkProxy",
            "not supported by the lxc backend",
        ),
        (
            &v1(r#","lxc":{"distribution":"alpine","release":"3.23"}"#),
            "lxc",
            "another containment",
        ),
        (
            &v1(r#","containment":"lxc","lxc":{"distribution":"a","release":"1"},"wslc":{}"#),
            "wslc",
            "Multiple containment backends configured",
        ),
        (
            &v1(r#","containment":"lxc","lxc":{"distribution":"alpine"}"#),
            "lxc.release",
            "missing required field",
        ),
        (
            &v1(r#","processContainer":{"capabilities":["a,b"]}"#),
            "processContainer.capabilities[0]",
            "comma",
        ),
        (
            &v1(
                r#","containment":"wslc","wslc":{"portMappings":[{"windowsPort":80,"containerPort":80},{"windowsPort":80,"containerPort":81}]}"#,
            ),
            "wslc.portMappings[1].windowsPort",
            "duplicate windowsPort",
        ),
        (
            &v1(r#","filesystem":{"deniedPaths":["/a\"b"]}"#),
            "filesystem.deniedPaths[0]",
            "invalid character",
        ),
        (
            r#"{"version":"1.0.0","phase":"exec","sandboxId":"wslc:1","process":{"commandLine":"a"}}"#,
            "phase",
            "unsupported_phase",
        ),
        (
            r#"{"version":"1.0.0","filesystem":{},"network":{"allowOutbound":true}}"#,
            "network.allowOutbound",
            "legacy network fields",
        ),
    ];
    let mut failures = Vec::new();
    for (doc, path, fragment) in cases {
        let (p, m) = refused_with(doc, &ParseOptions::executor());
        if p != *path || !m.contains(fragment) {
            failures.push(format!(
                "{doc}\n  got {p}: {m}\n  want {path}: …{fragment}…"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn current_spellings_and_their_meaning() {
    use agentcell_policy::netspec::NetworkSpec;
    use agentcell_policy::plan::process::EnvSource;
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    let plan = |doc: &str| {
        let d = parse_with(doc, &ParseOptions::executor()).unwrap_or_else(|e| panic!("{doc}: {e}"));
        compile(&d, &Host::reference(), &CompileOptions::default()).unwrap()
    };
    let env = |doc: &str| {
        let p = plan(doc);
        let mut e = p.process.env.clone();
        e.sort();
        (p.process.env_source, e)
    };
    let kv = |pairs: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    // The four states of process.env.
    assert_eq!(
        env(r#"{"version":"1.0.0","process":{"commandLine":"a"}}"#),
        (
            EnvSource::DefaultBlock,
            kv(&[("PATH", path), ("TERM", "xterm-256color")])
        )
    );
    assert_eq!(
        env(r#"{"version":"1.0.0","process":{"commandLine":"a","cwd":"/tmp"}}"#),
        (
            EnvSource::DefaultBlock,
            kv(&[("PATH", path), ("TERM", "xterm-256color"), ("HOME", "/tmp")])
        )
    );
    assert_eq!(
        env(r#"{"version":"1.0.0","process":{"commandLine":"a","cwd":"/tmp","env":[]}}"#),
        (EnvSource::Exactly, vec![])
    );
    assert_eq!(
        env(
            r#"{"version":"1.0.0","process":{"commandLine":"a","env":["FOO=bar"],"inheritDefaultEnv":false}}"#
        ),
        (EnvSource::Exactly, kv(&[("FOO", "bar")]))
    );
    assert_eq!(
        env(
            r#"{"version":"1.0.0","process":{"commandLine":"a","cwd":"/tmp","env":["FOO=bar","TERM=vt100"],"inheritDefaultEnv":true}}"#
        ),
        (
            EnvSource::DefaultBlockAndEntries,
            kv(&[
                ("PATH", path),
                ("TERM", "vt100"),
                ("HOME", "/tmp"),
                ("FOO", "bar")
            ])
        )
    );
    // A retired document keeps MXC 0.8's meaning: nothing but its entries.
    let d = parse_with(
        r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"}}"#,
        &retired(),
    )
    .unwrap();
    let p = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap();
    assert_eq!(
        (p.process.env_source, p.process.env.len()),
        (EnvSource::Entries, 0)
    );
    // A container image's environment is the default (the shim).
    let d = parse_with(
        r#"{"version":"1.0.0","filesystem":{}}"#,
        &ParseOptions::default(),
    )
    .unwrap();
    let p = compile(
        &d,
        &Host::reference(),
        &CompileOptions {
            image_env: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (p.process.env_source, p.process.env.len()),
        (EnvSource::ImageAndEntries, 0)
    );
    // IPv4-mapped IPv6 is enforced as IPv4; no DNS exemption on LXC.
    let p = plan(
        r#"{"version":"1.0.0","containment":"lxc","lxc":{"distribution":"a","release":"1"},"process":{"commandLine":"a"},
        "network":{"egress":{"allow":[{"to":[{"cidr":"::ffff:198.18.0.0/112","except":["::ffff:198.18.1.0/120"]}]}]}}}"#,
    );
    assert!(!p.network.dns_exemption);
    assert!(p.network.egress.iter().all(
        |r| matches!(&r.dest, agentcell_policy::plan::net::Dest::Net(n) if n.addr().is_ipv4())
    ));
    assert!(p.network.egress.iter().all(|r| match &r.dest {
        agentcell_policy::plan::net::Dest::Net(n) =>
            !n.contains(&"198.18.1.7".parse::<std::net::IpAddr>().unwrap()),
        _ => false,
    }));
    // The directional shape is the only one; Windows/macOS-only fields parse and are n/a here.
    let d = parse_with(
        &v1(r#","fallback":{"allowDaclMutation":true},"telemetry":{"enabled":false},"containerId":"x","ui":{"disable":true}"#),
        &ParseOptions::executor(),
    )
    .unwrap();
    assert!(matches!(d.network, NetworkSpec::Directional(_)));
    let p = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap();
    for field in ["fallback", "telemetry", "containerId", "ui"] {
        let e = p
            .enforcement
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("{field}"));
        assert!(
            matches!(
                e.status,
                agentcell_policy::plan::Status::NotApplicable { .. }
            ),
            "{field}"
        );
    }
    // 0.9.0-alpha keeps the aliases, 1.1.0-alpha has no fallback.
    assert!(parse_with(r#"{"version":"0.9.0-alpha","containment":"appcontainer","process":{"commandLine":"a"},"appContainer":{}}"#, &ParseOptions::executor()).is_ok());
    assert!(
        parse_with(
            r#"{"version":"1.1.0-alpha","process":{"commandLine":"a"},"fallback":{}}"#,
            &ParseOptions::executor()
        )
        .is_err()
    );
    // Without a command (agentcell run, pods), process is optional.
    assert!(
        parse_with(
            r#"{"version":"1.0.0","containment":"bubblewrap"}"#,
            &ParseOptions::default()
        )
        .is_ok()
    );
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
            r#"{"version":"1.2.0","process":{"commandLine":"a"}}"#,
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
    // Fields from 0.9.0-alpha on are unknown to MXC 0.8's reader and its contracts.
    let inherit =
        r#"{"version":"0.8.0-alpha","process":{"commandLine":"a","inheritDefaultEnv":true}}"#;
    let (p, m) = refused(inherit);
    assert_eq!(p, "process.inheritDefaultEnv");
    assert!(m.contains("unknown field `inheritDefaultEnv`"), "{m}");
    let e = agentcell_policy::contract::check_with(inherit, MxcRelease::V0_8).unwrap_err();
    assert_eq!(
        e.violations()[0].path.to_string(),
        "process.inheritDefaultEnv"
    );
    assert!(
        agentcell_policy::contract::check_with(
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"a"},"telemetry":{}}"#,
            MxcRelease::V0_8
        )
        .is_err()
    );
    // No version: legacy; 0.8 without network: directional deny-all.
    let d = parse_with(r#"{"process":{"commandLine":"a"}}"#, &retired()).unwrap();
    assert!(matches!(d.network, NetworkSpec::Legacy(_)));
    let d = parse_with(&one_shot(""), &retired()).unwrap();
    assert!(matches!(d.network, NetworkSpec::Directional(_)));
    // Explicit null is absent at run time (the contracts refuse it).
    assert!(
        parse_with(
            &one_shot(r#","network":null,"filesystem":{"readonlyPaths":null}"#),
            &retired()
        )
        .is_ok()
    );
    // Aliases.
    let d = parse_with(
        &one_shot(r#","containment":"appcontainer","appContainer":{}"#),
        &retired(),
    )
    .unwrap();
    assert_eq!(d.containment.as_str(), "processcontainer");
    // The same path in several lists collapses to the strictest.
    let d = parse_with(&one_shot(r#","filesystem":{"readwritePaths":["/a","/b"],"readonlyPaths":["/a","/c"],"deniedPaths":["/b","/c"]}"#), &retired()).unwrap();
    assert_eq!(d.filesystem.readwrite, Vec::<String>::new());
    assert_eq!(d.filesystem.readonly, vec!["/a".to_string()]);
    assert_eq!(
        d.filesystem.denied,
        vec!["/b".to_string(), "/c".to_string()]
    );
    assert_eq!(d.notes.len(), 3);
    // A proxy with localhost and url: localhost wins, as in MXC.
    let d = parse_with(r#"{"version":"0.6.0-alpha","containment":"bubblewrap","process":{"commandLine":"a"},"network":{"defaultPolicy":"allow","proxy":{"localhost":8080,"url":"http://x:1"}}}"#, &retired()).unwrap();
    let NetworkSpec::Legacy(l) = d.network else {
        panic!()
    };
    assert_eq!(l.proxy.unwrap().url, "http://127.0.0.1:8080");
    // A SandboxPolicy converts as MXC's SDK does.
    let d = parse_with(r#"{"version":"0.7.0","network":{"allowOutbound":true,"allowedHosts":["10.0.0.0/8"]},"timeoutMs":5}"#, &ParseOptions { release: MxcRelease::V0_8, ..ParseOptions::default() }).unwrap();
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
