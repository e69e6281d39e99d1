//! `importer.conf`: what to import and where, as NEO's Importer reads it.
//!
//! The file is an INI file (read with [`neo_server::config::IniFile`], the
//! same rules as `neo.conf`):
//!
//! ```ini
//! [neo]                      # the first section: the destination
//! adapter = SQLite           # or MySQL (not built in here)
//! database = /var/lib/neo/import.sqlite
//! compress = true            # true, false, zlib or zlib=LEVEL (1-9; true: level 1)
//! writeback = false          # append new commits to the source too
//!
//! [root]                     # every other section: a source database
//! storage =
//!   <filestorage>
//!     path /srv/zope/Data.fs
//!   </filestorage>
//! foo = 421                  # mountpoint: oid 421 here is [foo]'s `oid`
//!
//! [foo]
//! oid = 123
//! storage = ...
//! ```
//!
//! The `storage` value is a ZConfig section on continuation lines; only
//! `<filestorage>` is supported. Every error names the file and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use neo_server::config::{parse_bool, ConfigError, IniFile};

/// Where the imported data goes (the `adapter` of `[neo]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// NEO's SQLite schema (the default here).
    Sqlite,
    /// NEO's MySQL schema (accepted in the file; not built in here).
    Mysql,
}

/// The `compress` option of `[neo]`, as NEO parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    /// Store data as is (`compress = false`).
    Off,
    /// zlib at this level (`true`/`zlib`: [`DEFAULT_ZLIB_LEVEL`]).
    Zlib(u32),
}

/// The `<filestorage>` section of a source's `storage` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStorageSpec {
    /// `path`, made absolute against the directory of `importer.conf`.
    pub path: PathBuf,
    /// `read-only`.
    pub read_only: bool,
}

/// One source database (a section after `[neo]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// The section name.
    pub name: String,
    /// Line of the section header.
    pub line: usize,
    /// The FileStorage to read.
    pub storage: FileStorageSpec,
    /// `oid`: where the root of this database is mounted in the merged
    /// database (`None` for the main database).
    pub oid: Option<u64>,
    /// `name = oid` mountpoints: a reference to `oid` in this database
    /// points to the `oid` of section `name`.
    pub mountpoints: Vec<(String, u64)>,
}

/// A parsed `importer.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImporterConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Name of the first section (NEO calls it `[neo]`).
    pub section: String,
    /// Destination adapter.
    pub adapter: Adapter,
    /// Destination database (adapter-specific string, as `--database`).
    pub database: String,
    /// Compression of imported data.
    pub compress: Compress,
    /// Whether new commits are also appended to the (single) source.
    pub writeback: bool,
    /// The source databases, in file order; the first one without `oid`
    /// is the main one.
    pub sources: Vec<SourceConfig>,
}

/// A bad `importer.conf`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImporterConfigError {
    /// The INI layer failed (unreadable file, syntax error with its line).
    Ini(ConfigError),
    /// A value is wrong.
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line (of the option, or of the section header).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ImporterConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImporterConfigError::Ini(e) => write!(f, "{e}"),
            ImporterConfigError::Invalid {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ImporterConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImporterConfigError::Ini(e) => Some(e),
            ImporterConfigError::Invalid { .. } => None,
        }
    }
}

/// An option's place: `(section, key, line of the key, value lines with
/// their numbers)`.
type KeyLines = (String, String, usize, Vec<(usize, String)>);

/// Where things are in the text: the line numbers [`IniFile`] does not
/// keep. It follows the same rules (comments, continuation lines).
#[derive(Default)]
struct Lines {
    /// `(section, line of its header)` in file order.
    sections: Vec<(String, usize)>,
    /// `(section, key, line of the key, continuation lines)`; the last
    /// occurrence of a key wins, as in the INI layer.
    keys: Vec<KeyLines>,
}

impl Lines {
    fn scan(text: &str) -> Lines {
        let mut out = Lines::default();
        let mut section: Option<String> = None;
        let mut last: Option<usize> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let t = raw.trim();
            if t.is_empty() {
                last = None;
                continue;
            }
            if t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                if let Some(i) = last {
                    out.keys[i].3.push((line, t.to_owned()));
                }
                continue;
            }
            if let Some(rest) = t.strip_prefix('[') {
                let name = rest.trim_end_matches(']').trim().to_owned();
                out.sections.push((name.clone(), line));
                section = Some(name);
                last = None;
                continue;
            }
            let (Some(sec), Some(split)) = (&section, t.find([':', '='])) else {
                continue;
            };
            let key = t[..split].trim().to_lowercase();
            let first = t[split + 1..].trim();
            let mut cont = Vec::new();
            if !first.is_empty() {
                cont.push((line, first.to_owned()));
            }
            out.keys.retain(|(s, k, _, _)| !(s == sec && *k == key));
            out.keys.push((sec.clone(), key, line, cont));
            last = Some(out.keys.len() - 1);
        }
        out
    }

    fn section(&self, name: &str) -> usize {
        self.sections
            .iter()
            .find(|(s, _)| s == name)
            .map_or(0, |(_, l)| *l)
    }

    fn key(&self, section: &str, key: &str) -> Option<&KeyLines> {
        self.keys
            .iter()
            .find(|(s, k, _, _)| s == section && k == key)
    }

    /// Line of `key` in `section`, else of the section header.
    fn line(&self, section: &str, key: &str) -> usize {
        self.key(section, key)
            .map_or_else(|| self.section(section), |k| k.2)
    }
}

impl ImporterConfig {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<ImporterConfig, ImporterConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ImporterConfigError::Ini(ConfigError::Io {
                path: path.to_owned(),
                error,
            })
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` names the file in errors, and relative
    /// FileStorage paths are taken from its directory.
    pub fn parse(text: &str, path: &Path) -> Result<ImporterConfig, ImporterConfigError> {
        let ini = IniFile::parse(text, path).map_err(ImporterConfigError::Ini)?;
        let lines = Lines::scan(text);
        let invalid = |line: usize, message: String| ImporterConfigError::Invalid {
            path: path.to_owned(),
            line,
            message,
        };
        let names: Vec<String> = lines
            .sections
            .iter()
            .map(|(s, _)| s.clone())
            .filter(|s| s != "DEFAULT")
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
        let Some((main, source_names)) = names.split_first() else {
            return Err(invalid(
                1,
                "no section: the first one ([neo]) names the destination".into(),
            ));
        };
        let items = ini.items(main).map_err(ImporterConfigError::Ini)?;
        let get = |key: &str| items.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let adapter = match get("adapter").unwrap_or("SQLite") {
            a if a.eq_ignore_ascii_case("sqlite") => Adapter::Sqlite,
            a if a.eq_ignore_ascii_case("mysql") => Adapter::Mysql,
            a => {
                return Err(invalid(
                    lines.line(main, "adapter"),
                    format!("unknown adapter {a:?} (SQLite or MySQL)"),
                ))
            }
        };
        let database = match get("database") {
            Some(d) if !d.is_empty() => d.to_owned(),
            _ => {
                return Err(invalid(
                    lines.line(main, "database"),
                    format!("section [{main}] needs a 'database' option (the destination)"),
                ))
            }
        };
        let compress = parse_compress(get("compress").unwrap_or("true"))
            .map_err(|m| invalid(lines.line(main, "compress"), m))?;
        let writeback = match get("writeback") {
            None => false,
            Some(v) => parse_bool("writeback", v)
                .map_err(|e| invalid(lines.line(main, "writeback"), e.to_string()))?,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut sources = Vec::new();
        for name in source_names {
            let header = lines.section(name);
            let mut oid = None;
            let mut storage = None;
            let mut mountpoints = Vec::new();
            for (key, value) in ini.items(name).map_err(ImporterConfigError::Ini)? {
                let line = lines.line(name, key);
                match key {
                    "storage" => {
                        let block = lines
                            .key(name, "storage")
                            .map(|k| k.3.clone())
                            .unwrap_or_else(|| {
                                value.lines().map(|l| (line, l.trim().to_owned())).collect()
                            });
                        storage = Some(
                            parse_zconfig(&block, line, base)
                                .map_err(|(line, message)| invalid(line, message))?,
                        );
                    }
                    "oid" => {
                        oid = Some(parse_oid(value).map_err(|m| invalid(line, m))?);
                    }
                    _ => {
                        let o = parse_oid(value)
                            .map_err(|m| invalid(line, format!("mountpoint {key:?}: {m}")))?;
                        mountpoints.push((key.to_owned(), o));
                    }
                }
            }
            let Some(storage) = storage else {
                return Err(invalid(
                    header,
                    format!("section [{name}] needs a 'storage' option (a <filestorage> block)"),
                ));
            };
            sources.push(SourceConfig {
                name: name.clone(),
                line: header,
                storage,
                oid: oid.filter(|&o| o != 0),
                mountpoints,
            });
        }
        let config = ImporterConfig {
            path: path.to_owned(),
            section: main.clone(),
            adapter,
            database,
            compress,
            writeback,
            sources,
        };
        config.check(&lines, &invalid)?;
        Ok(config)
    }

    /// Cross-section rules: one main database, mountpoints naming
    /// sub-databases that define `oid`, writeback only to a single source.
    fn check(
        &self,
        lines: &Lines,
        invalid: &dyn Fn(usize, String) -> ImporterConfigError,
    ) -> Result<(), ImporterConfigError> {
        if self.sources.is_empty() {
            return Err(invalid(
                lines.section(&self.section),
                "no source database: add a section with a 'storage' option".into(),
            ));
        }
        let mains: Vec<&SourceConfig> = self.sources.iter().filter(|s| s.oid.is_none()).collect();
        match mains.as_slice() {
            [_] => {}
            [] => {
                return Err(invalid(
                    self.sources[0].line,
                    "every source has an 'oid': one (the main database) must not".into(),
                ))
            }
            [_, second, ..] => {
                return Err(invalid(
                    second.line,
                    format!(
                        "section [{}] has no 'oid', like [{}]: only the main database may omit it",
                        second.name, mains[0].name
                    ),
                ))
            }
        }
        for s in &self.sources {
            for (mp, _) in &s.mountpoints {
                let line = lines.line(&s.name, mp);
                match self.sources.iter().find(|x| &x.name == mp) {
                    None => {
                        return Err(invalid(
                            line,
                            format!("mountpoint {mp:?} names no section of this file"),
                        ))
                    }
                    Some(x) if x.oid.is_none() => {
                        return Err(invalid(
                            line,
                            format!("mountpoint {mp:?}: section [{mp}] has no 'oid'"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if self.writeback {
            if self.sources.len() > 1 {
                return Err(invalid(
                    lines.line(&self.section, "writeback"),
                    "writeback needs a single source database (new transactions cannot \
                     be split between several)"
                        .into(),
                ));
            }
            if self.sources[0].storage.read_only {
                return Err(invalid(
                    lines.line(&self.sources[0].name, "storage"),
                    "writeback to a read-only filestorage".into(),
                ));
            }
        }
        Ok(())
    }

    /// The main source (the one without `oid`).
    pub fn main_source(&self) -> &SourceConfig {
        // check() guarantees exactly one.
        self.sources
            .iter()
            .find(|s| s.oid.is_none())
            .unwrap_or(&self.sources[0])
    }
}

/// The zlib level of `compress = true` and `compress = zlib`: 1. NEO uses
/// zlib's default (6); on the benchmark file (`import-bench`) level 1
/// compresses 3.4 times faster and stores 3.6 % more bytes (stored/raw
/// 0.846 vs 0.816), and it is what lets compression keep up with the
/// SQLite writer. `zlib=6` gives NEO's level; every level writes zlib
/// streams that Python NEO reads.
pub const DEFAULT_ZLIB_LEVEL: u32 = 1;

/// NEO's `compress` values: `true`/`false`, or `zlib[=LEVEL]`.
fn parse_compress(v: &str) -> Result<Compress, String> {
    match v {
        "true" => return Ok(Compress::Zlib(DEFAULT_ZLIB_LEVEL)),
        "false" => return Ok(Compress::Off),
        _ => {}
    }
    let (alg, level) = match v.split_once('=') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    if alg != "zlib" {
        return Err(format!(
            "not a valid 'compress' option: {v:?} (true, false, zlib or zlib=LEVEL)"
        ));
    }
    match level {
        None => Ok(Compress::Zlib(DEFAULT_ZLIB_LEVEL)),
        Some(l) => match l.trim().parse::<u32>() {
            Ok(n @ 1..=9) => Ok(Compress::Zlib(n)),
            _ => Err(format!("invalid compression level {l:?} (1 to 9)")),
        },
    }
}

/// An oid as NEO reads it (`int(value)`): decimal, or `0x` hex.
fn parse_oid(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("{v:?} is not an oid (a decimal number)"))
}

/// Parses the ZConfig text of a `storage` option: one `<filestorage>`
/// section. `lines` are the value's lines with their line numbers;
/// `key_line` is the line of `storage=` (for an empty value). Errors are
/// `(line, message)`.
fn parse_zconfig(
    lines: &[(usize, String)],
    key_line: usize,
    base: &Path,
) -> Result<FileStorageSpec, (usize, String)> {
    let mut open: Option<usize> = None;
    let mut closed = false;
    let mut path: Option<(usize, String)> = None;
    let mut read_only = false;
    let mut last_line = key_line;
    for (line, text) in lines {
        let (line, text) = (*line, text.trim());
        last_line = line;
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if closed {
            return Err((
                line,
                format!("{text:?} after </filestorage>: one storage per source"),
            ));
        }
        if let Some(tag) = text.strip_prefix("</") {
            let name = tag.trim_end_matches('>').trim().to_lowercase();
            if open.is_none() || name != "filestorage" {
                return Err((line, format!("unexpected {text:?}")));
            }
            closed = true;
            continue;
        }
        if let Some(tag) = text.strip_prefix('<') {
            let inner = tag.trim_end_matches('>').trim();
            let kind = inner.split_whitespace().next().unwrap_or("").to_lowercase();
            if open.is_some() {
                return Err((
                    line,
                    format!("unexpected section {text:?} inside <filestorage>"),
                ));
            }
            if kind != "filestorage" {
                return Err((
                    line,
                    format!(
                        "storage <{kind}> is not supported: only <filestorage> sources can be imported"
                    ),
                ));
            }
            open = Some(line);
            continue;
        }
        if text.starts_with('%') {
            return Err((line, format!("ZConfig directive {text:?} is not supported")));
        }
        if open.is_none() {
            return Err((line, format!("{text:?} outside of <filestorage>")));
        }
        let (key, value) = match text.split_once(char::is_whitespace) {
            Some((k, v)) => (k.to_lowercase(), v.trim().to_owned()),
            None => (text.to_lowercase(), String::new()),
        };
        let flag = |value: &str| {
            parse_bool(&key, value)
                .map_err(|_| (line, format!("{key}: {value:?} is not a boolean")))
        };
        match key.as_str() {
            "path" if !value.is_empty() => path = Some((line, value)),
            "path" => return Err((line, "path without a value".into())),
            "read-only" => read_only = flag(&value)?,
            "create" => {
                if flag(&value)? {
                    return Err((line, "create true: a source must exist".into()));
                }
            }
            "blob-dir" => {
                return Err((
                    line,
                    "blob-dir: blobs cannot be imported (not supported)".into(),
                ))
            }
            "quota" | "pack-gc" | "pack-keep-old" | "packer" | "pack-gc-callable" => {}
            _ => return Err((line, format!("unknown filestorage option {key:?}"))),
        }
    }
    let Some(start) = open else {
        return Err((
            key_line,
            "storage needs a <filestorage> block on the following indented lines".into(),
        ));
    };
    if !closed {
        return Err((
            last_line,
            format!("<filestorage> of line {start} is not closed"),
        ));
    }
    let Some((_, p)) = path else {
        return Err((start, "<filestorage> without 'path'".into()));
    };
    let p = match p.strip_prefix("~/") {
        Some(tail) => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(tail),
            None => PathBuf::from(&p),
        },
        None => PathBuf::from(&p),
    };
    Ok(FileStorageSpec {
        path: if p.is_absolute() { p } else { base.join(p) },
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ImporterConfig, ImporterConfigError> {
        ImporterConfig::parse(text, Path::new("/etc/neo/importer.conf"))
    }

    fn err_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ImporterConfigError::Invalid { line, message, .. }) => (line, message),
            Err(ImporterConfigError::Ini(ConfigError::Syntax { line, text, .. })) => (line, text),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn neo_example_layout() {
        let c = parse(
            "[neo]\nadapter=MySQL\ndatabase=neo\nwriteback=false\n\n[root]\nstorage=\n  <filestorage>\n    path /path/to/root.fs\n  </filestorage>\n# comment\nfoo=421\nbar=666\n\n[foo]\noid=123\nstorage=\n  <filestorage>\n    path foo.fs\n  </filestorage>\n\n[bar]\noid=4567\nstorage=\n  <filestorage>\n    path /b.fs\n  </filestorage>\n",
        )
        .unwrap();
        assert_eq!(c.adapter, Adapter::Mysql);
        assert_eq!(c.database, "neo");
        assert_eq!(c.compress, Compress::Zlib(DEFAULT_ZLIB_LEVEL));
        assert!(!c.writeback);
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.sources[0].storage.path, PathBuf::from("/path/to/root.fs"));
        assert_eq!(
            c.sources[0].mountpoints,
            vec![("foo".to_owned(), 421), ("bar".to_owned(), 666)]
        );
        assert_eq!(c.sources[1].oid, Some(123));
        assert_eq!(c.sources[1].storage.path, PathBuf::from("/etc/neo/foo.fs"));
        assert_eq!(c.main_source().name, "root");
    }

    #[test]
    fn compress_values() {
        let base = "[neo]\ndatabase=x\ncompress=";
        let src = "\n[a]\nstorage=\n <filestorage>\n  path /a.fs\n </filestorage>\n";
        for (v, want) in [
            ("false", Compress::Off),
            ("true", Compress::Zlib(DEFAULT_ZLIB_LEVEL)),
            ("zlib", Compress::Zlib(DEFAULT_ZLIB_LEVEL)),
            ("zlib=6", Compress::Zlib(6)),
            ("zlib=9", Compress::Zlib(9)),
        ] {
            assert_eq!(parse(&format!("{base}{v}{src}")).unwrap().compress, want);
        }
        assert_eq!(err_line(&format!("{base}lz4{src}")).0, 3);
        assert_eq!(err_line(&format!("{base}zlib=0{src}")).0, 3);
    }

    #[test]
    fn errors_name_the_line() {
        // Unsupported storage type: the line of the tag.
        let (line, msg) = err_line(
            "[neo]\ndatabase=x\n[a]\nstorage=\n  <zeoclient>\n    server x:1\n  </zeoclient>\n",
        );
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("only <filestorage>"), "{msg}");
        // Unknown filestorage key.
        let (line, _) =
            err_line("[neo]\ndatabase=x\n[a]\nstorage=\n  <filestorage>\n    path /a\n    colour red\n  </filestorage>\n");
        assert_eq!(line, 7);
        // Not closed.
        let (line, msg) =
            err_line("[neo]\ndatabase=x\n[a]\nstorage=\n  <filestorage>\n    path /a\n");
        assert_eq!(line, 6, "{msg}");
        // Missing path.
        let (line, _) =
            err_line("[neo]\ndatabase=x\n[a]\nstorage=\n  <filestorage>\n  </filestorage>\n");
        assert_eq!(line, 5);
        // Bad oid of a mountpoint.
        let (line, _) = err_line(
            "[neo]\ndatabase=x\n[a]\nstorage=\n  <filestorage>\n    path /a\n  </filestorage>\nfoo=abc\n",
        );
        assert_eq!(line, 8);
        // Mountpoint to a missing section.
        let (line, msg) = err_line(
            "[neo]\ndatabase=x\n[a]\nstorage=\n  <filestorage>\n    path /a\n  </filestorage>\nfoo=12\n",
        );
        assert_eq!(line, 8, "{msg}");
        // No database.
        let (line, _) = err_line(
            "[neo]\nadapter=SQLite\n[a]\nstorage=\n <filestorage>\n path /a\n </filestorage>\n",
        );
        assert_eq!(line, 1);
        // Section without storage.
        let (line, _) = err_line("[neo]\ndatabase=x\n\n[a]\nfoo=1\n");
        assert_eq!(line, 4);
        // Syntax error from the INI layer.
        let (line, _) = err_line("[neo]\ndatabase=x\nthis is not an option\n");
        assert_eq!(line, 3);
        // Writeback with two sources.
        let (line, _) = err_line(
            "[neo]\ndatabase=x\nwriteback=true\n[a]\nstorage=\n <filestorage>\n path /a\n </filestorage>\nb=5\n[b]\noid=1\nstorage=\n <filestorage>\n path /b\n </filestorage>\n",
        );
        assert_eq!(line, 3);
        // Two main databases.
        let (line, _) = err_line(
            "[neo]\ndatabase=x\n[a]\nstorage=\n <filestorage>\n path /a\n </filestorage>\n[b]\nstorage=\n <filestorage>\n path /b\n </filestorage>\n",
        );
        assert_eq!(line, 8);
    }

    #[test]
    fn display_names_file_and_line() {
        let e = parse("[neo]\ndatabase=x\nwriteback=maybe\n[a]\nstorage=\n <filestorage>\n path /a\n </filestorage>\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/neo/importer.conf:3: "),
            "{e}"
        );
    }
}
