//! `neo.conf` and the daemons' command lines, as NEO reads them.
//!
//! NEO's nodes take their options from the command line and, with
//! `-f FILE [-s SECTION]`, from an INI file read by Python's `ConfigParser`:
//!
//! ```ini
//! [DEFAULT]
//! cluster: test
//! masters: 127.0.0.1:10000
//! [storage]
//! database: /var/lib/neo/storage.sqlite
//! bind: 127.0.0.1:20000
//! ```
//!
//! Keys are written with `_` where the long option has `-`
//! (`disable_pack` for `--disable-pack`), values follow `:` or `=`, a line
//! that starts with white space continues the previous value, `#` and `;`
//! start comments, and `[DEFAULT]` supplies every section. Options given on
//! the command line win over the file; unknown keys are ignored, as NEO does.
//!
//! [`merged_args`] turns the chosen section into command-line arguments placed
//! before the real ones, so a daemon declares its options once, with clap.

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// What can go wrong reading a configuration file or an option.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A line that is neither a section, an option nor a continuation.
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    /// `-s SECTION` names a section the file does not have.
    NoSection { path: PathBuf, section: String },
    /// A `host:port` that does not parse or resolve.
    BadAddress { value: String, reason: String },
    /// A boolean that is not one of ConfigParser's words.
    BadBool { key: String, value: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            ConfigError::Syntax { path, line, text } => {
                write!(f, "{}:{line}: cannot parse {text:?}", path.display())
            }
            ConfigError::NoSection { path, section } => {
                write!(f, "{}: no section [{section}]", path.display())
            }
            ConfigError::BadAddress { value, reason } => {
                write!(f, "bad address {value:?}: {reason}")
            }
            ConfigError::BadBool { key, value } => {
                write!(f, "option {key}: {value:?} is not a boolean")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// An INI file as Python's `ConfigParser` sees it (without interpolation).
#[derive(Debug, Default, Clone)]
pub struct IniFile {
    path: PathBuf,
    defaults: Vec<(String, String)>,
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl IniFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<IniFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        IniFile::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<IniFile, ConfigError> {
        let mut ini = IniFile {
            path: path.to_owned(),
            ..IniFile::default()
        };
        // Index into `sections`, or None for [DEFAULT]; and whether a section
        // header was seen at all (options before any header are an error).
        let mut current: Option<Option<usize>> = None;
        let mut last_key: Option<(Option<usize>, usize)> = None;
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let syntax = || ConfigError::Syntax {
                path: path.to_owned(),
                line: line_no,
                text: raw.to_owned(),
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                last_key = None;
                continue;
            }
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                let (sec, idx) = last_key.ok_or_else(syntax)?;
                let value = &mut ini.entries_mut(sec)[idx].1;
                if !value.is_empty() {
                    value.push('\n');
                }
                value.push_str(trimmed);
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(syntax)?.trim();
                current = Some(if name == "DEFAULT" {
                    None
                } else if let Some(i) = ini.sections.iter().position(|(s, _)| s == name) {
                    Some(i)
                } else {
                    ini.sections.push((name.to_owned(), Vec::new()));
                    Some(ini.sections.len() - 1)
                });
                last_key = None;
                continue;
            }
            let sec = current.ok_or_else(syntax)?;
            let split = trimmed.find([':', '=']).ok_or_else(syntax)?;
            let key = trimmed[..split].trim().to_lowercase();
            let value = strip_inline_comment(trimmed[split + 1..].trim()).to_owned();
            if key.is_empty() {
                return Err(syntax());
            }
            let entries = ini.entries_mut(sec);
            let idx = match entries.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    entries[i].1 = value;
                    i
                }
                None => {
                    entries.push((key, value));
                    entries.len() - 1
                }
            };
            last_key = Some((sec, idx));
        }
        Ok(ini)
    }

    fn entries_mut(&mut self, sec: Option<usize>) -> &mut Vec<(String, String)> {
        match sec {
            None => &mut self.defaults,
            Some(i) => &mut self.sections[i].1,
        }
    }

    /// Whether the file has section `name` (`DEFAULT` always exists).
    pub fn has_section(&self, name: &str) -> bool {
        name == "DEFAULT" || self.sections.iter().any(|(s, _)| s == name)
    }

    /// The value of `key` in `section`, falling back to `[DEFAULT]`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        let own = self
            .sections
            .iter()
            .find(|(s, _)| s == section)
            .and_then(|(_, e)| e.iter().find(|(k, _)| k == key));
        own.or_else(|| self.defaults.iter().find(|(k, _)| k == key))
            .map(|(_, v)| v.as_str())
    }

    /// Every `(key, value)` visible in `section`, its own first, then the
    /// defaults it does not override.
    pub fn items(&self, section: &str) -> Result<Vec<(&str, &str)>, ConfigError> {
        if !self.has_section(section) {
            return Err(ConfigError::NoSection {
                path: self.path.clone(),
                section: section.to_owned(),
            });
        }
        let own: &[(String, String)] = self
            .sections
            .iter()
            .find(|(s, _)| s == section)
            .map(|(_, e)| e.as_slice())
            .unwrap_or(&[]);
        let mut out: Vec<(&str, &str)> =
            own.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (k, v) in &self.defaults {
            if !own.iter().any(|(ok, _)| ok == k) {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}

/// ConfigParser only strips inline comments preceded by white space when
/// asked to; NEO's files put comments on their own lines. We strip ` ;` and
/// ` #` comments, which cannot be part of any value NEO accepts.
fn strip_inline_comment(v: &str) -> &str {
    for pat in [" ;", " #", "\t;", "\t#"] {
        if let Some(i) = v.find(pat) {
            return v[..i].trim_end();
        }
    }
    v
}

/// Parses a boolean as `ConfigParser.getboolean` does.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(ConfigError::BadBool {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
    }
}

/// Builds the argument list for `cmd`: the options of section `-s` (default
/// `default_section`) of the file `-f`, if any, then the real arguments, which
/// therefore win (the command must be built with `args_override_self(true)`).
/// `argv` includes the program name.
pub fn merged_args(
    cmd: &clap::Command,
    argv: Vec<OsString>,
    default_section: &str,
) -> Result<Vec<OsString>, ConfigError> {
    let (file, section) = find_file_and_section(&argv);
    let Some(file) = file else { return Ok(argv) };
    let ini = IniFile::read(Path::new(&file))?;
    let section = section.unwrap_or_else(|| default_section.to_owned());
    let mut out = Vec::with_capacity(argv.len() + 16);
    let mut argv = argv.into_iter();
    out.extend(argv.next());
    for (key, value) in ini.items(&section)? {
        let long = key.replace('_', "-");
        if long == "file" || long == "section" {
            continue;
        }
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            continue; // NEO ignores keys that are not options of the node
        };
        if arg.get_action().takes_values() {
            out.push(format!("--{long}").into());
            out.push(value.into());
        } else if parse_bool(key, value)? {
            out.push(format!("--{long}").into());
        }
    }
    out.extend(argv);
    Ok(out)
}

fn find_file_and_section(argv: &[OsString]) -> (Option<OsString>, Option<String>) {
    let mut file = None;
    let mut section = None;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "-f" || s == "--file" {
            file = it.next().cloned();
        } else if let Some(v) = s.strip_prefix("--file=") {
            file = Some(v.into());
        } else if let Some(v) = s.strip_prefix("-f").filter(|v| !v.is_empty()) {
            file = Some(v.into());
        } else if s == "-s" || s == "--section" {
            section = it.next().map(|v| v.to_string_lossy().into_owned());
        } else if let Some(v) = s.strip_prefix("--section=") {
            section = Some(v.to_owned());
        } else if let Some(v) = s.strip_prefix("-s").filter(|v| !v.is_empty()) {
            section = Some(v.to_owned());
        }
    }
    (file, section)
}

/// A node address as NEO writes it: `host:port`, `[v6]:port`, or a bare host
/// that takes `default_port`. Resolved like NEO (first result).
pub fn parse_address(value: &str, default_port: Option<u16>) -> Result<SocketAddr, ConfigError> {
    let bad = |reason: &str| ConfigError::BadAddress {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
        match tail.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if tail.is_empty() => (host, None),
            None => return Err(bad("junk after ]")),
        }
    } else if value.matches(':').count() == 1 {
        let (h, p) = value.split_once(':').expect("one colon");
        (h, Some(p))
    } else {
        (value, None)
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => default_port.ok_or_else(|| bad("no port"))?,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("does not resolve"))
}

/// A space-separated list of master addresses (NEO's `parseMasterList`).
pub fn parse_master_list(value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    value
        .split_whitespace()
        .map(|a| parse_address(a, None))
        .collect()
}

/// Sets up the one logging facade of a daemon: `log` through
/// `env_logger`, level from `RUST_LOG` (default `info`), to `logfile`
/// (appended) when given, else stderr.
pub fn setup_logging(logfile: Option<&str>) -> Result<(), String> {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(path) = logfile {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {path}: {e}"))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.try_init().map_err(|e| e.to_string())
}

/// NEO's `--ca`, `--cert`, `--key`: all three (TLS) or none (plain).
pub fn tls_options(
    ca: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<Option<neo_proto::tls::TlsConfig>, String> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => neo_proto::tls::TlsConfig::from_pem_files(
            Path::new(ca),
            Path::new(cert),
            Path::new(key),
        )
        .map(Some)
        .map_err(|e| e.to_string()),
        (None, None, None) => Ok(None),
        _ => Err(
            "To enable encryption, 3 files must be provided: the CA certificate, \
                  and the certificate of this node with its private key."
                .into(),
        ),
    }
}

/// `-i`: a node id of type `ty`, as a number (NEO's int) or as shown
/// (`S1`, `M1`, ...).
pub fn parse_nid(s: &str, ty: neo_proto::NodeType) -> Result<neo_proto::NodeId, String> {
    use neo_proto::NodeId;
    let n = match s.strip_prefix(ty.letter()) {
        Some(n) => n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..0x0100_0000).contains(n))
            .map(|n| NodeId::new(ty, n)),
        None => s.parse::<i32>().ok().map(NodeId),
    };
    match n {
        Some(n) if n.node_type() == Some(ty) && n.number() != 0 => Ok(n),
        _ => Err(format!(
            "invalid {} node id: {s:?}",
            ty.name().to_lowercase()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    const CONF: &str = "\
# comment
[DEFAULT]
cluster: test
masters: 127.0.0.1:10000
    127.0.0.1:10001
replicas = 1

[storage]
database: /tmp/s.sqlite ; inline comment
bind: 127.0.0.1:20000
disable_pack: yes
unknown_key: ignored

[master]
bind: 127.0.0.1:10000
replicas: 0
";

    fn cmd() -> Command {
        Command::new("neostorage")
            .args_override_self(true)
            .arg(Arg::new("file").short('f').long("file"))
            .arg(Arg::new("section").short('s').long("section"))
            .arg(Arg::new("cluster").short('c').long("cluster"))
            .arg(Arg::new("masters").short('m').long("masters"))
            .arg(Arg::new("bind").short('b').long("bind"))
            .arg(Arg::new("database").short('d').long("database"))
            .arg(Arg::new("replicas").long("replicas"))
            .arg(
                Arg::new("disable-pack")
                    .long("disable-pack")
                    .action(ArgAction::SetTrue),
            )
    }

    #[test]
    fn parses_sections_defaults_and_continuations() {
        let ini = IniFile::parse(CONF, Path::new("neo.conf")).unwrap();
        assert_eq!(ini.get("storage", "cluster"), Some("test"));
        assert_eq!(
            ini.get("storage", "masters"),
            Some("127.0.0.1:10000\n127.0.0.1:10001")
        );
        assert_eq!(ini.get("storage", "database"), Some("/tmp/s.sqlite"));
        assert_eq!(ini.get("master", "replicas"), Some("0"));
        assert_eq!(ini.get("storage", "replicas"), Some("1"));
        assert_eq!(ini.get("admin", "bind"), None);
        assert!(ini.items("admin").is_err());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = IniFile::parse("[a]\nkey: v\njunk line\n", Path::new("x.conf")).unwrap_err();
        assert_eq!(err.to_string(), "x.conf:3: cannot parse \"junk line\"");
        let err = IniFile::parse("key: v\n", Path::new("x.conf")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 1, .. }));
    }

    #[test]
    fn command_line_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neo.conf");
        std::fs::write(&path, CONF).unwrap();
        let argv: Vec<OsString> = [
            "neostorage",
            "-f",
            path.to_str().unwrap(),
            "-b",
            "127.0.0.1:1",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let args = merged_args(&cmd(), argv, "storage").unwrap();
        let m = cmd().try_get_matches_from(args).unwrap();
        assert_eq!(m.get_one::<String>("bind").unwrap(), "127.0.0.1:1");
        assert_eq!(m.get_one::<String>("database").unwrap(), "/tmp/s.sqlite");
        assert_eq!(m.get_one::<String>("cluster").unwrap(), "test");
        assert!(m.get_flag("disable-pack"));
        // Another section through -s.
        let argv: Vec<OsString> = ["neomaster", "-f", path.to_str().unwrap(), "-s", "master"]
            .iter()
            .map(Into::into)
            .collect();
        let m = cmd()
            .try_get_matches_from(merged_args(&cmd(), argv, "storage").unwrap())
            .unwrap();
        assert_eq!(m.get_one::<String>("replicas").unwrap(), "0");
        assert!(!m.get_flag("disable-pack"));
    }

    #[test]
    fn node_ids() {
        use neo_proto::{NodeId, NodeType};
        assert_eq!(
            parse_nid("S2", NodeType::Storage),
            Ok(NodeId::new(NodeType::Storage, 2))
        );
        assert_eq!(parse_nid("1", NodeType::Storage), Ok(NodeId(1)));
        assert_eq!(parse_nid("M1", NodeType::Master), Ok(NodeId(-268435455)));
        assert!(parse_nid("M1", NodeType::Storage).is_err());
        assert!(parse_nid("S0", NodeType::Storage).is_err());
        assert_eq!(
            parse_nid("-268435454", NodeType::Master),
            Ok(NodeId::new(NodeType::Master, 2))
        );
        assert!(parse_nid("1", NodeType::Master).is_err());
        assert!(parse_nid("Mx", NodeType::Master).is_err());
        assert!(tls_options(Some("ca"), None, None).is_err());
        assert!(matches!(tls_options(None, None, None), Ok(None)));
    }

    #[test]
    fn addresses() {
        let a = parse_address("127.0.0.1:10000", None).unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:10000");
        let a = parse_address("[::1]:5", None).unwrap();
        assert_eq!(a.to_string(), "[::1]:5");
        assert_eq!(parse_address("127.0.0.1", Some(0)).unwrap().port(), 0);
        assert!(parse_address("127.0.0.1", None).is_err());
        assert!(parse_address("127.0.0.1:x", None).is_err());
        let l = parse_master_list("127.0.0.1:1 127.0.0.1:2\n127.0.0.1:3").unwrap();
        assert_eq!(l.len(), 3);
    }
}
