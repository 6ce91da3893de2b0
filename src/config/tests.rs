use std::time::Duration;

use super::*;

const ROUTES: &[&str] = &["/healthz", "/v1/docs/{collection}/{key}"];

fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
    let argv = std::iter::once("serve").chain(args.iter().copied());
    parse_serve(argv, &[], ROUTES).map(|(config, _)| config)
}

fn error(args: &[&str]) -> String {
    match resolve(args) {
        Ok(config) => panic!("{args:?} resolved: {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn defaults() {
    let config = resolve(&[]).unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.cpus, cpu::allowed_cpus());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.idle_timeout, Duration::from_secs(60));
    assert_eq!(config.store, StoreOptions::default());
    assert_eq!(config.rate_limit, None);
    assert_eq!(config.statics, None);
    assert_eq!(config.queues, None);
}

#[test]
fn declared_defaults_are_the_option_structs_defaults() {
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    let config = resolve(&["--static-dir", dir, "--data-dir", dir]).unwrap();
    assert_eq!(
        config.statics,
        Some(StaticOptions::new(PathBuf::from(dir))),
        "statics"
    );
    assert_eq!(
        config.queues,
        Some(QueueOptions::new(PathBuf::from(dir))),
        "queues"
    );
    let config = resolve(&["--rate-limit", "10/s"]).unwrap();
    let rules = config.rate_limit.unwrap();
    assert_eq!(rules.max_keys, 1_000_000);
    assert_eq!(
        rules.policies[0].burst, 10,
        "the burst defaults to the rate's N"
    );
}

#[test]
fn flags_validate_and_name_the_field() {
    assert!(error(&["--cores", "0"]).starts_with("invalid value for `cores`"));
    assert!(error(&["--cores", "9999"]).contains("`cores`"));
    assert!(error(&["--listen", "nope"]).starts_with("invalid value for `listen`"));
    assert!(error(&["--cpus", "5000"]).starts_with("invalid value for `cpus`"));
    let idle = error(&["--idle-timeout", "soon"]);
    assert!(idle.contains("`idle_timeout`"), "{idle}");
    assert!(idle.contains("(from --idle-timeout)"), "{idle}");
    assert!(error(&["--max-body-bytes", "1TB"]).contains("`max_body_bytes`"));
    assert!(error(&["--max-headers", "101"]).contains("`max_headers`"));
    assert!(error(&["--burst", "5"]).contains("a burst needs a rate"));
    assert!(error(&["--shards", "4", "--shard-ranges", "A-M,N-Z"]).contains("not both"));
    assert!(matches!(
        resolve(&["--no-such-flag"]),
        Err(ConfigError::Cli(_))
    ));
}

#[test]
fn file_is_overridden_by_flags() {
    let dir = std::env::temp_dir().join(format!("percore-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("percore.toml");
    let file = path.to_str().unwrap();
    let dir_arg = dir.to_str().unwrap();
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\ncores = 1\nmax_body_bytes = \"4KiB\"\ncpus = [0]\n",
    )
    .unwrap();
    let config = resolve(&["--config", file]).unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.limits.max_body_bytes, 4096);
    assert_eq!(config.cpus, vec![0]);
    let config = resolve(&["--config", file, "--listen", "127.0.0.1:9001"]).unwrap();
    assert_eq!(config.listen.port(), 9001);

    std::fs::write(&path, "colour = 3\n").unwrap();
    let message = error(&["--config", file]);
    assert!(message.contains("unknown key `colour`"), "{message}");
    std::fs::write(&path, "[rate_limit]\nrate = \"5/s\"\nspeed = 1\n").unwrap();
    let message = error(&["--config", file]);
    assert!(
        message.contains("unknown key `rate_limit.speed`"),
        "{message}"
    );
    std::fs::write(&path, "cpus = [\"0\"]\ncores = 1\n").unwrap();
    assert_eq!(
        resolve(&["--config", file]).unwrap().cpus,
        vec![0],
        "arrays of strings"
    );
    std::fs::write(&path, "static_dir = 3\n").unwrap();
    assert!(error(&["--config", file]).contains("`static_dir`"));
    std::fs::write(&path, "").unwrap();
    let message = error(&[
        "--config",
        file,
        "--static-dir",
        dir_arg,
        "--static-prefix",
        "/",
    ]);
    assert!(
        message.contains("would hide the route /healthz"),
        "{message}"
    );
    let both = resolve(&[
        "--config",
        file,
        "--data-dir",
        dir_arg,
        "--queue",
        "nats://127.0.0.1:4222",
    ])
    .unwrap();
    assert_eq!(
        both.store.dir,
        Some(dir.clone()),
        "documents stay in --data-dir"
    );
    assert!(
        both.queues.as_ref().unwrap().nats.is_some(),
        "jobs go to NATS"
    );
    std::fs::write(&path, "cores = true\n").unwrap();
    let message = error(&["--config", file]);
    assert!(message.contains("`cores`"), "{message}");
    assert!(message.contains("`cores` in "), "names the file: {message}");

    std::fs::write(
        &path,
        "[rate_limit]\nrate = \"10/s\"\nburst = 3\nshadow = true\ntrusted_proxies = [\"10.0.0.0/8\"]\nmax_keys = 7\nexempt = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let rules = resolve(&["--config", file]).unwrap().rate_limit.unwrap();
    assert_eq!(rules.policies[0].burst, 3);
    assert!(rules.shadow);
    assert_eq!(rules.trusted_proxies.len(), 1);
    assert_eq!(rules.exempt.len(), 1);
    assert_eq!(rules.max_keys, 7);
    let rules = resolve(&["--config", file, "--burst", "4"])
        .unwrap()
        .rate_limit
        .unwrap();
    assert_eq!(rules.policies[0].burst, 4, "the flag beats the table");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_declaration_is_accepted_and_documented() {
    let registry = registry(&[]).unwrap();
    assert_eq!(registry.options().len(), builtin().len());
    for opt in builtin() {
        let spec = opt.spec();
        assert!(
            options::SECTIONS.contains(&spec.section()),
            "{}: section {}",
            spec.name(),
            spec.section()
        );
        assert!(!spec.help().is_empty(), "{}", spec.name());
        assert!(
            spec.help().ends_with('.') || spec.help().ends_with(')'),
            "{}: help is a sentence",
            spec.name()
        );
        assert!(!spec.help().contains("[default"), "{}", spec.name());
    }
}

#[test]
fn clashes_with_built_ins_are_refused() {
    static AGAIN: Opt<String, Optional> = Opt::new("listen", "ADDR", "Again.", parse::text);
    static TABLE: Opt<String, Optional> =
        Opt::new("limits", "X", "A key in a table.", parse::text).toml_key("rate_limit");
    static ROUTES_KEY: Opt<String, Optional> =
        Opt::new("routes", "X", "Routes.", parse::text).toml_key("rate_limit.routes");
    static CASE: Opt<String, Optional> = Opt::new("Greeting", "X", "Case.", parse::text);
    static HELP: Opt<String, Optional> = Opt::new("help", "X", "Help.", parse::text);
    static BAD_DEFAULT: Opt<Duration> =
        Opt::new("nap", "D", "Nap.", parse::duration).default("forever");
    for (opt, expected) in [
        (&AGAIN as &dyn AnyOpt, "already declared"),
        (&TABLE, "clashes with `rate_limit.rate`"),
        (&ROUTES_KEY, "clashes with the file's `rate_limit.routes`"),
        (&CASE, "snake_case"),
        (&HELP, "taken"),
        (&BAD_DEFAULT, "default does not parse"),
    ] {
        let message = match serve_command(&[opt]) {
            Ok(_) => panic!("{} was accepted", opt.spec().name()),
            Err(error) => error.to_string(),
        };
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn authentication_and_secrets_from_files() {
    let dir = std::env::temp_dir().join(format!("percore-config-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret = secret.to_str().unwrap();
    let data = dir.to_str().unwrap();
    let config = resolve(&["--data-dir", data, "--webhook-secret-file", secret]).unwrap();
    assert_eq!(
        config.queues.unwrap().webhook_secret.as_deref(),
        Some("s3cret"),
        "the file's newline is not part of the secret"
    );
    assert!(error(&[
        "--data-dir",
        data,
        "--webhook-secret-file",
        secret,
        "--webhook-secret",
        "x"
    ])
    .contains("not both"));
    assert!(error(&["--webhook-secret-file", "/nonexistent/secret"]).contains("cannot read"));
    // Rules and a principal key need credentials to check.
    assert!(error(&["--rate-limit-key", "principal"]).contains("needs authentication"));
    assert_eq!(resolve(&[]).unwrap().auth, None);
    let config = resolve(&["--jwt-hs256-secret-file", secret, "--jwt-issuer", "me"]).unwrap();
    let jwt = config.auth.unwrap().jwt.unwrap();
    assert_eq!(jwt.hs256_secret.as_deref(), Some(&b"s3cret"[..]));
    assert_eq!(jwt.issuer.as_deref(), Some("me"));
    assert_eq!(jwt.scope_claim, "scope");
    let file = dir.join("rules.toml");
    std::fs::write(
        &file,
        "[auth]\nkeys = \"/k.toml\"\n[[auth.rules]]\nmethod = \"get\"\npath = \"/v1/private/*\"\nrequire = \"read\"\n",
    )
    .unwrap();
    let config = resolve(&["--config", file.to_str().unwrap()]).unwrap();
    let auth = config.auth.unwrap();
    assert_eq!(auth.keys_file, Some(PathBuf::from("/k.toml")));
    assert_eq!(auth.rules.len(), 1);
    assert_eq!(auth.rules[0].method.as_deref(), Some("GET"));
    assert_eq!(auth.rules[0].require, "read");
    std::fs::write(
        &file,
        "[[auth.rules]]\npath = \"nope\"\nrequire = \"read\"\n",
    )
    .unwrap();
    assert!(
        error(&["--config", file.to_str().unwrap(), "--auth-keys", "/k"])
            .contains("must start with /")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn drain_delay_and_handover() {
    let config = resolve(&[]).unwrap();
    assert_eq!(
        (config.drain_delay, config.handover),
        (Duration::ZERO, None)
    );
    let config = resolve(&["--drain-delay", "5s", "--handover", "/run/p.sock"]).unwrap();
    assert_eq!(config.drain_delay, Duration::from_secs(5));
    assert_eq!(config.handover, Some(PathBuf::from("/run/p.sock")));
    assert!(error(&["--drain-delay", "2h"]).contains("`drain_delay`"));
    assert!(error(&["--drain-delay", "soon"]).contains("`drain_delay`"));
    let long = format!("/{}", "x".repeat(120));
    assert!(error(&["--handover", &long]).contains("`handover`"));
    let refused = error(&["--handover", "/run/p.sock", "--data-dir", "/tmp/d"]);
    assert!(
        refused.contains("`handover`") && refused.contains("/tmp/d"),
        "{refused}"
    );
}
