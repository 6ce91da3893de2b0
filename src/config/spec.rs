//! Declaring an option once: an [`Opt`] gives its flag, `PERCORE_*` variable, TOML key, default, help and parser.
//!
//! From the name `idle_timeout` come the flag `--idle-timeout`, the
//! variable `PERCORE_IDLE_TIMEOUT` and the TOML key `idle_timeout` (a
//! declaration may put the key in a table instead, `rate_limit.rate`). The
//! default is declared in its text form, the one `--help` shows, and goes
//! through the same parser as a value the user gives. [`AnyOpt`] is the
//! type-erased view the command line, the docs and [`Values`] work from, so
//! an application's own options plug into the same machinery as percore's.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::ConfigError;

/// How an option is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--name VALUE`.
    Value,
    /// `--name A --name B` or `--name A,B` (a TOML array in the file); the parser sees `A,B`.
    List,
    /// `--name` alone; the variable and the file say true or false.
    Switch,
}

/// What an option declares, whatever its type: what the command line, the docs and the resolver read.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    name: &'static str,
    toml_key: Option<&'static str>,
    value_name: &'static str,
    help: &'static str,
    default: Option<&'static str>,
    unset: Option<&'static str>,
    section: &'static str,
    kind: Kind,
    secret: bool,
}

impl Spec {
    /// The snake_case name, e.g. `idle_timeout`; errors name the option by it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The flag without its dashes, e.g. `idle-timeout`.
    pub fn long(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The flag, e.g. `--idle-timeout`.
    pub fn flag(&self) -> String {
        format!("--{}", self.long())
    }

    /// The environment variable, e.g. `PERCORE_IDLE_TIMEOUT`.
    pub fn env(&self) -> String {
        format!("PERCORE_{}", self.name.to_ascii_uppercase())
    }

    /// The key in the TOML file; dotted when it lives in a table, e.g. `rate_limit.rate`.
    pub fn toml_key(&self) -> &'static str {
        self.toml_key.unwrap_or(self.name)
    }

    /// The placeholder for the value in `--help`, e.g. `DURATION`.
    pub fn value_name(&self) -> &'static str {
        self.value_name
    }

    /// One or two sentences for `--help` and the README.
    pub fn help(&self) -> &'static str {
        self.help
    }

    /// The default in its text form, parsed like a value the user gives.
    pub fn default(&self) -> Option<&'static str> {
        self.default
    }

    /// What happens when an option without a default is not set, e.g. `off`.
    pub fn unset(&self) -> Option<&'static str> {
        self.unset
    }

    /// The group the option is listed in, in `--help` and in the README.
    pub fn section(&self) -> &'static str {
        self.section
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the value is kept out of `--help` (an environment variable's value is not shown).
    pub fn secret(&self) -> bool {
        self.secret
    }

    /// The default as shown to people: the text default, else what unset means.
    pub fn shown_default(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Switch => None,
            _ => self.default.or(self.unset),
        }
    }

    /// The clap argument of this option: flag, variable, value name, help with the default.
    pub fn arg(&self) -> Arg {
        let help = match self.shown_default() {
            Some(default) => format!("{} [default: {default}]", self.help),
            None => self.help.to_owned(),
        };
        let arg = Arg::new(self.name)
            .long(self.long())
            .env(self.env())
            .help(help)
            .help_heading(self.section)
            .hide_env_values(self.secret);
        match self.kind {
            Kind::Value => arg.value_name(self.value_name).action(ArgAction::Set),
            Kind::List => arg
                .value_name(self.value_name)
                .action(ArgAction::Append)
                .value_delimiter(','),
            Kind::Switch => arg
                .action(ArgAction::SetTrue)
                .value_parser(BoolishValueParser::new()),
        }
    }
}

/// Marks an [`Opt`] with a default: [`Values::get`] gives a `T`.
#[derive(Debug, Clone, Copy)]
pub struct Defaulted;

/// Marks an [`Opt`] without a default: [`Values::get`] gives an `Option<T>`.
#[derive(Debug, Clone, Copy)]
pub struct Optional;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Defaulted {}
    impl Sealed for super::Optional {}
}

/// Whether an option has a default, which decides what [`Values::get`] returns.
pub trait Presence: sealed::Sealed + 'static {
    /// `T` with a default, `Option<T>` without.
    type Out<T>;
    #[doc(hidden)]
    fn out<T>(value: Option<T>, spec: &Spec) -> Self::Out<T>;
}

impl Presence for Optional {
    type Out<T> = Option<T>;
    fn out<T>(value: Option<T>, _: &Spec) -> Option<T> {
        value
    }
}

impl Presence for Defaulted {
    type Out<T> = T;
    fn out<T>(value: Option<T>, spec: &Spec) -> T {
        // Only a declaration's own default can be missing here, and every
        // declaration passed to the command line is checked to parse.
        value.unwrap_or_else(|| {
            panic!(
                "the declared default of option `{}` does not parse",
                spec.name
            )
        })
    }
}

/// One option, declared once, e.g.
/// `pub const IDLE_TIMEOUT: Opt<Duration> = Opt::new("idle_timeout", "DURATION", "Close an idle connection.", parse::duration).default("60s");`
pub struct Opt<T, P = Defaulted> {
    spec: Spec,
    parse: fn(&str) -> Result<T, String>,
    presence: PhantomData<fn() -> P>,
}

impl<T, P> Clone for Opt<T, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, P> Copy for Opt<T, P> {}

impl<T, P> fmt::Debug for Opt<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Opt").field(&self.spec).finish()
    }
}

impl<T> Opt<T, Optional> {
    /// An option without a default, in the section `Application`; `parse` turns its text into a value or says what is wrong.
    pub const fn new(
        name: &'static str,
        value_name: &'static str,
        help: &'static str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Self {
        Self {
            spec: Spec {
                name,
                toml_key: None,
                value_name,
                help,
                default: None,
                unset: None,
                section: "Application",
                kind: Kind::Value,
                secret: false,
            },
            parse,
            presence: PhantomData,
        }
    }

    /// The default, in the text form `--help` shows; it goes through `parse`.
    pub const fn default(self, text: &'static str) -> Opt<T, Defaulted> {
        Opt {
            spec: Spec {
                default: Some(text),
                ..self.spec
            },
            parse: self.parse,
            presence: PhantomData,
        }
    }

    /// What not setting the option means, for `--help` and the docs, e.g. `off`.
    pub const fn unset(self, meaning: &'static str) -> Self {
        Self {
            spec: Spec {
                unset: Some(meaning),
                ..self.spec
            },
            ..self
        }
    }
}

impl Opt<bool, Defaulted> {
    /// A flag without a value, false unless given; the variable and the file say `true` or `false`.
    pub const fn switch(name: &'static str, help: &'static str) -> Self {
        Opt::new(name, "", help, super::parse::boolean)
            .kind(Kind::Switch)
            .default("false")
    }
}

impl<T, P> Opt<T, P> {
    /// The group to list the option in.
    pub const fn section(self, section: &'static str) -> Self {
        Self {
            spec: Spec {
                section,
                ..self.spec
            },
            ..self
        }
    }

    /// The key in the TOML file when it is not the name, e.g. `rate_limit.rate` for a key of the `[rate_limit]` table.
    pub const fn toml_key(self, key: &'static str) -> Self {
        Self {
            spec: Spec {
                toml_key: Some(key),
                ..self.spec
            },
            ..self
        }
    }

    /// Repeatable, or comma-separated; `parse` receives the items joined by commas.
    pub const fn list(self) -> Self {
        self.kind(Kind::List)
    }

    const fn kind(self, kind: Kind) -> Self {
        Self {
            spec: Spec { kind, ..self.spec },
            ..self
        }
    }

    /// Keeps the variable's value out of `--help` and [`Values`]' debug output.
    pub const fn secret(self) -> Self {
        Self {
            spec: Spec {
                secret: true,
                ..self.spec
            },
            ..self
        }
    }

    pub const fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Parses one text form of the value.
    pub fn parse(&self, text: &str) -> Result<T, String> {
        (self.parse)(text)
    }
}

/// Any option, whatever its type: what the command line, the docs and [`Values`] iterate over.
pub trait AnyOpt: Sync + 'static {
    fn spec(&self) -> &Spec;
    /// Parses a text form into the option's value, type-erased.
    fn parse_any(&self, text: &str) -> Result<Arc<dyn Any + Send + Sync>, String>;
}

impl<T: Send + Sync + 'static, P: 'static> AnyOpt for Opt<T, P> {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn parse_any(&self, text: &str) -> Result<Arc<dyn Any + Send + Sync>, String> {
        Ok(Arc::new((self.parse)(text)?))
    }
}

impl fmt::Debug for dyn AnyOpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec().fmt(f)
    }
}

/// Where an option's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

#[derive(Clone)]
struct Entry {
    spec: Spec,
    text: String,
    source: Source,
    value: Arc<dyn Any + Send + Sync>,
}

/// Every declared option's value after resolution, read back typed with [`Values::get`].
#[derive(Clone, Default)]
pub struct Values {
    entries: HashMap<&'static str, Entry>,
}

impl Values {
    /// The option's value: a `T` when it has a default, else `Some` only if it was set.
    ///
    /// An option that was not among the declarations resolved reads as its default.
    ///
    /// # Panics
    /// Only if the option's own declared default does not parse, a bug in the
    /// declaration that [`Registry::new`] (so every command line) refuses first.
    pub fn get<T: Clone + 'static, P: Presence>(&self, opt: &Opt<T, P>) -> P::Out<T> {
        let value = self
            .entries
            .get(opt.spec.name)
            .and_then(|entry| entry.value.downcast_ref::<T>())
            .cloned()
            .or_else(|| opt.spec.default.and_then(|text| (opt.parse)(text).ok()));
        P::out(value, &opt.spec)
    }

    /// Where the value came from; `None` when unset without a default.
    pub fn source(&self, opt: &dyn AnyOpt) -> Option<Source> {
        self.entries.get(opt.spec().name).map(|entry| entry.source)
    }

    /// The text form the value was parsed from; `None` when unset without a default.
    pub fn text(&self, opt: &dyn AnyOpt) -> Option<&str> {
        self.entries
            .get(opt.spec().name)
            .map(|entry| entry.text.as_str())
    }

    /// Whether the user set it, by flag, variable or file (not by default).
    pub fn is_set(&self, opt: &dyn AnyOpt) -> bool {
        self.source(opt)
            .is_some_and(|source| source != Source::Default)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.entries.keys().collect();
        names.sort();
        let mut map = f.debug_map();
        for name in names {
            let entry = &self.entries[name];
            let text = if entry.spec.secret {
                "***"
            } else {
                entry.text.as_str()
            };
            map.entry(name, &format_args!("{text:?} ({:?})", entry.source));
        }
        map.finish()
    }
}

/// The options of one command line: percore's and the application's, checked for clashes.
#[derive(Debug, Clone)]
pub struct Registry {
    opts: Vec<&'static dyn AnyOpt>,
}

/// Names a command line already uses for something other than an option.
const RESERVED: &[&str] = &["config", "help", "version"];

fn is_snake_case(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('_')
        && !name.contains("__")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Registry {
    /// `builtin` then `extra`; refuses bad names, clashes of name or TOML key, and defaults that do not parse.
    pub fn new(
        builtin: &[&'static dyn AnyOpt],
        extra: &[&'static dyn AnyOpt],
        reserved_keys: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut opts: Vec<&'static dyn AnyOpt> = Vec::with_capacity(builtin.len() + extra.len());
        for &opt in builtin.iter().chain(extra) {
            let spec = opt.spec();
            let refuse = |message: String| ConfigError::Declaration {
                name: spec.name.to_owned(),
                message,
            };
            if !is_snake_case(spec.name) {
                return Err(refuse(
                    "a name is snake_case: lowercase letters, digits and single `_`".into(),
                ));
            }
            if RESERVED.contains(&spec.name) {
                return Err(refuse(format!(
                    "{} is taken by the command line",
                    spec.flag()
                )));
            }
            if !spec.toml_key().split('.').all(is_snake_case) {
                return Err(refuse(format!(
                    "TOML key `{}` is not snake_case words joined by dots",
                    spec.toml_key()
                )));
            }
            let key = spec.toml_key();
            let overlaps = |other: &str| {
                key == other
                    || other.starts_with(&format!("{key}."))
                    || key.starts_with(&format!("{other}."))
            };
            for earlier in &opts {
                let theirs = earlier.spec();
                if theirs.name == spec.name {
                    return Err(refuse(format!(
                        "{} and {} are already declared by another option",
                        spec.flag(),
                        spec.env()
                    )));
                }
                if overlaps(theirs.toml_key()) {
                    return Err(refuse(format!(
                        "TOML key `{key}` clashes with `{}` of option `{}`",
                        theirs.toml_key(),
                        theirs.name
                    )));
                }
            }
            if let Some(taken) = reserved_keys.iter().find(|k| overlaps(k)) {
                return Err(refuse(format!(
                    "TOML key `{key}` clashes with the file's `{taken}`"
                )));
            }
            if let Some(default) = spec.default {
                opt.parse_any(default)
                    .map_err(|m| refuse(format!("its default does not parse: {m}")))?;
            }
            opts.push(opt);
        }
        Ok(Self { opts })
    }

    pub fn options(&self) -> &[&'static dyn AnyOpt] {
        &self.opts
    }

    /// One clap argument per option.
    pub fn args(&self) -> impl Iterator<Item = Arg> + '_ {
        self.opts.iter().map(|opt| opt.spec().arg())
    }

    /// Every TOML key, e.g. for refusing unknown keys of a file.
    pub fn toml_keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.opts.iter().map(|opt| opt.spec().toml_key())
    }

    /// Each option's value: its flag, else its variable, else the file, else its default; parsed and validated.
    pub fn resolve(
        &self,
        matches: &ArgMatches,
        file: Option<(&Path, &toml::Table)>,
    ) -> Result<Values, ConfigError> {
        let mut values = Values::default();
        for &opt in &self.opts {
            let spec = opt.spec();
            let given = match from_matches(spec, matches) {
                Some(given) => Some(given),
                None => match file {
                    Some((_, table)) => file_text(spec, table)?.map(|text| (text, Source::File)),
                    None => None,
                },
            };
            let (text, source) = match (given, spec.default) {
                (Some(given), _) => given,
                (None, Some(default)) => (default.to_owned(), Source::Default),
                (None, None) => continue,
            };
            let value = opt.parse_any(&text).map_err(|message| {
                let from = match source {
                    Source::Flag => spec.flag(),
                    Source::Env => spec.env(),
                    Source::File => match file {
                        Some((path, _)) => format!("`{}` in {}", spec.toml_key(), path.display()),
                        None => format!("`{}` in the file", spec.toml_key()),
                    },
                    Source::Default => "the declared default".into(),
                };
                ConfigError::Invalid {
                    field: spec.name,
                    message: format!("{message} (from {from})"),
                }
            })?;
            values.entries.insert(
                spec.name,
                Entry {
                    spec: *spec,
                    text,
                    source,
                    value,
                },
            );
        }
        Ok(values)
    }
}

/// The option's text from the command line or its variable, if either set it.
fn from_matches(spec: &Spec, matches: &ArgMatches) -> Option<(String, Source)> {
    let source = match matches.value_source(spec.name)? {
        ValueSource::CommandLine => Source::Flag,
        ValueSource::EnvVariable => Source::Env,
        _ => return None,
    };
    let text = match spec.kind {
        Kind::Switch => matches.get_one::<bool>(spec.name)?.to_string(),
        Kind::Value => matches.get_one::<String>(spec.name)?.clone(),
        Kind::List => matches
            .get_many::<String>(spec.name)?
            .cloned()
            .collect::<Vec<_>>()
            .join(","),
    };
    Some((text, source))
}

/// The option's text in the file, if it has the key: strings as they are, numbers and booleans written out, arrays joined by commas.
fn file_text(spec: &Spec, table: &toml::Table) -> Result<Option<String>, ConfigError> {
    let mut path = spec.toml_key().split('.');
    let Some(first) = path.next() else {
        return Ok(None);
    };
    let mut value = table.get(first);
    for key in path {
        value = value.and_then(|v| v.as_table()).and_then(|t| t.get(key));
    }
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        None => return Ok(None),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        Some(other) => scalar(other),
    };
    match text {
        Some(text) => Ok(Some(text)),
        None => Err(ConfigError::Invalid {
            field: spec.name,
            message: format!(
                "`{}` in the file must be a string, a number, a boolean or an array of them",
                spec.toml_key()
            ),
        }),
    }
}

/// The first key of `table` that is neither one of `known` (dotted paths) nor a table on the way to one.
pub fn unknown_key(table: &toml::Table, prefix: &str, known: &[&str]) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if known.contains(&path.as_str()) {
            continue;
        }
        let inside = format!("{path}.");
        match value {
            toml::Value::Table(inner) if known.iter().any(|k| k.starts_with(&inside)) => {
                if let Some(unknown) = unknown_key(inner, &path, known) {
                    return Some(unknown);
                }
            }
            _ => return Some(path),
        }
    }
    None
}

/// The README table of one section's options: flag, variable, TOML key, default, meaning.
pub fn markdown(opts: &[&dyn AnyOpt], section: &str) -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out =
        String::from("| flag | env | TOML key | default | meaning |\n|---|---|---|---|---|\n");
    for opt in opts.iter().filter(|o| o.spec().section == section) {
        let spec = opt.spec();
        let flag = match spec.kind {
            Kind::Switch => format!("`{}`", spec.flag()),
            Kind::Value => format!("`{} {}`", spec.flag(), spec.value_name),
            Kind::List => format!("`{} {}` (repeatable)", spec.flag(), spec.value_name),
        };
        let default = match (spec.default, spec.unset) {
            (Some(text), _) => format!("`{text}`"),
            (None, Some(meaning)) => meaning.to_owned(),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {} | {} |\n",
            cell(&flag),
            spec.env(),
            spec.toml_key(),
            cell(&default),
            cell(spec.help)
        ));
    }
    out
}
