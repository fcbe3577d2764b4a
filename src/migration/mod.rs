//! Migration files: reading, strict parsing with precise error locations,
//! and the checksum recorded in the control schema.

pub mod format;

pub use format::{MigrationFile, Operation};

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A parsed migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The file stem, e.g. `0003_add_rating`.
    pub name: String,
    /// Where it was read from (for error messages), if from a file.
    pub path: Option<PathBuf>,
    /// The file's exact contents (stored in the control schema).
    pub contents: String,
    /// Hex SHA-256 of the contents with line endings normalised.
    pub checksum: String,
    pub file: MigrationFile,
}

/// The formats a migration can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Migration {
    /// Read and parse `path` (`.yaml`, `.yml` or `.json`); the name is the stem.
    pub fn load(path: &Path) -> Result<Migration> {
        let format = format_of(path)?;
        let contents = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| {
                Error::parse(format!("{}: file name is not valid UTF-8", path.display()))
            })?
            .to_string();
        let mut m = Migration::parse(&name, &contents, format, &path.display().to_string())?;
        m.path = Some(path.to_path_buf());
        Ok(m)
    }

    /// Parse `contents` as a migration named `name`; `origin` names the source
    /// in error messages.
    pub fn parse(name: &str, contents: &str, format: Format, origin: &str) -> Result<Migration> {
        check_name(name).map_err(|e| Error::parse(format!("{origin}: migration name: {e}")))?;
        let file: MigrationFile = match format {
            Format::Yaml => {
                let de = serde_norway::Deserializer::from_str(contents);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = inner
                        .location()
                        .map(|l| format!(":{}:{}", l.line(), l.column()))
                        .unwrap_or_default();
                    parse_error(origin, &loc, &path, &strip_location(&inner.to_string()))
                })?
            }
            Format::Json => {
                let mut de = serde_json::Deserializer::from_str(contents);
                serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = format!(":{}:{}", inner.line(), inner.column());
                    parse_error(origin, &loc, &path, &strip_location(&inner.to_string()))
                })?
            }
        };
        if let Some(n) = &file.name {
            if n != name {
                return Err(Error::parse(format!(
                    "{origin}: field `name` is {n:?} but the migration name is the file stem {name:?}; remove the field"
                )));
            }
        }
        if let Some(vs) = &file.version_schema {
            check_name(vs)
                .map_err(|e| Error::parse(format!("{origin}: field `version_schema`: {e}")))?;
        }
        if file.operations.is_empty() {
            return Err(Error::parse(format!("{origin}: `operations` is empty")));
        }
        Ok(Migration {
            name: name.to_string(),
            path: None,
            checksum: checksum(contents),
            contents: contents.to_string(),
            file,
        })
    }

    /// Where errors about this migration point: its path, or its name.
    pub fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => self.name.clone(),
        }
    }

    /// The suffix of the version schema: `version_schema` or the name.
    pub fn version_suffix(&self) -> &str {
        self.file.version_schema.as_deref().unwrap_or(&self.name)
    }
}

fn parse_error(origin: &str, loc: &str, path: &str, msg: &str) -> Error {
    let at = describe_path(path);
    // serde_norway prefixes its message with the path; we print our own.
    let msg = match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest,
        _ => msg,
    };
    if at.is_empty() {
        Error::parse(format!("{origin}{loc}: {msg}"))
    } else {
        Error::parse(format!("{origin}{loc}: {at}: {msg}"))
    }
}

/// `operations[2].add_column.column.type` -> `operations[2] (add_column), field column.type`.
fn describe_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        return String::new();
    }
    if let Some(rest) = path.strip_prefix("operations[") {
        if let Some((idx, tail)) = rest.split_once(']') {
            let tail = tail.trim_start_matches('.');
            let (op, field) = tail.split_once('.').unwrap_or((tail, ""));
            return match (op.is_empty(), field.is_empty()) {
                (true, _) => format!("operations[{idx}]"),
                (false, true) => format!("operations[{idx}] ({op})"),
                (false, false) => format!("operations[{idx}] ({op}), field `{field}`"),
            };
        }
    }
    format!("field `{path}`")
}

/// serde_norway/serde_json append " at line X column Y"; we print it up front.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml") | Some("yml") => Ok(Format::Yaml),
        Some("json") => Ok(Format::Json),
        _ => Err(Error::parse(format!(
            "{}: unknown extension; migration files end in .yaml, .yml or .json",
            path.display()
        ))),
    }
}

/// Names used as identifiers must be non-empty, at most 63 bytes and free of NUL.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL character"));
    }
    if name.len() > 63 {
        return Err(format!(
            "{name:?} is {} bytes; Postgres identifiers are at most 63",
            name.len()
        ));
    }
    Ok(())
}

/// SHA-256 of the contents with CRLF normalised to LF, as lowercase hex.
pub fn checksum(contents: &str) -> String {
    let normalised = contents.replace("\r\n", "\n");
    let digest = Sha256::digest(normalised.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The migration files of a directory, in file-name order.
pub fn files_in_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read directory {}", dir.display()), e))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
        let p = entry.path();
        if p.is_file() && format_of(&p).is_ok() {
            files.push(p);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Result<Migration> {
        Migration::parse("0001_x", s, Format::Yaml, "0001_x.yaml")
    }

    #[test]
    fn unknown_field_names_file_line_operation_and_field() {
        let e = yaml("operations:\n  - add_column:\n      table: t\n      column:\n        name: c\n        typo: int\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("0001_x.yaml:6:"), "{e}");
        assert!(
            e.contains("operations[0] (add_column), field `column.typo`"),
            "{e}"
        );
        assert!(e.contains("unknown field `typo`"), "{e}");
    }

    #[test]
    fn unknown_operation_is_named() {
        let e = yaml("operations:\n  - explode_table:\n      name: t\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `explode_table`"), "{e}");
        assert!(e.contains("0001_x.yaml:2:"), "{e}");
    }

    #[test]
    fn wrong_type_and_missing_field() {
        let e = yaml("operations:\n  - drop_table:\n      name: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `name`"), "{e}");
        let e = yaml("operations:\n  - rename_table:\n      from: a\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `to`"), "{e}");
    }

    #[test]
    fn json_errors_have_line_and_column() {
        let e = Migration::parse(
            "m",
            "{\"operations\": [{\"drop_table\": {\"nme\": \"t\"}}]}",
            Format::Json,
            "m.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("m.json:1:"), "{e}");
        assert!(e.contains("unknown field `nme`"), "{e}");
    }

    #[test]
    fn alter_column_default_null_differs_from_absent() {
        let m = yaml("operations:\n  - alter_column:\n      table: t\n      column: c\n      default: null\n").unwrap();
        match &m.file.operations[0] {
            Operation::AlterColumn(a) => {
                assert_eq!(a.default, Some(None));
                assert_eq!(a.comment, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn checksum_ignores_crlf() {
        assert_eq!(checksum("a\r\nb"), checksum("a\nb"));
    }
}
