//! The option declarations are the one source: the README's option tables and `serve --help` agree with them, and an application's own options work like percore's.
//!
//! `PERCORE_BLESS=1 cargo test --test options` rewrites the README's option tables from the declarations.

use std::path::Path;
use std::time::Duration;

use percore::config::options::SECTIONS;
use percore::config::{self, parse, AnyOpt, ConfigError, Opt, Optional, Source};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

fn begin(section: &str) -> String {
    format!("<!-- options: {section} (generated from src/config/options.rs; tests/options.rs checks it) -->\n")
}
const END: &str = "<!-- /options -->";

/// The README with every section's table regenerated; `Err` names a section without its markers.
fn regenerated(readme: &str) -> Result<String, String> {
    let mut out = readme.to_owned();
    for section in SECTIONS {
        let begin = begin(section);
        let start = out
            .find(&begin)
            .ok_or_else(|| format!("README.md has no `{}` line", begin.trim()))?
            + begin.len();
        let end = start
            + out[start..]
                .find(END)
                .ok_or_else(|| format!("README.md: `{}` is not closed by {END}", begin.trim()))?;
        out.replace_range(start..end, &config::markdown(section, &[]));
    }
    Ok(out)
}

#[test]
fn the_readme_tables_are_the_declarations() {
    let readme = std::fs::read_to_string(README).unwrap();
    let expected = regenerated(&readme).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("PERCORE_BLESS").is_some() {
        std::fs::write(README, &expected).unwrap();
        return;
    }
    for opt in config::builtin() {
        let spec = opt.spec();
        for text in [spec.flag(), spec.env(), format!("`{}`", spec.toml_key())] {
            assert!(
                readme.contains(&text),
                "README.md lacks {text} of `{}`",
                spec.name()
            );
        }
        if let Some(default) = spec.shown_default() {
            assert!(
                readme.contains(default),
                "README.md lacks the default {default} of `{}`",
                spec.name()
            );
        }
    }
    // Nothing stale: every row of an option table (a flag and a variable) is a declared option.
    let declared: Vec<String> = config::builtin().iter().map(|o| o.spec().flag()).collect();
    for row in readme
        .lines()
        .filter(|l| l.starts_with("| `--") && l.contains("`PERCORE_"))
    {
        let flag = row[3..].split(['`', ' ']).next().unwrap_or_default();
        assert!(
            declared.iter().any(|d| d == flag),
            "README.md documents {flag}, which is not a declared option: {row}"
        );
    }
    assert!(
        readme == expected,
        "README.md's option tables differ from the declarations; run `PERCORE_BLESS=1 cargo test --test options` and review the diff"
    );
}

#[test]
fn help_shows_every_declaration() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for opt in config::builtin() {
        let spec = opt.spec();
        let mut expected = vec![spec.flag(), spec.env(), spec.help().to_owned()];
        if let Some(default) = spec.shown_default() {
            expected.push(format!("[default: {default}]"));
        }
        if !spec.value_name().is_empty() {
            expected.push(format!("{} <{}>", spec.flag(), spec.value_name()));
        }
        for text in expected {
            assert!(
                help.contains(&text),
                "serve --help lacks {text:?} of `{}`:\n{help}",
                spec.name()
            );
        }
    }
    for section in SECTIONS {
        assert!(
            help.contains(&format!("{section}:")),
            "no heading {section}"
        );
    }
}

/// An application's own options: declared like percore's, read back typed.
static GREETING: Opt<String> = Opt::new("greeting", "TEXT", "What / answers.", parse::text)
    .default("hello")
    .section("Greeter");
static GREETING_DELAY: Opt<Duration, Optional> = Opt::new(
    "greeting_delay",
    "DURATION",
    "Wait this long before greeting.",
    parse::duration,
)
.unset("no wait")
.section("Greeter");
static EXTRA: &[&dyn AnyOpt] = &[&GREETING, &GREETING_DELAY];

#[test]
fn users_options_have_a_flag_a_variable_a_key_a_default_and_validation() {
    let dir = std::env::temp_dir().join(format!("percore-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.toml");
    let serve = |args: &[&str]| {
        let argv = std::iter::once("app").chain(args.iter().copied());
        config::parse_serve(argv, EXTRA, &[])
    };

    let (config, values) = serve(&[]).unwrap();
    assert_eq!(
        config.listen.port(),
        8080,
        "percore's options still resolve"
    );
    assert_eq!(values.get(&GREETING), "hello", "the default");
    assert_eq!(values.source(&GREETING), Some(Source::Default));
    assert_eq!(values.get(&GREETING_DELAY), None, "unset, no default");

    let (_, values) = serve(&["--greeting", "hi", "--greeting-delay", "2s"]).unwrap();
    assert_eq!(values.get(&GREETING), "hi", "the flag");
    assert_eq!(values.get(&GREETING_DELAY), Some(Duration::from_secs(2)));
    assert_eq!(values.source(&GREETING), Some(Source::Flag));

    std::fs::write(&file, "greeting = \"from the file\"\ncores = 1\n").unwrap();
    let path = file.to_str().unwrap();
    let (config, values) = serve(&["--config", path]).unwrap();
    assert_eq!(values.get(&GREETING), "from the file", "the TOML key");
    assert_eq!(config.cores(), 1);

    // The only test in this binary that touches the environment.
    std::env::set_var("PERCORE_GREETING", "from the environment");
    let (_, values) = serve(&["--config", path]).unwrap();
    assert_eq!(
        values.get(&GREETING),
        "from the environment",
        "the variable beats the file"
    );
    let (_, values) = serve(&["--config", path, "--greeting", "flag"]).unwrap();
    assert_eq!(values.get(&GREETING), "flag", "the flag beats the variable");
    std::env::remove_var("PERCORE_GREETING");

    let error = serve(&["--greeting-delay", "soon"]).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                field: "greeting_delay",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("(from --greeting-delay)"),
        "{error}"
    );
    std::fs::write(&file, "greeting_delay = \"soon\"\n").unwrap();
    let error = serve(&["--config", path]).unwrap_err().to_string();
    assert!(error.contains("`greeting_delay` in "), "{error}");

    let help = config::serve_command(EXTRA)
        .unwrap()
        .render_help()
        .to_string();
    for text in [
        "Greeter:",
        "--greeting <TEXT>",
        "PERCORE_GREETING",
        "[default: hello]",
        "[default: no wait]",
    ] {
        assert!(help.contains(text), "--help lacks {text}:\n{help}");
    }
    assert!(config::markdown("Greeter", EXTRA)
        .contains("| `--greeting TEXT` | `PERCORE_GREETING` | `greeting` | `hello` |"));

    static CLASH: Opt<String, Optional> = Opt::new("max_body_bytes", "N", "Mine.", parse::text);
    let error = config::parse_serve(["app"], &[&CLASH], &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`max_body_bytes` cannot be declared") && error.contains("--max-body-bytes"),
        "{error}"
    );
    std::fs::remove_dir_all(Path::new(&dir)).unwrap();
}
