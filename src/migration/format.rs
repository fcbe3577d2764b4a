//! Serde types for pgroll's migration format (YAML or JSON), read strictly:
//! unknown fields and operations are errors. Field names follow
//! `shared/compat/pgroll-schema.json`.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The top level of a migration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationFile {
    /// Accepted for older pgroll files; when present it must equal the file stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overrides the version schema's suffix (default: the migration name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_schema: Option<String>,
    pub operations: Vec<Operation>,
}

/// One operation: a map with exactly one key, the operation's type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    CreateTable(CreateTable),
    AddColumn(AddColumn),
    DropColumn(DropColumn),
    RenameColumn(RenameColumn),
    AlterColumn(AlterColumn),
    CreateIndex(CreateIndex),
    DropIndex(DropIndex),
    RenameTable(RenameTable),
    DropTable(DropTable),
    Sql(RawSql),
    CreateConstraint(CreateConstraint),
    DropConstraint(DropConstraint),
    #[serde(rename = "drop_multicolumn_constraint")]
    DropMultiColumnConstraint(DropMultiColumnConstraint),
    RenameConstraint(RenameConstraint),
    SetReplicaIdentity(SetReplicaIdentity),
}

/// Every operation key, as written in files.
pub const OPERATION_KEYS: &[&str] = &[
    "create_table",
    "add_column",
    "drop_column",
    "rename_column",
    "alter_column",
    "create_index",
    "drop_index",
    "rename_table",
    "drop_table",
    "sql",
    "create_constraint",
    "drop_constraint",
    "drop_multicolumn_constraint",
    "rename_constraint",
    "set_replica_identity",
];

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OpVisitor;
        impl<'de> Visitor<'de> for OpVisitor {
            type Value = Operation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map with one key naming the operation, such as `add_column:`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Operation, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| {
                    de::Error::custom("empty operation: expected one key naming the operation")
                })?;
                let op = match key.as_str() {
                    "create_table" => Operation::CreateTable(map.next_value()?),
                    "add_column" => Operation::AddColumn(map.next_value()?),
                    "drop_column" => Operation::DropColumn(map.next_value()?),
                    "rename_column" => Operation::RenameColumn(map.next_value()?),
                    "alter_column" => Operation::AlterColumn(map.next_value()?),
                    "create_index" => Operation::CreateIndex(map.next_value()?),
                    "drop_index" => Operation::DropIndex(map.next_value()?),
                    "rename_table" => Operation::RenameTable(map.next_value()?),
                    "drop_table" => Operation::DropTable(map.next_value()?),
                    "sql" => Operation::Sql(map.next_value()?),
                    "create_constraint" => Operation::CreateConstraint(map.next_value()?),
                    "drop_constraint" => Operation::DropConstraint(map.next_value()?),
                    "drop_multicolumn_constraint" => {
                        Operation::DropMultiColumnConstraint(map.next_value()?)
                    }
                    "rename_constraint" => Operation::RenameConstraint(map.next_value()?),
                    "set_replica_identity" => Operation::SetReplicaIdentity(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, OPERATION_KEYS)),
                };
                if let Some(second) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "an operation has exactly one key, found `{key}` and `{second}`; write them as two list items"
                    )));
                }
                Ok(op)
            }
        }
        d.deserialize_map(OpVisitor)
    }
}

impl Operation {
    /// The operation's key as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::CreateTable(_) => "create_table",
            Operation::AddColumn(_) => "add_column",
            Operation::DropColumn(_) => "drop_column",
            Operation::RenameColumn(_) => "rename_column",
            Operation::AlterColumn(_) => "alter_column",
            Operation::CreateIndex(_) => "create_index",
            Operation::DropIndex(_) => "drop_index",
            Operation::RenameTable(_) => "rename_table",
            Operation::DropTable(_) => "drop_table",
            Operation::Sql(_) => "sql",
            Operation::CreateConstraint(_) => "create_constraint",
            Operation::DropConstraint(_) => "drop_constraint",
            Operation::DropMultiColumnConstraint(_) => "drop_multicolumn_constraint",
            Operation::RenameConstraint(_) => "rename_constraint",
            Operation::SetReplicaIdentity(_) => "set_replica_identity",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub nullable: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub pk: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<ForeignKeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<Generated>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_options: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_specified_values: Option<UserSpecifiedValues>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum UserSpecifiedValues {
    #[serde(rename = "ALWAYS")]
    Always,
    #[serde(rename = "BY DEFAULT")]
    ByDefault,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConstraint {
    pub name: String,
    pub constraint: String,
    #[serde(default)]
    pub no_inherit: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeyReference {
    pub name: String,
    pub table: String,
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_type: Option<MatchType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<FkAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_update: Option<FkAction>,
    #[serde(default)]
    pub deferrable: bool,
    #[serde(default)]
    pub initially_deferred: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableForeignKeyReference {
    pub table: String,
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_type: Option<MatchType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<FkAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_update: Option<FkAction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_delete_set_columns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum FkAction {
    #[serde(rename = "NO ACTION")]
    NoAction,
    #[serde(rename = "RESTRICT")]
    Restrict,
    #[serde(rename = "CASCADE")]
    Cascade,
    #[serde(rename = "SET NULL")]
    SetNull,
    #[serde(rename = "SET DEFAULT")]
    SetDefault,
}

impl FkAction {
    pub fn sql(self) -> &'static str {
        match self {
            FkAction::NoAction => "NO ACTION",
            FkAction::Restrict => "RESTRICT",
            FkAction::Cascade => "CASCADE",
            FkAction::SetNull => "SET NULL",
            FkAction::SetDefault => "SET DEFAULT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MatchType {
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "FULL")]
    Full,
    #[serde(rename = "PARTIAL")]
    Partial,
}

impl MatchType {
    pub fn sql(self) -> &'static str {
        match self {
            MatchType::Simple => "SIMPLE",
            MatchType::Full => "FULL",
            MatchType::Partial => "PARTIAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ConstraintType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default)]
    pub deferrable: bool,
    #[serde(default)]
    pub initially_deferred: bool,
    #[serde(default)]
    pub nulls_not_distinct: bool,
    #[serde(default)]
    pub no_inherit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<TableForeignKeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Exclude>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_parameters: Option<IndexParameters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintType {
    Unique,
    Check,
    PrimaryKey,
    ForeignKey,
    Exclude,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    #[serde(default)]
    pub index_method: String,
    #[serde(default)]
    pub elements: String,
    #[serde(default)]
    pub predicate: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexParameters {
    #[serde(default)]
    pub tablespace: String,
    #[serde(default)]
    pub storage_parameters: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    pub name: String,
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub table: String,
    pub column: Column,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropColumn {
    pub table: String,
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameColumn {
    pub table: String,
    pub from: String,
    pub to: String,
}

/// `default` and `comment` distinguish "absent" (`None`) from an explicit
/// `null` (`Some(None)`, which removes the default or comment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlterColumn {
    pub table: String,
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullable: Option<bool>,
    #[serde(
        default,
        deserialize_with = "explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub default: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub comment: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<ForeignKeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<UniqueConstraint>,
    /// Renaming through alter_column was removed from pgroll; kept so old
    /// files get a precise error instead of "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn explicit_null<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniqueConstraint {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexField {
    pub column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls: Option<NullsOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opclass: Option<OpClass>,
}

/// pgroll has accepted three shapes for `create_index.columns` over time: a
/// list of names, a map of name to settings, and a list of `IndexField`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IndexColumns {
    Fields(Vec<IndexEntry>),
    Map(BTreeMap<String, IndexFieldSettings>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IndexEntry {
    Name(String),
    Field(IndexField),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IndexFieldSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls: Option<NullsOrder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opclass: Option<OpClass>,
}

impl IndexColumns {
    /// The columns as a uniform list of fields, in order.
    pub fn fields(&self) -> Vec<IndexField> {
        match self {
            IndexColumns::Fields(v) => v
                .iter()
                .map(|e| match e {
                    IndexEntry::Name(n) => IndexField {
                        column: n.clone(),
                        collate: None,
                        sort: None,
                        nulls: None,
                        opclass: None,
                    },
                    IndexEntry::Field(f) => f.clone(),
                })
                .collect(),
            IndexColumns::Map(m) => m
                .iter()
                .map(|(k, s)| IndexField {
                    column: k.clone(),
                    collate: s.collate.clone(),
                    sort: s.sort,
                    nulls: s.nulls,
                    opclass: s.opclass.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum SortOrder {
    #[serde(rename = "ASC")]
    Asc,
    #[serde(rename = "DESC")]
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum NullsOrder {
    #[serde(rename = "FIRST")]
    First,
    #[serde(rename = "LAST")]
    Last,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpClass {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexMethod {
    #[default]
    Btree,
    Hash,
    Gist,
    Spgist,
    Gin,
    Brin,
}

impl IndexMethod {
    pub fn sql(self) -> &'static str {
        match self {
            IndexMethod::Btree => "btree",
            IndexMethod::Hash => "hash",
            IndexMethod::Gist => "gist",
            IndexMethod::Spgist => "spgist",
            IndexMethod::Gin => "gin",
            IndexMethod::Brin => "brin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndex {
    pub table: String,
    pub name: String,
    pub columns: IndexColumns,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<IndexMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_parameters: Option<String>,
    #[serde(default)]
    pub unique: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropIndex {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameTable {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropTable {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    pub up: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(default, rename = "onComplete")]
    pub on_complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConstraint {
    pub table: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ConstraintType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default)]
    pub no_inherit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<TableForeignKeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_parameters: Option<IndexParameters>,
    pub up: BTreeMap<String, String>,
    pub down: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropConstraint {
    pub table: String,
    pub name: String,
    pub up: String,
    pub down: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropMultiColumnConstraint {
    pub table: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub up: BTreeMap<String, String>,
    pub down: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConstraint {
    pub table: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetReplicaIdentity {
    pub table: String,
    pub identity: ReplicaIdentity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaIdentity {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub index: String,
}
