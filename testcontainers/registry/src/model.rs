//! The registry's state: schemas by global id, subjects with their versions, compatibility
//! levels. Every change is described by a journal [`Entry`] first and applied second, so that
//! replaying the journal rebuilds exactly the state the live process had.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;

use crate::compat::{self, Level};
use crate::error::ApiError;
use crate::journal::Entry;

/// A registered schema as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

#[derive(Debug, Clone)]
struct StoredSchema {
    /// The text as first registered (what `/schemas/ids/{id}` returns).
    text: String,
    parsed: Schema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

/// Which version a request names: a number or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionSpec::Number(n)),
            _ => Err(ApiError::invalid_version(s)),
        }
    }
}

/// What registering a schema under a subject leads to.
#[derive(Debug)]
pub enum Registration {
    /// The subject already has this schema; nothing to write.
    Existing(Registered),
    /// A new version; the entry must be journalled before it is applied.
    New(Registered, Entry),
}

#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_fingerprint: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    global_level: Option<Level>,
    subject_levels: BTreeMap<String, Level>,
}

/// Parses an Avro schema and returns it with its fingerprint: the schema's JSON re-serialized
/// with sorted keys and no whitespace, so that formatting differences do not create new ids.
pub fn parse_schema(text: &str) -> Result<(Schema, String), ApiError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(ApiError::invalid_schema)?;
    let parsed = Schema::parse(&json).map_err(ApiError::invalid_schema)?;
    Ok((parsed, json.to_string()))
}

impl State {
    pub fn global_level(&self) -> Level {
        self.global_level.unwrap_or_default()
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subject_levels.get(subject).copied()
    }

    fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    fn versions(&self, subject: &str, include_deleted: bool) -> Vec<(u32, VersionEntry)> {
        self.subjects
            .get(subject)
            .map(|vs| {
                vs.iter()
                    .filter(|(_, e)| include_deleted || !e.deleted)
                    .map(|(v, e)| (*v, *e))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn registered(&self, subject: &str, version: u32, id: u32) -> Result<Registered, ApiError> {
        let schema = self
            .schemas
            .get(&id)
            .ok_or_else(ApiError::schema_not_found)?;
        Ok(Registered {
            subject: subject.to_owned(),
            version,
            id,
            schema: schema.text.clone(),
        })
    }

    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| include_deleted || vs.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Versions of a subject; 40401 when it has none (live ones, unless `include_deleted`).
    pub fn subject_versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<u32>, ApiError> {
        let versions: Vec<u32> = self
            .versions(subject, include_deleted)
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<Registered, ApiError> {
        let versions = self.versions(subject, include_deleted);
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        let found = match spec {
            VersionSpec::Latest => versions.last().copied(),
            VersionSpec::Number(n) => versions.iter().find(|(v, _)| *v == n).copied(),
        };
        match found {
            Some((v, e)) => self.registered(subject, v, e.id),
            None => Err(ApiError::version_not_found(match spec {
                VersionSpec::Latest => "latest".to_owned(),
                VersionSpec::Number(n) => n.to_string(),
            })),
        }
    }

    pub fn schema_by_id(&self, id: u32) -> Result<&str, ApiError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or_else(ApiError::schema_not_found)
    }

    /// `(subject, version)` pairs that use schema `id`.
    pub fn usages_of_id(
        &self,
        id: u32,
        include_deleted: bool,
    ) -> Result<Vec<(String, u32)>, ApiError> {
        self.schema_by_id(id)?;
        Ok(self
            .subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(move |(_, e)| e.id == id && (include_deleted || !e.deleted))
                    .map(move |(v, _)| (s.clone(), *v))
            })
            .collect())
    }

    /// `POST /subjects/{subject}`: the version of `subject` that has this schema.
    pub fn lookup(
        &self,
        subject: &str,
        text: &str,
        include_deleted: bool,
    ) -> Result<Registered, ApiError> {
        let (_, fingerprint) = parse_schema(text)?;
        let versions = self.versions(subject, include_deleted);
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        let id = self
            .ids_by_fingerprint
            .get(&fingerprint)
            .ok_or_else(ApiError::schema_not_found)?;
        let (v, _) = versions
            .iter()
            .find(|(_, e)| e.id == *id)
            .ok_or_else(ApiError::schema_not_found)?;
        self.registered(subject, *v, *id)
    }

    /// `POST /subjects/{subject}/versions`.
    pub fn register(&self, subject: &str, text: &str) -> Result<Registration, ApiError> {
        let (parsed, fingerprint) = parse_schema(text)?;
        let live = self.versions(subject, false);
        let known_id = self.ids_by_fingerprint.get(&fingerprint).copied();
        if let Some(id) = known_id {
            if let Some((v, _)) = live.iter().find(|(_, e)| e.id == id) {
                return Ok(Registration::Existing(self.registered(subject, *v, id)?));
            }
        }
        let existing: Vec<&Schema> = live
            .iter()
            .filter_map(|(_, e)| self.schemas.get(&e.id).map(|s| &s.parsed))
            .collect();
        let problems = compat::check(self.effective_level(subject), &parsed, &existing);
        if !problems.is_empty() {
            return Err(ApiError::incompatible(&problems));
        }
        let id = known_id.unwrap_or_else(|| self.next_id());
        let version = self
            .versions(subject, true)
            .last()
            .map_or(1, |(v, _)| v + 1);
        let schema = match known_id {
            Some(id) => self.schema_by_id(id)?.to_owned(),
            None => text.to_owned(),
        };
        let registered = Registered {
            subject: subject.to_owned(),
            version,
            id,
            schema: schema.clone(),
        };
        let entry = Entry::Schema {
            subject: subject.to_owned(),
            version,
            id,
            schema,
            deleted: false,
        };
        Ok(Registration::New(registered, entry))
    }

    /// Compatibility of `text` with one version of `subject`, or with the versions the
    /// subject's level requires when `spec` is `None`. Returns the problems found.
    pub fn check_compatibility(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        text: &str,
    ) -> Result<Vec<String>, ApiError> {
        let (parsed, _) = parse_schema(text)?;
        let level = self.effective_level(subject);
        match spec {
            Some(spec) => {
                let old = self.version(subject, spec, false)?;
                let old = &self
                    .schemas
                    .get(&old.id)
                    .ok_or_else(ApiError::schema_not_found)?
                    .parsed;
                Ok(compat::check(level, &parsed, &[old]))
            }
            None => {
                let existing: Vec<&Schema> = self
                    .versions(subject, false)
                    .iter()
                    .filter_map(|(_, e)| self.schemas.get(&e.id).map(|s| &s.parsed))
                    .collect();
                Ok(compat::check(level, &parsed, &existing))
            }
        }
    }

    /// `DELETE /subjects/{subject}`: the versions deleted and the entries that delete them.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<Entry>), ApiError> {
        let all = self.versions(subject, true);
        if all.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        let live: Vec<_> = all.iter().filter(|(_, e)| !e.deleted).collect();
        if permanent {
            if !live.is_empty() {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            let mut entries: Vec<Entry> = all
                .iter()
                .map(|(v, _)| Entry::SchemaTombstone {
                    subject: subject.to_owned(),
                    version: *v,
                })
                .collect();
            if self.subject_levels.contains_key(subject) {
                entries.push(Entry::Config {
                    subject: Some(subject.to_owned()),
                    level: None,
                });
            }
            return Ok((all.iter().map(|(v, _)| *v).collect(), entries));
        }
        if live.is_empty() {
            return Err(ApiError::subject_soft_deleted(subject));
        }
        let mut entries = Vec::new();
        for (v, e) in &live {
            entries.push(Entry::Schema {
                subject: subject.to_owned(),
                version: *v,
                id: e.id,
                schema: self.schema_by_id(e.id)?.to_owned(),
                deleted: true,
            });
        }
        Ok((live.iter().map(|(v, _)| *v).collect(), entries))
    }

    /// `DELETE /subjects/{subject}/versions/{version}`.
    pub fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(u32, Entry), ApiError> {
        let all = self.versions(subject, true);
        if all.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        let target = match spec {
            // `latest` means the latest live version (or latest soft-deleted when permanent).
            VersionSpec::Latest => all.iter().rev().find(|(_, e)| e.deleted == permanent),
            VersionSpec::Number(n) => all.iter().find(|(v, _)| *v == n),
        };
        let Some((version, entry)) = target.copied() else {
            return Err(ApiError::version_not_found(match spec {
                VersionSpec::Latest => "latest".to_owned(),
                VersionSpec::Number(n) => n.to_string(),
            }));
        };
        match (permanent, entry.deleted) {
            (false, true) => Err(ApiError::version_soft_deleted(subject, version)),
            (true, false) => Err(ApiError::version_not_soft_deleted(subject, version)),
            (true, true) => Ok((
                version,
                Entry::SchemaTombstone {
                    subject: subject.to_owned(),
                    version,
                },
            )),
            (false, false) => Ok((
                version,
                Entry::Schema {
                    subject: subject.to_owned(),
                    version,
                    id: entry.id,
                    schema: self.schema_by_id(entry.id)?.to_owned(),
                    deleted: true,
                },
            )),
        }
    }

    /// Applies a journal entry. Entries that cannot be applied (a schema that no longer parses)
    /// are reported and skipped, so one bad record cannot keep the registry from starting.
    pub fn apply(&mut self, entry: Entry) -> Result<(), String> {
        match entry {
            Entry::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => {
                if !self.schemas.contains_key(&id) {
                    let (parsed, fingerprint) = parse_schema(&schema)
                        .map_err(|e| format!("schema id {id} of {subject} v{version}: {e}"))?;
                    self.ids_by_fingerprint.insert(fingerprint, id);
                    self.schemas.insert(
                        id,
                        StoredSchema {
                            text: schema,
                            parsed,
                        },
                    );
                }
                self.subjects
                    .entry(subject)
                    .or_default()
                    .insert(version, VersionEntry { id, deleted });
            }
            Entry::SchemaTombstone { subject, version } => {
                let mut removed_id = None;
                if let Some(vs) = self.subjects.get_mut(&subject) {
                    removed_id = vs.remove(&version).map(|e| e.id);
                    if vs.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
                if let Some(id) = removed_id {
                    let still_used = self
                        .subjects
                        .values()
                        .any(|vs| vs.values().any(|e| e.id == id));
                    if !still_used {
                        self.schemas.remove(&id);
                        self.ids_by_fingerprint.retain(|_, v| *v != id);
                    }
                }
            }
            Entry::Config { subject, level } => match (subject, level) {
                (None, level) => self.global_level = level,
                (Some(s), Some(level)) => {
                    self.subject_levels.insert(s, level);
                }
                (Some(s), None) => {
                    self.subject_levels.remove(&s);
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"}]}"#;
    const V1_SPACED: &str =
        r#"{ "type": "record", "name": "E", "fields": [ { "name": "a", "type": "string" } ] }"#;
    const V2: &str = r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
    const BREAKING: &str = r#"{"type":"record","name":"E","fields":[{"name":"c","type":"long"}]}"#;

    fn register(state: &mut State, subject: &str, text: &str) -> Result<Registered, ApiError> {
        match state.register(subject, text)? {
            Registration::Existing(r) => Ok(r),
            Registration::New(r, entry) => {
                state.apply(entry).expect("entry applies");
                Ok(r)
            }
        }
    }

    #[test]
    fn ids_are_global_and_registration_is_idempotent() {
        let mut s = State::default();
        let a1 = register(&mut s, "a-value", V1).expect("registers");
        let again = register(&mut s, "a-value", V1_SPACED).expect("registers");
        let b1 = register(&mut s, "b-value", V1).expect("registers");
        let a2 = register(&mut s, "a-value", V2).expect("registers");
        assert_eq!((a1.id, a1.version), (1, 1));
        assert_eq!((again.id, again.version), (1, 1));
        assert_eq!((b1.id, b1.version), (1, 1));
        assert_eq!((a2.id, a2.version), (2, 2));
        assert_eq!(s.subjects(false), vec!["a-value", "b-value"]);
        assert_eq!(
            s.usages_of_id(1, false).expect("id exists"),
            vec![("a-value".to_owned(), 1), ("b-value".to_owned(), 1)]
        );
    }

    #[test]
    fn incompatible_schema_is_409_unless_level_is_none() {
        let mut s = State::default();
        register(&mut s, "a-value", V1).expect("registers");
        assert_eq!(
            register(&mut s, "a-value", BREAKING).map_err(|e| e.code),
            Err(409)
        );
        s.apply(Entry::Config {
            subject: Some("a-value".into()),
            level: Some(Level::None),
        })
        .expect("applies");
        assert_eq!(
            register(&mut s, "a-value", BREAKING).map(|r| r.version),
            Ok(2)
        );
    }

    #[test]
    fn invalid_schema_is_42201() {
        let s = State::default();
        let err = s
            .register("a-value", r#"{"type":"record","name":"E"}"#)
            .map(|_| ());
        assert_eq!(err.map_err(|e| e.code), Err(42201));
        let err = s.register("a-value", "not json").map(|_| ());
        assert_eq!(err.map_err(|e| e.code), Err(42201));
    }

    #[test]
    fn soft_then_permanent_delete() {
        let mut s = State::default();
        register(&mut s, "a-value", V1).expect("registers");
        register(&mut s, "a-value", V2).expect("registers");
        assert_eq!(
            s.delete_subject("a-value", true)
                .map_err(|e| e.code)
                .map(|_| ()),
            Err(40405)
        );
        let (versions, entries) = s.delete_subject("a-value", false).expect("soft delete");
        assert_eq!(versions, vec![1, 2]);
        for e in entries {
            s.apply(e).expect("applies");
        }
        assert!(s.subjects(false).is_empty());
        assert_eq!(s.subjects(true), vec!["a-value"]);
        assert_eq!(
            s.version("a-value", VersionSpec::Latest, false)
                .map_err(|e| e.code),
            Err(40401)
        );
        // Ids stay resolvable after a soft delete: old data must stay readable.
        assert!(s.schema_by_id(2).is_ok());
        assert_eq!(
            s.delete_subject("a-value", false)
                .map_err(|e| e.code)
                .map(|_| ()),
            Err(40404)
        );
        let (_, entries) = s.delete_subject("a-value", true).expect("permanent delete");
        for e in entries {
            s.apply(e).expect("applies");
        }
        assert!(s.subjects(true).is_empty());
        assert_eq!(s.schema_by_id(2).map_err(|e| e.code), Err(40403));
    }

    #[test]
    fn lookup_and_version_errors() {
        let mut s = State::default();
        register(&mut s, "a-value", V1).expect("registers");
        assert_eq!(
            s.lookup("a-value", V1_SPACED, false).map(|r| r.version),
            Ok(1)
        );
        assert_eq!(
            s.lookup("a-value", V2, false).map_err(|e| e.code),
            Err(40403)
        );
        assert_eq!(s.lookup("zzz", V1, false).map_err(|e| e.code), Err(40401));
        assert_eq!(
            s.version("a-value", VersionSpec::Number(9), false)
                .map_err(|e| e.code),
            Err(40402)
        );
        assert_eq!(VersionSpec::parse("0").map_err(|e| e.code), Err(42202));
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
    }

    #[test]
    fn compatibility_check_against_one_version() {
        let mut s = State::default();
        register(&mut s, "a-value", V1).expect("registers");
        let ok = s.check_compatibility("a-value", Some(VersionSpec::Latest), V2);
        assert_eq!(ok.map(|p| p.is_empty()), Ok(true));
        let bad = s.check_compatibility("a-value", Some(VersionSpec::Number(1)), BREAKING);
        assert_eq!(bad.map(|p| p.is_empty()), Ok(false));
    }
}
